"""recipes/evaluate.py, finetune_vqa.py and ablation.py end to end on a tiny trained run (< 60 s each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes import ablation, evaluate, finetune_vqa, uni_mlip_roco

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", str(ROOT / "recipes" / "configs" / "tiny.yaml")]
EVAL_TINY = ["--no-progress", "eval.vqa_max_steps=3", "eval.vqa_batch_size=16", "eval.batch_size=16",
             "eval.prompts_per_scene=1"]
RECIPES = {"uni_mlip_roco": uni_mlip_roco, "evaluate": evaluate, "finetune_vqa": finetune_vqa, "ablation": ablation}


def _recipe(name: str):
    return RECIPES[name]


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


def test_evaluate_reads_only_the_splits_its_tasks_use(tiny_run, tmp_path):
    """A test-only ROCO folder: retrieval runs; the linear probe (which needs a train split) is skipped, saying so."""
    from PIL import Image

    run, _ = tiny_run
    split = tmp_path / "roco" / "data" / "test" / "radiology"
    (split / "images").mkdir(parents=True)
    caps = ["Chest X-ray with left lower lobe opacity.", "Axial CT of the head.", "Liver ultrasound."]
    for i, cap in enumerate(caps):
        Image.new("L", (40, 40), 60 * i).save(split / "images" / f"ROCO_{i:05d}.jpg")
    (split / "captions.txt").write_text("".join(f"ROCO_{i:05d}\t{c}\n" for i, c in enumerate(caps)))
    root = str(tmp_path / "roco")
    m = _recipe("evaluate").main(["--run-dir", str(run), "--data-root", root, "--tasks", "retrieval",
                                  "--output", str(tmp_path / "r.json"), "--no-progress"])
    assert m["retrieval"]["i2t"]["n_queries"] == 3 and m["skipped"] == {}
    m = _recipe("evaluate").main(["--run-dir", str(run), "--data-root", root, "--tasks", "retrieval", "linear_probe",
                                  "--output", str(tmp_path / "p.json"), "--no-progress"])
    assert "train" in m["skipped"]["linear_probe"] and "linear_probe" not in m and m["retrieval"]["i2t"]["n_queries"] == 3
    with pytest.raises(FileNotFoundError, match="no 'validation' split"):
        _recipe("evaluate").main(["--run-dir", str(run), "--data-root", root, "eval.eval_split=validation",
                                  "--tasks", "retrieval", "--no-progress"])


def test_finetune_vqa_writes_model_and_metrics(tiny_run, tmp_path):
    run, _ = tiny_run
    m = _recipe("finetune_vqa").main(["--run-dir", str(run), "--max-steps", "3", "--batch-size", "16",
                                      "--output-dir", str(tmp_path / "vqa"), "--no-progress"])
    for name in ("vqa_model.safetensors", "answers.json", "vqa_metrics.json"):
        assert (tmp_path / "vqa" / name).is_file(), name
    assert m["steps"] == 3 and m["source"] == "synthetic" and m["answers"] == len(json.loads((tmp_path / "vqa" / "answers.json").read_text()))


def test_ablation_writes_table_and_chart(tiny_run, tmp_path):
    """Two real tiny cells (1 step each): trained, evaluated, stored; a rerun trains and evaluates nothing."""
    run, _ = tiny_run
    cache = run.parent / "cache"
    argv = [f"recipe_config={ROOT / 'recipes' / 'configs' / 'tiny.yaml'}", "pool_size=48", "leave_one_out=false",
            "--variants", "clip", "+fused", "--sizes", "16", "--seeds", "0", "--max-steps", "1",
            "--output-dir", str(tmp_path / "abl"), "--cells-dir", str(tmp_path / "cells"),
            "--results-dir", str(tmp_path / "res"), "--no-progress", "--note", "TEST RUN",
            "--train-set", f"data.cache_dir={cache}"]
    for kv in ("vqa_max_steps=1", "prompts_per_scene=1", "batch_size=16", "vqa_batch_size=16"):
        argv += ["--eval-set", kv]
    out = _recipe("ablation").main(argv)
    table = (tmp_path / "res" / "ablation.md").read_text()
    assert "TEST RUN" in table and "### 16 training pairs" in table and "| +fused | " in table
    assert (tmp_path / "res" / "ablation.png").stat().st_size > 1000
    assert set(out["aggregate"]["summary"]["16"]) == {"clip", "+fused", "no-pretraining"} and out["cells_run"] == 2
    cell = json.loads((tmp_path / "cells" / "16" / "clip" / "seed0.json").read_text())
    assert cell["train"]["steps"] == 1 and cell["metrics"]["steps"] == 1.0 and cell["train"]["terms"] == ["itc"]
    for name in ("i2t R@1", "t2i R@1", "i2t R@1 meaning", "t2i R@1 meaning", "zero-shot acc", "linear-probe acc",
                 "VQA acc"):
        assert 0.0 <= cell["metrics"][name] <= 1.0, name
    assert cell["metrics"]["i2t R@1"] == cell["evaluation"]["retrieval"]["i2t"]["R@1"]
    trained = json.loads((tmp_path / "abl" / "16" / "clip" / "seed0" / "metrics.json").read_text())
    assert trained["data"]["train_pairs_available"] == 16  # the first 16 pairs of the 48-pair pool
    assert not list((tmp_path / "abl").rglob("state.pt"))  # optimizer state dropped once the cell is stored
    # a second call reuses the finished cells instead of training again
    again = _recipe("ablation").main(argv)
    assert again["cells_run"] == 0
    assert json.dumps(again["aggregate"], sort_keys=True) == json.dumps(out["aggregate"], sort_keys=True)
