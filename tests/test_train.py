"""unimlip_kit.train: configs as YAML, resuming as configured, a movable run folder, loggers, plots, the shared step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from recipes import uni_mlip_roco
from unimlip_kit.train import (RecipeConfig, ResumeError, TrainConfig, load_recipe_config, load_run, load_run_config,
                               parse_recipe_args, plot_losses, resume_config, save_run_config)
from unimlip_kit.utils import config_to_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
TINY = ["--config", str(CONFIGS / "tiny.yaml")]
FAST = ["eval.tasks=[retrieval]"]  # the end-to-end runs here need no probe or VQA


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIMLIP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------ configs


def test_default_yaml_is_every_default_of_the_recipe_config():
    assert load_config(RecipeConfig, CONFIGS / "default.yaml") == RecipeConfig()
    written = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    assert written == json.loads(json.dumps(config_to_dict(RecipeConfig())))  # every key written out, none extra


def test_tiny_and_ablation_yaml_load_and_change_only_what_they_say():
    tiny = load_config(RecipeConfig, CONFIGS / "tiny.yaml")
    assert (tiny.model.image_size, tiny.train.batch_size, tiny.data.synthetic.n_train, tiny.progress) == (32, 8, 48, False)
    assert tiny.train.lr == TrainConfig().lr and tiny.loss == RecipeConfig().loss
    abl = load_config(RecipeConfig, CONFIGS / "ablation.yaml")
    assert (abl.model.vision_width, abl.train.batch_size, abl.train.lr, abl.data.synthetic.n_train) == (64, 16, 5e-4, 2000)


def test_one_command_line_style_flags_map_onto_keys():
    p = parse_recipe_args("uni_mlip_roco", ["--config", "x.yaml", "train.lr=1", "--batch-size", "4", "--amp", "off"])
    assert p.config == "x.yaml" and p.overrides == ["train.lr=1", "train.batch_size=4", "train.amp=off"]
    p = parse_recipe_args("evaluate", ["--run-dir", "r", "eval.vqa_epochs=2", "--seed", "3", "--class-names", "a b", "c"])
    assert p.overrides == ["eval.vqa_epochs=2", "run_dir=r", "class_names=[a b, c]", "eval.seed=3"]
    p = parse_recipe_args("finetune_vqa", ["--run-dir", "r", "--epochs", "30", "lr=2e-5"])
    assert p.overrides == ["lr=2e-5", "run_dir=r", "epochs=30"]
    with pytest.raises(SystemExit):
        parse_recipe_args("uni_mlip_roco", ["train.lr"])  # not key=value


# ------------------------------------------------------------------ resume: the saved config, safe overrides only


def _saved_run(tmp_path: Path, overrides=()) -> Path:
    run = tmp_path / "run"
    cfg = load_recipe_config(CONFIGS / "tiny.yaml", [f"output_dir={run}", "train.lr=3e-4", "loss.weights.itm=0",
                                                     "model.vocab_size=123", *overrides])
    save_run_config(cfg, run)
    return run


def test_resume_config_keeps_the_saved_run_and_applies_safe_overrides(tmp_path):
    run = _saved_run(tmp_path)
    cfg, changed = resume_config(run, ["train.max_steps=900", "train.ckpt_every=10", "progress=true", "eval.batch_size=4"])
    assert (cfg.train.lr, cfg.loss.weights["itm"], cfg.train.batch_size, cfg.model.vocab_size) == (3e-4, 0.0, 8, 123)
    assert cfg.train.max_steps == 900 and cfg.train.ckpt_every == 10 and cfg.eval.batch_size == 4
    assert set(changed) == {"train.max_steps", "train.ckpt_every", "progress", "eval.batch_size"}
    # the command that started the run resumes it: equal values are no change, whatever the key
    again, changed = resume_config(run, ["train.lr=3e-4", "loss.weights.itm=0"], CONFIGS / "tiny.yaml")
    assert changed == {} and again == load_run_config(run)
    # the full default.yaml given again changes the run's lr (1e-3 != 3e-4): refused; its vocab_size is ignored
    with pytest.raises(ResumeError, match=r"train\.lr \(saved 0\.0003, given 0\.001\)"):
        resume_config(run, [], CONFIGS / "default.yaml")


@pytest.mark.parametrize("override, key", [("train.lr=0.1", "train.lr"), ("loss.weights.itm=1", "loss.weights.itm"),
                                           ("train.batch_size=16", "train.batch_size"), ("model.embed_dim=8", "model.embed_dim"),
                                           ("seed=1", "seed"), ("augment.enabled=false", "augment.enabled")])
def test_an_unsafe_override_with_resume_is_refused_naming_the_key(tmp_path, override, key):
    run = _saved_run(tmp_path)
    before = (run / "config.yaml").read_text()
    with pytest.raises(ResumeError, match=rf"refused: {key.replace('.', chr(92) + '.')} \(saved .*start a new run"):
        uni_mlip_roco.main(["--resume", "--output-dir", str(run), override])
    assert (run / "config.yaml").read_text() == before  # nothing was touched


def test_resume_is_a_flag_and_resume_from_names_a_checkpoint(tmp_path):
    run = _saved_run(tmp_path)
    cfg, ckpt, resuming = uni_mlip_roco.parse_args(["--resume", "train.ckpt_every=10", "--output-dir", str(run)])
    assert cfg.train.ckpt_every == 10 and cfg.train.lr == 3e-4 and ckpt is None and resuming  # no checkpoint yet
    step = run / "checkpoints" / "step_0000002"
    step.mkdir(parents=True)
    (step / "state.pt").write_bytes(b"state")  # a stand-in: its manifest makes it a complete checkpoint
    import hashlib
    import json as _json
    (step / "manifest.json").write_text(_json.dumps({"format": 1, "step": 2, "files": {
        "state.pt": {"bytes": 5, "sha256": hashlib.sha256(b"state").hexdigest()}}}))
    cfg, ckpt, _ = uni_mlip_roco.parse_args(["--resume", "--output-dir", str(run)])
    assert ckpt == step
    cfg, ckpt, _ = uni_mlip_roco.parse_args(["--resume-from", str(step), "train.max_steps=7"])
    assert ckpt == step and cfg.output_dir == str(run.resolve()) and cfg.train.max_steps == 7
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        uni_mlip_roco.parse_args(["--resume-from", str(tmp_path / "nothing")])
    fresh, ckpt, resuming = uni_mlip_roco.parse_args(["--resume", "--output-dir", str(tmp_path / "new")])
    assert ckpt is None and not resuming and fresh.train.lr == TrainConfig().lr  # nothing to resume: a fresh start


def test_a_run_started_with_config_and_overrides_resumes_as_configured(tmp_path, cache):
    run = tmp_path / "run"
    start = TINY + FAST + ["train.lr=3e-4", "loss.weights.itm=0", "train.batch_size=4", "--max-steps", "2",
                           "train.ckpt_every=1", "--output-dir", str(run)]
    first = uni_mlip_roco.main(start)
    assert first["train"]["steps"] == 2 and "itm" not in first["train"]["terms"]
    resumed = uni_mlip_roco.main(["--resume", "--output-dir", str(run), "train.max_steps=3"])  # no --config
    cfg = load_run_config(run)
    assert (cfg.train.lr, cfg.loss.weights["itm"], cfg.train.batch_size, cfg.train.max_steps) == (3e-4, 0.0, 4, 3)
    assert resumed["train"]["steps"] == 3 and resumed["train"]["terms"] == first["train"]["terms"]
    assert resumed["train"]["final_losses"]["step"] == 3
    assert len((run / "log.csv").read_text().splitlines()) == 1 + 3  # the history continued, one row per step
    assert resumed["data"]["train_pairs"] == 12  # 3 steps of 4 distinct pairs


# ------------------------------------------------------------------ a movable run folder


def _tiny_bert(folder: Path) -> None:
    from transformers import BertConfig, BertModel

    from unimlip_kit.text import train_wordpiece_tokenizer

    tok = train_wordpiece_tokenizer(["left lung mass", "right lobe", "no focal lesion in the liver"] * 8, vocab_size=80)
    tok.save_pretrained(str(folder))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False).save_pretrained(str(folder))


def test_a_run_with_a_text_model_folder_is_self_contained_and_movable(tmp_path, cache):
    bert = tmp_path / "my_bert"
    _tiny_bert(bert)
    run = tmp_path / "run"
    uni_mlip_roco.main(TINY + FAST + ["--text-model", str(bert), "--max-steps", "1", "--output-dir", str(run)])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["tokenizer"] == "tokenizer" and (run / "tokenizer" / "tokenizer.json").is_file()
    assert (run / "backbones.json").is_file()
    model, tokenize, _ = load_run(run)
    ids = tokenize(["left lung mass"])
    before = model.encode_text(**ids)
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    shutil.rmtree(run)
    shutil.rmtree(bert)  # neither the source folder nor the original run exist any more
    model2, tokenize2, cfg2 = load_run(moved)
    assert cfg2.tokenizer == str(moved / "tokenizer")
    assert torch.equal(tokenize2(["left lung mass"])["input_ids"], ids["input_ids"])
    assert torch.equal(model2.encode_text(**ids), before)
    # and the moved folder resumes (its towers rebuilt from backbones.json, no download, no source folder)
    again = uni_mlip_roco.main(["--resume", "--output-dir", str(moved), "train.max_steps=2"])
    assert again["train"]["steps"] == 2


# ------------------------------------------------------------------ reporting and loggers


def test_loss_curves_give_every_term_its_own_panel(tmp_path):
    history = [{"step": s, "lr": 1e-3, "logit_scale": 14.0, "total": 30.0 / s, "itc": 2.0 / s, "mlm": 0.01 / s,
                "itm": 0.6} for s in range(1, 6)]
    keys = plot_losses(history, tmp_path / "curves.png")
    assert keys == ["total", "itc", "mlm", "itm"]
    from PIL import Image

    with Image.open(tmp_path / "curves.png") as im:
        assert im.size[0] > 800  # 3 panels across


def test_tensorboard_logger_writes_the_rows(tmp_path, cache):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    uni_mlip_roco.main(TINY + FAST + ["--max-steps", "2", "--output-dir", str(run), "train.loggers=[csv, tensorboard]"])
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    rows = [ln.split(",") for ln in (run / "log.csv").read_text().splitlines()]
    header, values = rows[0], rows[1:]
    total = [e.value for e in acc.Scalars("loss/total")]
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2]
    assert total == pytest.approx([float(v[header.index("total")]) for v in values], rel=1e-6)
    assert "loss/itc" in acc.Tags()["scalars"] and "train/lr" in acc.Tags()["scalars"]


def test_wandb_logger_offline(tmp_path, cache, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    uni_mlip_roco.main(TINY + FAST + ["--max-steps", "2", "--output-dir", str(run), "train.loggers=[wandb]"])
    run_id = (run / "wandb_id.txt").read_text().strip()
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert not (run / "log.csv").exists()  # csv is a logger like the others: not asked for here


def test_an_unknown_logger_fails_when_the_config_loads():
    with pytest.raises(ValueError, match="train.loggers"):
        load_config(RecipeConfig, None, ["train.loggers=[mlflow]"])


# ------------------------------------------------------------------ benchmarks use the library, never the committed folder


def test_benchmark_results_go_to_a_local_folder_unless_asked(tmp_path):
    code = "import common; print(common.RESULTS)"
    env = {k: v for k, v in os.environ.items() if k != "UNIMLIP_BENCH_RESULTS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True)
    assert Path(out.stdout.strip()) == ROOT / "benchmarks" / "results" / "local"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks", capture_output=True, text=True,
                         env={**env, "UNIMLIP_BENCH_RESULTS": "committed"})
    assert Path(out.stdout.strip()) == ROOT / "benchmarks" / "results"


def test_throughput_benchmark_times_the_recipe_step(tmp_path, cache):
    out = tmp_path / "tp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train_throughput.py"), "--quick",
                           "--threads", "1", "--keep", "1.0", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert "error" not in row, row
    assert row["batch_size"] == 8 and row["pairs_per_s"] > 0 and row["final_loss"] > 0
    assert out.with_suffix(".png").is_file()


def test_no_script_is_imported_by_path():
    """Recipes, benchmarks and tests import the library; none loads a script by path or edits sys.path."""
    banned = ("load_script", "sys.path.insert", "spec_from_file_location")
    files = [*sorted((ROOT / "recipes").rglob("*.py")), ROOT / "benchmarks" / "bench_train_throughput.py",
             ROOT / "benchmarks" / "common.py", ROOT / "tests" / "test_recipe.py", ROOT / "tests" / "test_recipes_eval.py"]
    found = [f"{f.relative_to(ROOT)}: {b}" for f in files for b in banned if b in f.read_text()]
    assert not found, found
