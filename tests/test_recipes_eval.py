"""recipes/evaluate.py, finetune_vqa.py and ablation.py end to end on a tiny trained run (< 60 s each)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "--no-progress",
    "data.synthetic.n_train=48", "data.synthetic.n_validation=4", "data.synthetic.n_test=24",
    "data.synthetic.image_size=32", "model.image_size=32", "model.patch_size=8",
    "model.vision_width=32", "model.text_width=32", "model.vision_layers=1", "model.text_layers=1",
    "model.vision_heads=2", "model.text_heads=2", "model.fusion_heads=2", "model.embed_dim=16", "model.ssl_dim=16",
    "model.max_text_len=32", "wordpiece_vocab=200", "train.batch_size=8", "train.warmup_steps=2",
    "train.log_every=1", "eval.batch_size=16", "eval.vqa_max_steps=2", "eval.vqa_train_limit=32", "eval.probe_train_limit=48",
]
EVAL_TINY = ["--no-progress", "--set", "vqa_max_steps=3", "--set", "vqa_batch_size=16", "--set", "batch_size=16",
             "--set", "prompts_per_scene=1"]


def _recipe(name: str):
    path = ROOT / "recipes" / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("unimlip_kit.models")
    base = tmp_path_factory.mktemp("evalrun")
    run = base / "run"
    metrics = _recipe("uni_mlip_roco").main(
        TINY + [f"data.cache_dir={base / 'cache'}", "--max-steps", "2", "--output-dir", str(run)]
    )
    return run, metrics


def test_evaluate_all_tasks_on_the_synthetic_benchmark(tiny_run):
    run, train_metrics = tiny_run
    m = _recipe("evaluate").main(["--run-dir", str(run)] + EVAL_TINY)
    saved = json.loads((run / "eval.json").read_text())
    assert saved["retrieval"] == m["retrieval"] and not m["skipped"]
    # the same model, split and metric as the training recipe's own evaluation: identical numbers
    for d in ("i2t", "t2i"):
        for k in ("R@1", "R@5", "R@10", "median_rank"):
            assert m["retrieval"][d][k] == train_metrics["retrieval"][d][k]
    assert m["eval_images"] == 24 and m["zero_shot"]["n"] == 24 and m["zero_shot"]["chance"] == pytest.approx(1 / 17)
    for task in ("zero_shot", "linear_probe"):
        assert 0.0 <= m[task]["accuracy"] <= 1.0 and 0.0 <= m[task]["balanced_accuracy"] <= 1.0
    v = m["vqa"]
    assert v["steps"] == 3 and v["n"] == v["n_closed"] + v["n_open"] > 0
    assert 0.0 <= v["closed_accuracy"] <= 1.0 and 0.0 <= v["open_accuracy"] <= 1.0
    # evaluation must not modify the checkpoint (VQA fine-tunes a copy)
    again = _recipe("evaluate").main(["--run-dir", str(run), "--tasks", "retrieval", "--output",
                                      str(run / "eval_again.json"), "--no-progress"])
    assert again["retrieval"] == m["retrieval"] and set(again) >= {"retrieval"} and "vqa" not in again


def test_evaluate_real_data_folder_without_labels(tiny_run, tmp_path):
    from PIL import Image

    run, _ = tiny_run
    split = tmp_path / "roco" / "data" / "test" / "radiology"
    (split / "images").mkdir(parents=True)
    lines = []
    for i, cap in enumerate(["Chest X-ray with left lower lobe opacity.", "Axial CT of the head.", "Liver ultrasound."]):
        Image.new("L", (40, 40), 60 * i).save(split / "images" / f"ROCO_{i:05d}.jpg")
        lines.append(f"ROCO_{i:05d}\t{cap}\n")
    (split / "captions.txt").write_text("".join(lines))
    train = tmp_path / "roco" / "data" / "train" / "radiology"
    train.mkdir(parents=True)
    (train / "captions.txt").write_text("")
    m = _recipe("evaluate").main(["--run-dir", str(run), "--data-root", str(tmp_path / "roco"),
                                  "--output", str(tmp_path / "e.json")] + EVAL_TINY)
    assert m["retrieval"]["i2t"]["n_queries"] == 3
    assert set(m["skipped"]) == {"zero_shot", "linear_probe", "vqa"}


def test_finetune_vqa_writes_model_and_metrics(tiny_run, tmp_path):
    run, _ = tiny_run
    m = _recipe("finetune_vqa").main(["--run-dir", str(run), "--max-steps", "3", "--batch-size", "16",
                                      "--output-dir", str(tmp_path / "vqa"), "--no-progress"])
    for name in ("vqa_model.safetensors", "answers.json", "vqa_metrics.json"):
        assert (tmp_path / "vqa" / name).is_file(), name
    assert m["steps"] == 3 and m["source"] == "synthetic" and m["answers"] == len(json.loads((tmp_path / "vqa" / "answers.json").read_text()))


def test_ablation_writes_table_and_chart(tiny_run, tmp_path):
    run, _ = tiny_run
    cache = run.parent / "cache"
    train_set = [kv for kv in TINY if "=" in kv] + [f"data.cache_dir={cache}"]
    argv = ["--variants", "clip", "+fused", "--seeds", "0", "--max-steps", "1", "--output-dir", str(tmp_path / "abl"),
            "--results-dir", str(tmp_path / "res"), "--no-progress", "--note", "TEST RUN"]
    for kv in train_set:
        argv += ["--train-set", kv]
    for kv in ("vqa_max_steps=1", "prompts_per_scene=1", "batch_size=16", "vqa_batch_size=16"):
        argv += ["--eval-set", kv]
    out = _recipe("ablation").main(argv)
    table = (tmp_path / "res" / "ablation.md").read_text()
    assert "TEST RUN" in table and "| clip | itc | 1 |" in table and "| +fused | itc, itm, mlm | 1 |" in table
    assert (tmp_path / "res" / "ablation.png").stat().st_size > 1000
    assert set(out["summary"]) == {"clip", "+fused"}
    # a second call reuses the finished runs instead of training again
    again = _recipe("ablation").main(argv)
    assert again["seconds_per_run"] == {} and again["summary"] == out["summary"]
