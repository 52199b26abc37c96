"""A user's own data, start to finish (issue 29): a CSV of PNGs and a folder of DICOMs, trained with
``--data-root FILE`` on the tiny config, validated during training and evaluated on the user's labels.

The images and captions are the synthetic benchmark's (the project generates them), written out as a
user would have them: PNG files beside a CSV, or DICOM files (some without a suffix) with sidecar
``.txt`` captions in class folders. References are independent: the hold-out against its definition
(seeded, by group, order-free), the class names against the file, ``recipes/evaluate.py`` against the
run's own final evaluation, the validation metrics against a float64 retrieval computed here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes import evaluate as evaluate_recipe
from recipes import uni_mlip_roco
from unimlip_kit.data import (FINDING_CLASSES, ImageTextRecord, SkipCounter, SyntheticConfig, build_synthetic_dataset,
                              hold_out, read_image_folder, read_roco, read_source, source_kind, write_shards)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", str(ROOT / "recipes" / "configs" / "tiny.yaml"), "eval.vqa_floor=false"]


def _finding(label: int) -> str:
    """A coarse class a user might label by: the finding's density ("normal" for no finding)."""
    return "normal" if label == 0 else FINDING_CLASSES[label].split("_")[-1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> list[ImageTextRecord]:
    cache = tmp_path_factory.mktemp("cache")
    root = build_synthetic_dataset(SyntheticConfig(n_train=48, n_validation=4, n_test=24, image_size=32), cache)
    return read_roco(root, "train")


@pytest.fixture(scope="module")
def csv_of_pngs(tmp_path_factory, synthetic) -> Path:
    """40 PNGs and pairs.csv with columns file, text, finding (a user's own names), one row broken."""
    from PIL import Image

    d = tmp_path_factory.mktemp("csv")
    (d / "images").mkdir()
    with open(d / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "text", "finding"])
        for r in synthetic[:40]:
            Image.open(r.image_path).save(d / "images" / f"{r.id}.png")
            w.writerow([f"images/{r.id}.png", r.caption, _finding(r.label)])
        w.writerow(["images/not_there.png", "CT of the head.", "normal"])  # a missing image: skipped, counted
    return d / "pairs.csv"


