"""The Uni-Mlip recipe end to end on the tiny config: run folder, resume equality, corrupt images, torchrun."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes import uni_mlip_roco
from unimlip_kit.data import regroup_after_flip

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "uni_mlip_roco.py"
TINY = ["--config", str(ROOT / "recipes" / "configs" / "tiny.yaml")]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIMLIP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_main_writes_the_run_folder(tmp_path, cache):
    out = tmp_path / "run"
    metrics = uni_mlip_roco.main(TINY + ["--max-steps", "3", "--output-dir", str(out)])
    for name in ("config.yaml", "metrics.json", "log.csv", "loss_curves.png", "summary.md", "tokenizer/tokenizer.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "step_0000003" / "model.safetensors").is_file()
    r = metrics["retrieval"]
    for d in ("i2t", "t2i"):
        for k in ("R@1", "R@5", "R@10"):
            assert 0.0 <= r[d][k] <= 1.0
        assert r[d]["R@1"] <= r[d]["R@5"] <= r[d]["R@10"]
    assert r["chance_R@1"] == pytest.approx(1 / 24)
    # 3 steps of 8 pairs used 24 distinct pairs of the 48 readable ones
    assert metrics["data"] == {**metrics["data"], "train_pairs": 24, "train_pairs_available": 48, "skipped": 0}
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert {"itc", "itc_feature", "image_ssl", "text_ssl", "itm", "mlm", "total"} <= set(header)
    assert len((out / "log.csv").read_text().splitlines()) == 1 + 3
    # the run ends with a self-contained model folder whose embeddings equal the trained model's
    from unimlip_kit.inference import embed_texts
    from unimlip_kit.models import UniMlipModel

    moved = tmp_path / "elsewhere"
    shutil.copytree(out / "model", moved)
    loaded = UniMlipModel.from_pretrained(str(moved))
    emb = embed_texts(loaded, ["Left lower lobe opacity.", "No focal lesion."])
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert {"fused", "zero_shot", "linear_probe", "vqa", "vqa_floor"} <= set(metrics["eval"])


def test_siglip_itc_runs_through_the_recipe_with_a_learned_bias(tmp_path, cache):
    """loss.itc_loss=siglip: the model gets SigLIP's bias (started at -10), logs it, learns it and saves it."""
    import yaml

    from unimlip_kit.models import UniMlipModel

    out = tmp_path / "run"
    metrics = uni_mlip_roco.main(TINY + ["--max-steps", "3", "--output-dir", str(out), "loss.itc_loss=siglip",
                                         "eval.tasks=[retrieval]"])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["loss"]["itc_loss"] == "siglip" and saved["model"]["logit_bias_init"] == -10.0
    rows = (out / "log.csv").read_text().splitlines()
    bias = [float(r.split(",")[rows[0].split(",").index("logit_bias")]) for r in rows[1:]]
    assert len(bias) == 3 and all(-10.0 < b < -9.0 for b in bias) and bias[0] != bias[-1]  # it moves (AdamW)
    loaded = UniMlipModel.from_pretrained(str(out / "model"))
    assert float(loaded.logit_bias()) == pytest.approx(bias[-1], abs=1e-6)
    assert 0.0 <= metrics["retrieval"]["i2t"]["R@1"] <= 1.0


def test_resume_gives_the_same_result(tmp_path, cache, killed_run):
    args = TINY + ["--max-steps", "4", "train.ckpt_every=2", "train.keep_checkpoints=3"]
    full = uni_mlip_roco.main(args + ["--output-dir", str(tmp_path / "full")])
    killed_run(args + ["--output-dir", str(tmp_path / "killed")], step=2)
    resumed = uni_mlip_roco.main(args + ["--output-dir", str(tmp_path / "killed"), "--resume"])

    assert resumed["retrieval"]["i2t"] == full["retrieval"]["i2t"]
    assert resumed["retrieval"]["t2i"] == full["retrieval"]["t2i"]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_0000004" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "checkpoints" / "step_0000004" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "log.csv").read_text() == (tmp_path / "killed" / "log.csv").read_text()


