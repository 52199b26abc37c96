"""ROCO reader, both image-naming schemes, and exact skip counting through Dataset + DataLoader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unimlip_kit.data import (
    ImageTextDataset,
    SkipCounter,
    build_dataloader,
    read_pmc_names,
    read_roco,
    roco_split_dir,
)


def _jpg(path: Path, value: int, size: tuple[int, int] = (20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path, quality=95)


def _roco(tmp_path: Path) -> Path:
    """A ROCO-layout test split: 4 good pairs (two named by PMC file), 1 corrupt, 1 missing, 1 empty caption."""
    d = tmp_path / "roco" / "data" / "test" / "radiology"
    lines = [
        "ROCO_00001\t Axial CT of the chest showing a nodule.",
        "ROCO_00002\t Chest X-ray, left pleural effusion.",
        "ROCO_00003\tT2-weighted MRI of the brain.",  # PMC-named image (dlinks)
        "ROCO_00004\t Ultrasound of the liver.",  # PMC-named image (dlinks)
        "ROCO_00005\t Corrupt image here.",
        "ROCO_00006\t Its image is missing.",
        "ROCO_00007\t   ",
    ]
    d.mkdir(parents=True)
    (d / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (d / "dlinks.txt").write_text(
        "ROCO_00003\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/1e/ed/PMC111.tar.gz -P /path/to/Dir\tfig-3.jpg\n"
        "ROCO_00004\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/aa/bb/PMC222.tar.gz -P /path/to/Dir\tg004.jpg\n",
        encoding="utf-8",
    )
    _jpg(d / "images" / "ROCO_00001.jpg", 10)
    _jpg(d / "images" / "ROCO_00002.jpg", 60)
    _jpg(d / "images" / "PMC111_fig-3.jpg", 120)
    _jpg(d / "images" / "PMC222_g004.jpg", 200)
    good = (d / "images" / "ROCO_00001.jpg").read_bytes()
    (d / "images" / "ROCO_00005.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    _jpg(d / "images" / "ROCO_00007.jpg", 30)  # has an image but an empty caption
    return tmp_path / "roco"


def test_reader_counts_missing_and_empty(tmp_path: Path) -> None:
    root = _roco(tmp_path)
    skips = SkipCounter()
    recs = read_roco(root, "test", skips=skips)
    assert [r.id for r in recs] == ["ROCO_00001", "ROCO_00002", "ROCO_00003", "ROCO_00004", "ROCO_00005"]
    assert skips.counts() == {"empty_caption": 1, "missing_image": 1}
    assert "ROCO_00006" in skips and "ROCO_00007" in skips
    assert recs[0].caption == "Axial CT of the chest showing a nodule."  # leading space stripped
    assert [r.modality for r in recs[:4]] == ["ct", "xray", "mri", "ultrasound"]
    assert all(r.label == -1 for r in recs)


def test_both_image_naming_schemes(tmp_path: Path) -> None:
    root = _roco(tmp_path)
    recs = {r.id: r for r in read_roco(root, "test")}
    assert recs["ROCO_00001"].image_path.name == "ROCO_00001.jpg"
    assert recs["ROCO_00003"].image_path.name == "PMC111_fig-3.jpg"
    assert recs["ROCO_00004"].image_path.name == "PMC222_g004.jpg"
    # Without dlinks, an explicit table mapping (as in the shared TSV) finds PMC-named files too.
    d = roco_split_dir(root, "test")
    (d / "dlinks.txt").unlink()
    table = tmp_path / "names.tsv"
    table.write_text("roco_id\tpmc_image\tlicense\nROCO_00003\tPMC111_fig-3.jpg\tCC BY\n", encoding="utf-8")
    skips = SkipCounter()
    recs = {r.id: r for r in read_roco(root, "test", pmc_names=table, skips=skips)}
    assert recs["ROCO_00003"].image_path.name == "PMC111_fig-3.jpg"
    assert "ROCO_00004" not in recs and skips.counts()["missing_image"] == 2
    # the ROCO id name wins when both exist
    _jpg(d / "images" / "ROCO_00003.jpg", 1)
    assert {r.id: r for r in read_roco(root, "test", pmc_names=table)}["ROCO_00003"].image_path.name == "ROCO_00003.jpg"


def test_read_pmc_names_formats(tmp_path: Path) -> None:
    p = tmp_path / "dl.txt"
    p.write_text("ROCO_9\twget -r ftp://x/oa_package/1e/ed/PMC3970251.tar.gz -P /d\tCRIONM2014-931546.003.jpg\nbroken line\n")
    assert read_pmc_names(p) == {"ROCO_9": "PMC3970251_CRIONM2014-931546.003.jpg"}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_skips_corrupt_exactly_once(tmp_path: Path, num_workers: int) -> None:
    root = _roco(tmp_path)
    run = SkipCounter()
    recs = read_roco(root, "test", skips=run)
    ds = ImageTextDataset(recs, image_size=16)
    dl = build_dataloader(ds, 2, shuffle=True, seed=3, num_workers=num_workers)
    seen: list[str] = []
    for epoch in range(2):  # a corrupt image met every epoch still counts once
        dl.sampler.set_epoch(epoch)
        for batch in dl:
            run.update_from_batch(batch)
            assert batch["images"].shape[1:] == (1, 16, 16)
            assert batch["images"].dtype == torch.float32
            assert len(batch["captions"]) == len(batch["ids"]) == batch["labels"].shape[0] == batch["images"].shape[0]
            seen += batch["ids"]
    assert sorted(set(seen)) == ["ROCO_00001", "ROCO_00002", "ROCO_00003", "ROCO_00004"]
    assert len(seen) == 8
    assert run.counts() == {"corrupt_image": 1, "empty_caption": 1, "missing_image": 1}
    assert run.total == 3
    # decoded intensities are the written ones (JPEG of a flat image is exact to ~1/255)
    by_id = {r.id: i for i, r in enumerate(recs)}
    # 20x16 letterboxed into 16x16: rows 1..13 hold the image, the rest is the zero pad
    img = ds[by_id["ROCO_00004"]]["image"][0]
    assert float(img[0].abs().max()) == 0.0 and float(img[-1].abs().max()) == 0.0
    assert abs(float(img[3:12].mean()) - 200 / 255) < 2 / 255


def test_duplicate_and_bad_lines(tmp_path: Path) -> None:
    d = tmp_path / "data" / "train" / "radiology"
    _jpg(d / "images" / "A.jpg", 5)
    (d / "captions.txt").write_text("A\tCT.\nA\tCT again.\nno tab here\n\n")
    skips = SkipCounter()
    assert [r.id for r in read_roco(tmp_path, "train", skips=skips)] == ["A"]
    assert skips.counts() == {"bad_row": 1, "duplicate_id": 1}


def test_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="captions.txt"):
        read_roco(tmp_path, "validation")
    with pytest.raises(ValueError, match="split"):
        read_roco(tmp_path, "val")


def test_verify_records_finds_corrupt_up_front(tmp_path: Path) -> None:
    from unimlip_kit.data import verify_records

    root = _roco(tmp_path)
    skips = SkipCounter()
    recs = verify_records(read_roco(root, "test", skips=skips), skips, num_threads=2)
    assert [r.id for r in recs] == ["ROCO_00001", "ROCO_00002", "ROCO_00003", "ROCO_00004"]
    assert skips.counts() == {"corrupt_image": 1, "empty_caption": 1, "missing_image": 1}


def test_cli_check_and_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from unimlip_kit.data.__main__ import main

    root = _roco(tmp_path)
    assert main(["check", str(root), "--split", "test", "--verify", "--preview", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert summary["pairs"] == 4 and summary["skipped"]["total"] == 3
    assert Image.open(tmp_path / "p.png").size == (4 * 96, 96)
    assert main(["synthetic", "--n-train", "5", "--n-validation", "1", "--n-test", "1", "--image-size", "32",
                 "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") : out.rindex("}") + 1])["pairs"] == 5