def _write_dicom(pixels: np.ndarray, path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CT", *pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory, synthetic) -> Path:
    """<class>/<id>.dcm (every fourth without a suffix) with <id>.txt captions; one image lacks its caption."""
    from PIL import Image

    pytest.importorskip("pydicom")
    d = tmp_path_factory.mktemp("dicoms")
    for k, r in enumerate(synthetic[:40]):
        folder = d / _finding(r.label)
        folder.mkdir(exist_ok=True)
        name = r.id if k % 4 == 0 else f"{r.id}.dcm"
        _write_dicom(np.asarray(Image.open(r.image_path).convert("L")), folder / name)
        if k != 5:
            (folder / f"{r.id}.txt").write_text(r.caption + "\n", encoding="utf-8")
    return d


# ----------------------------------------------------------------------------- readers


def test_source_kind_tells_every_source_apart(tmp_path, csv_of_pngs, dicom_folder, synthetic):
    write_shards(synthetic[:3], tmp_path / "shards")
    roco = Path(synthetic[0].image_path).parents[4]
    assert [source_kind(x) for x in (None, csv_of_pngs, dicom_folder, roco, tmp_path / "shards")] == \
        ["synthetic", "table", "folder", "roco", "shards"]
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(ValueError, match="not a table of pairs"):
        source_kind(tmp_path / "notes.docx")
    with pytest.raises(FileNotFoundError, match="no data source"):
        source_kind(tmp_path / "absent.csv")


def test_image_folder_reads_dicoms_with_sidecar_captions_and_class_folders(dicom_folder, synthetic):
    c = SkipCounter()
    recs = read_image_folder(dicom_folder, label_column="folder", skips=c)
    assert c.counts() == {"empty_caption": 1}  # the one image without its caption file
    assert len(recs) == 39
    want = {r.id: r for r in synthetic[:40]}
    names = sorted({_finding(r.label) for r in synthetic[:40]})
    for r in recs:
        cls, rid = r.id.split("/")
        assert r.caption == want[rid].caption and r.meta["label_name"] == cls == _finding(want[rid].label)
        assert r.label == names.index(cls)
    from unimlip_kit.data import ImageTextDataset

    ds = ImageTextDataset(recs, image_size=16)
    assert all(ds[i]["image"].shape == (1, 16, 16) for i in (0, 1))  # suffix-less DICOMs decode too


def test_hold_out_is_seeded_by_group_and_independent_of_row_order():
    recs = [ImageTextRecord(f"p{i}", Path(f"{i}.png"), "CT.", group=f"patient{i % 7}") for i in range(50)]
    train, val = hold_out(recs, 0.2, seed=3)
    assert {r.group for r in train}.isdisjoint({r.group for r in val})
    assert 0.1 * 50 <= len(val) <= 0.35 * 50 and len(train) + len(val) == 50
    again = hold_out(list(reversed(recs)), 0.2, seed=3)[1]
    assert sorted(r.id for r in again) == sorted(r.id for r in val)
    assert any(sorted(r.id for r in hold_out(recs, 0.2, seed=k)[1]) != sorted(r.id for r in val) for k in range(4, 8))
    ungrouped = [ImageTextRecord(f"q{i}", Path(f"{i}.png"), "CT.") for i in range(40)]
    assert len(hold_out(ungrouped, 0.1, seed=0)[1]) == 4
    with pytest.raises(ValueError, match="cannot be split"):
        hold_out(ungrouped[:1], 0.1, seed=0)
    # positional ids (a table without an id column) change when rows move; the split follows the images
    shuffled = [ImageTextRecord(f"t:{k}", r.image_path, r.caption) for k, r in enumerate(reversed(ungrouped))]
    assert sorted(r.image_path.name for r in hold_out(shuffled, 0.1, 0)[1]) == \
        sorted(r.image_path.name for r in hold_out(ungrouped, 0.1, 0)[1])
    # one big group cannot take most of the data: 30 of 40 pairs in one patient, 10% asked
    big = [ImageTextRecord(f"b{i}", Path(f"{i}.png"), "CT.", group="big" if i < 30 else f"s{i}") for i in range(40)]
    for seed in range(6):
        assert len(hold_out(big, 0.1, seed)[1]) <= 4
    hundred = [ImageTextRecord(f"q{i}", Path(f"{i}.png"), "CT.") for i in range(100)]
    assert len(hold_out(hundred, 0.07, 0)[1]) == 7  # 0.07 * 100 is 7.000000000000001 in floats


def test_read_source_refuses_a_label_column_that_does_not_fit(csv_of_pngs, dicom_folder):
    unlabelled = read_source(csv_of_pngs, image_column="file", caption_column="text", label_column="folder")
    assert len(unlabelled) == 40 and {r.label for r in unlabelled} == {-1}  # class folders label folders only
    with pytest.raises(ValueError, match="label_column must be 'folder'"):
        read_source(dicom_folder, label_column="finding")
    with pytest.raises(ValueError, match="no column 'image'"):
        read_source(csv_of_pngs)  # the default column names, which this table does not use


# ----------------------------------------------------------------------------- the whole path


def test_csv_of_pngs_trains_validates_and_evaluates_in_one_command(tmp_path, csv_of_pngs):
    out = tmp_path / "run"
    m = uni_mlip_roco.main(TINY + ["--data-root", str(csv_of_pngs), "--image-column", "file", "--caption-column",
                                   "text", "--zeroshot-labels", "finding", "--max-steps", "4", "--val-every", "2",
                                   "--keep-best", "--output-dir", str(out)])
    names = sorted({row["finding"] for row in csv.DictReader(open(csv_of_pngs, encoding="utf-8"))})
    d = m["data"]
    assert d["source"] == "table" and d["class_names"] == names
    assert d["skipped_detail"]["by_reason"] == {"missing_image": 1} and d["skipped"] == 1
    assert d["validation"] == "held out: 4 of 40 pairs (data.val_fraction=0.1, seed 0)"
    assert d["train_pairs_available"] == 36 and m["eval"]["eval_images"] == 4
    # every task ran on the user's own data: retrieval on the held-out pairs, zero-shot on the class names
    assert {"retrieval", "zero_shot", "linear_probe", "fused"} <= set(m["eval"])
    assert m["eval"]["zero_shot"]["chance"] == pytest.approx(1 / len(names))
    # validation during training: steps 2 and 4, logged beside the losses; the best model kept
    rows = list(csv.DictReader(open(out / "log.csv", encoding="utf-8")))
    assert [r["step"] for r in rows if r["val_R@1"]] == ["2", "4"]
    best = json.loads((out / "model_best" / "best.json").read_text())
    vals = {int(r["step"]): float(r["val_R@1"]) for r in rows if r["val_R@1"]}
    assert best["val_R@1"] == max(vals.values()) and vals[best["step"]] == best["val_R@1"]
    assert m["train"]["best_val_R@1"] == best["val_R@1"]
    # the saved config holds the resolved warm-up and the columns; recipes/evaluate.py finds the same split
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["warmup_steps"] == 2 and saved["data"]["image_column"] == "file"
    ev = evaluate_recipe.main(["eval.batch_size=16", "--run-dir", str(out), "--no-progress", "--tasks", "retrieval",
                               "zero_shot"])
    for k in ("retrieval", "zero_shot"):
        assert ev[k]["i2t" if k == "retrieval" else "accuracy"] == m["eval"][k]["i2t" if k == "retrieval" else "accuracy"]


def test_validation_metrics_equal_a_float64_retrieval_of_the_same_pairs(tmp_path, csv_of_pngs):
    """val_R@1 in log.csv is the R@1 of the held-out pairs' embeddings, recomputed here from model_best."""
    from unimlip_kit.inference import embed_images, embed_texts
    from unimlip_kit.models import UniMlipModel
    from unimlip_kit.train import read_run_pairs
    from unimlip_kit.train.run import load_run_config

    out = tmp_path / "run"
    uni_mlip_roco.main(TINY + ["--data-root", str(csv_of_pngs), "data.image_column=file", "data.caption_column=text",
                               "--max-steps", "2", "--val-every", "2", "--keep-best", "--output-dir", str(out),
                               "--tasks", "retrieval"])
    best = json.loads((out / "model_best" / "best.json").read_text())
    model = UniMlipModel.from_pretrained(str(out / "model_best")).eval()
    held = read_run_pairs(load_run_config(out), SkipCounter()).eval_records
    img = embed_images(model, [r.image_path for r in held]).double()
    txt = embed_texts(model, [r.caption for r in held]).double()
    sim = img @ txt.T
    i2t = float((sim.argmax(1) == torch.arange(len(held))).double().mean())
    t2i = float((sim.argmax(0) == torch.arange(len(held))).double().mean())
    assert best["val_R@1_i2t"] == pytest.approx(i2t) and best["val_R@1_t2i"] == pytest.approx(t2i)
    s = float(model.logit_scale().detach())
    logits = s * sim
    target = torch.arange(len(held))
    ref = 0.5 * (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target))
    assert best["val_itc"] == pytest.approx(float(ref), rel=1e-4)