def test_corrupt_image_is_skipped_and_counted(tmp_path, cache):
    from unimlip_kit.data import SyntheticConfig, build_synthetic_dataset

    built = build_synthetic_dataset(SyntheticConfig(n_train=16, n_validation=2, n_test=8, image_size=32), cache)
    roco = tmp_path / "roco"
    shutil.copytree(built, roco)
    victim = sorted((roco / "data" / "train" / "radiology" / "images").iterdir())[3]
    victim.write_bytes(b"\xff\xd8 this is not a JPEG")
    metrics = uni_mlip_roco.main(TINY + ["--data-root", str(roco), "--max-steps", "2", "--output-dir", str(tmp_path / "run")])
    assert metrics["data"]["skipped"] == 1
    assert metrics["data"]["skipped_detail"]["by_reason"] == {"corrupt_image": 1}
    assert metrics["data"]["train_pairs"] == 15


def test_a_run_whose_every_image_is_corrupt_fails_naming_the_skips(tmp_path, cache):
    from unimlip_kit.data import SyntheticConfig, build_synthetic_dataset

    built = build_synthetic_dataset(SyntheticConfig(n_train=16, n_validation=2, n_test=8, image_size=32), cache)
    roco = tmp_path / "roco"
    shutil.copytree(built, roco)
    for img in (roco / "data" / "train" / "radiology" / "images").iterdir():
        img.write_bytes(b"not an image")
    with pytest.raises(RuntimeError, match="no usable training batch.*corrupt_image"):
        uni_mlip_roco.main(TINY + ["--data-root", str(roco), "--max-steps", "3", "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_torchrun_two_processes_on_cpu(tmp_path, cache):
    env = dict(os.environ, OMP_NUM_THREADS="1", UNIMLIP_CACHE=str(cache))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(RECIPE), *TINY, "--max-steps", "2", "--output-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 2


def test_torchrun_survives_a_rank_whose_batch_is_all_corrupt(tmp_path, cache):
    """Rank 1's first batch is unreadable: both ranks skip that step together instead of deadlocking."""
    import json

    from unimlip_kit.data import EpochSampler, SyntheticConfig, build_synthetic_dataset, read_roco

    built = build_synthetic_dataset(SyntheticConfig(n_train=16, n_validation=2, n_test=8, image_size=32), cache)
    roco = tmp_path / "roco"
    shutil.copytree(built, roco)
    records = read_roco(roco, "train")
    rank1 = EpochSampler(len(records), seed=0, rank=1, world_size=2, drop_last=True)
    rank1.set_epoch(0)
    victims = sorted(set(list(rank1)[:8]))  # rank 1's whole first batch of 8
    for i in victims:
        Path(records[i].image_path).write_bytes(b"\xff\xd8 this is not a JPEG")
    env = dict(os.environ, OMP_NUM_THREADS="1", UNIMLIP_CACHE=str(cache))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(RECIPE), *TINY,
           "--data-root", str(roco), "--max-steps", "2", "--output-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 2
    assert metrics["data"]["skipped"] == len(victims) == 8


def test_flipped_samples_change_group_with_their_meaning():
    """After the laterality-aware flip, ITM's same-meaning groups follow the new side (never a false negative)."""
    from unimlip_kit.data import collate_image_text

    samples = [
        {"image": torch.zeros(1, 4, 4), "caption": "Mass in the right lung.", "id": "a", "image_key": "a", "group": "ct|right"},
        {"image": torch.zeros(1, 4, 4), "caption": "Nodule in the left lung.", "id": "b", "image_key": "b", "group": "ct|left"},
        {"image": torch.zeros(1, 4, 4), "caption": "Mass in the right lung!", "id": "c", "image_key": "c", "group": "ct|right"},
    ]
    batch = collate_image_text(samples)
    assert batch["group_ids"].tolist() == [0, 1, 0]
    flipped = [False, True, True]  # b now shows a right-sided finding, c a left-sided one
    captions = ["Mass in the right lung.", "Nodule in the right lung.", "Mass in the left lung!"]
    assert regroup_after_flip(batch["group_keys"], flipped, captions).tolist() == [0, 0, 1]
    assert regroup_after_flip(batch["group_keys"], [False], captions[:1] * 3).tolist() == [0, 1, 0]