def test_folder_of_dicoms_trains_with_class_folders_and_a_separate_validation_table(tmp_path, dicom_folder, synthetic):
    """--val-data names the held-out pairs (here a JSONL table of PNGs): training then uses all of the folder."""
    from PIL import Image

    val = tmp_path / "val"
    val.mkdir()
    with open(val / "val.jsonl", "w", encoding="utf-8") as f:
        for r in synthetic[40:48]:
            Image.open(r.image_path).save(val / f"{r.id}.png")
            f.write(json.dumps({"image": f"{r.id}.png", "caption": r.caption}) + "\n")
    m = uni_mlip_roco.main(TINY + ["--data-root", str(dicom_folder), "--val-data", str(val / "val.jsonl"),
                                   "--zeroshot-labels", "folder", "--max-steps", "3", "--output-dir", str(tmp_path / "r"),
                                   "--tasks", "retrieval", "zero_shot"])
    d = m["data"]
    assert d["source"] == "folder" and d["train_pairs_available"] == 39 and m["eval"]["eval_images"] == 8
    assert d["skipped_detail"]["by_reason"] == {"empty_caption": 1}
    assert d["validation"].startswith(f"all of {val / 'val.jsonl'}")
    # the validation table has no labels, so zero-shot says why instead of scoring nothing
    assert m["eval"]["skipped"]["zero_shot"] == "the evaluation records have no class labels"


def test_shards_carry_what_their_conversion_skipped_into_metrics(tmp_path, csv_of_pngs):
    from unimlip_kit.data.__main__ import main as data_main

    shards = tmp_path / "shards"
    assert data_main(["shards", str(csv_of_pngs), "--from", "csv", "--out", str(shards), "--image-column", "file",
                      "--caption-column", "text", "--no-progress"]) == 0
    m = uni_mlip_roco.main(TINY + ["--data-root", str(shards), "--val-data", str(csv_of_pngs), "data.image_column=file",
                                   "data.caption_column=text", "--max-steps", "2", "--output-dir", str(tmp_path / "r"),
                                   "--tasks", "retrieval"])
    d = m["data"]
    assert d["skipped_while_converting"] == 1 and d["skipped_detail"]["by_reason"] == {"missing_image": 1}
    detail = d["skipped_detail"]["examples"]["missing_image"][0][1]
    assert detail.startswith("while converting")  # counted from the shards' index, before the table was read
    assert m["eval"]["eval_images"] == 40  # the whole validation table


def test_a_short_run_warms_up_over_five_percent_and_says_it_is_short(tmp_path, csv_of_pngs, capsys):
    uni_mlip_roco.main(TINY + ["--data-root", str(csv_of_pngs), "data.image_column=file", "data.caption_column=text",
                               "train.warmup_steps=null", "--max-steps", "20", "--output-dir", str(tmp_path / "r"),
                               "--tasks", "retrieval", "train.log_every=1"])
    log = capsys.readouterr().out
    assert "[schedule] 20 steps, warm-up 1," in log and "20 steps is a short run" in log
    import yaml

    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["warmup_steps"] == 1  # resolved
    rows = list(csv.DictReader(open(tmp_path / "r" / "log.csv", encoding="utf-8")))
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[len(lrs) // 2] < lrs[0]  # peaks at once, then decays


def test_validation_and_keep_best_leave_a_resumed_run_bit_identical(tmp_path, csv_of_pngs, killed_run):
    """4 steps validated at every step in one go, against a run killed after its step-2 checkpoint and resumed:
    the same weights, the same log rows (validation included) and the same best model."""
    from safetensors.torch import load_file

    args = TINY + ["--data-root", str(csv_of_pngs), "data.image_column=file", "data.caption_column=text",
                   "--val-every", "1", "--keep-best", "train.ckpt_every=2", "train.keep_checkpoints=3",
                   "--max-steps", "4", "--tasks", "retrieval"]
    uni_mlip_roco.main(args + ["--output-dir", str(tmp_path / "a")])
    killed_run(args + ["--output-dir", str(tmp_path / "b")], step=2)
    uni_mlip_roco.main(args + ["--output-dir", str(tmp_path / "b"), "--resume"])
    wa, wb = (load_file(str(tmp_path / x / "checkpoints" / "step_0000004" / "model.safetensors")) for x in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = [list(csv.DictReader(open(tmp_path / x / "log.csv", encoding="utf-8"))) for x in "ab"]
    assert rows[0] == rows[1] and [r["step"] for r in rows[0] if r["val_R@1"]] == ["1", "2", "3", "4"]
    best = [json.loads((tmp_path / x / "model_best" / "best.json").read_text()) for x in "ab"]
    assert best[0] == best[1]


def test_resume_refuses_to_switch_a_table_between_its_hold_out_and_val_data(tmp_path, csv_of_pngs):
    from unimlip_kit.train import ResumeError

    out = tmp_path / "r"
    uni_mlip_roco.main(TINY + ["--data-root", str(csv_of_pngs), "data.image_column=file", "data.caption_column=text",
                               "--max-steps", "1", "--output-dir", str(out), "--tasks", "retrieval"])
    with pytest.raises(ResumeError, match="changes the training set"):
        uni_mlip_roco.main(["--resume", "--output-dir", str(out), "--val-data", str(csv_of_pngs), "train.max_steps=2"])
    # resuming with the very --config that started it, whose warm-up is null, is the same run
    cfg = tmp_path / "c.yaml"
    cfg.write_text((ROOT / "recipes" / "configs" / "tiny.yaml").read_text().replace("warmup_steps: 2", "warmup_steps: null"))
    uni_mlip_roco.main(["--config", str(cfg), "--data-root", str(csv_of_pngs), "data.image_column=file",
                        "data.caption_column=text", "--max-steps", "1", "--output-dir", str(tmp_path / "s"),
                        "--tasks", "retrieval", "eval.vqa_floor=false"])
    uni_mlip_roco.main(["--config", str(cfg), "--resume", "--output-dir", str(tmp_path / "s"), "train.max_steps=2"])


def test_labels_that_mix_names_and_indices_are_refused(tmp_path):
    from unimlip_kit.data import align_labels

    named = [ImageTextRecord("a", Path("a.png"), "x", 0, meta={"label_name": "normal"})]
    with pytest.raises(ValueError, match="mix class names"):
        align_labels(named, [ImageTextRecord("b", Path("b.png"), "y", 3)])


def test_a_dicom_named_by_its_uid_is_an_image(tmp_path, dicom_folder):
    import shutil

    src = next(p for p in dicom_folder.rglob("*.dcm"))
    d = tmp_path / "uids"
    d.mkdir()
    shutil.copy(src, d / "1.2.840.113619.2.55.3")
    (d / "1.2.840.113619.2.55.3.txt").write_text("CT of the abdomen.")
    recs = read_image_folder(d)
    assert [r.caption for r in recs] == ["CT of the abdomen."] and source_kind(d) == "folder"
    from unimlip_kit.data import load_image

    assert load_image(recs[0].image_path, size=8).shape == (1, 8, 8)


def test_a_json_array_table_is_read_as_rows(tmp_path, csv_of_pngs):
    rows = list(csv.DictReader(open(csv_of_pngs, encoding="utf-8")))[:5]
    table = csv_of_pngs.parent / "pairs.json"
    table.write_text(json.dumps([{"image": r["file"], "caption": r["text"]} for r in rows] + ["junk"]))
    c = SkipCounter()
    assert [r.caption for r in read_source(table, skips=c)] == [r["text"] for r in rows] and c.counts() == {"bad_row": 1}


def test_read_vqa_source_tells_vqa_rad_slake_and_a_generic_list_apart(tmp_path):
    """--vqa FILE: the three layouts, each split as its own convention says, answers as written (normalised)."""
    from unimlip_kit.eval import read_vqa_source

    rad = tmp_path / "rad.json"
    rad.write_text(json.dumps([{"qid": k, "image_name": "a.jpg", "question": "Is it normal?", "answer": ans,
                                "answer_type": "CLOSED", "phrase_type": phrase}
                               for k, (ans, phrase) in enumerate([("Yes", "freeform"), ("No", "para"), ("No", "test_freeform")])]))
    train, test = read_vqa_source(rad)
    assert [s.answer for s in train] == ["yes", "no"] and [s.answer for s in test] == ["no"]
    slake = tmp_path / "slake"
    slake.mkdir()
    for split, n in (("train", 3), ("test", 2)):
        rows = [{"qid": f"{split}{k}", "img_name": "x/source.jpg", "question": "Which organ?", "answer": "Liver",
                 "answer_type": "OPEN", "q_lang": lang} for k in range(n) for lang in ("en", "zh")]
        (slake / f"{split}.json").write_text(json.dumps(rows))
    train, test = read_vqa_source(slake)
    assert (len(train), len(test)) == (3, 2) and {s.split for s in train} == {"train"}  # English questions only
    generic = tmp_path / "qa.json"
    generic.write_text(json.dumps([{"image": "a.png", "question": "Left or right?", "answer": "left", "split": s}
                                   for s in ("train", "train", "test", "other")]))
    assert [len(x) for x in read_vqa_source(generic)] == [2, 1]
    with pytest.raises(FileNotFoundError, match="SLAKE layout"):
        read_vqa_source(tmp_path)
