"""Evaluate a trained Uni-Mlip run on the three downstream tasks of the paper.

    python recipes/evaluate.py --run-dir runs/uni_mlip_roco                 # synthetic benchmark (default)
    python recipes/evaluate.py --run-dir RUN --data-root /data/roco         # retrieval on real ROCO (test split)
    python recipes/evaluate.py --run-dir RUN --vqa-rad "/data/VQA_RAD/VQA_RAD Dataset Public.json"
    python recipes/evaluate.py --run-dir RUN --slake /data/Slake1.0 --tasks vqa
    python recipes/evaluate.py --run-dir RUN --set vqa_epochs=10 --set probe_train_limit=null

Tasks (``--tasks``, default all four):

* ``retrieval``: image↔text Recall@1/5/10 and median rank on the held-out split
  (:func:`unimlip_kit.eval.retrieval_metrics`, computed tile by tile).
* ``zero_shot``: classification by the most similar class prompt. On the synthetic
  benchmark each of the 17 finding classes is described by captions the generator
  writes for that finding in every scene type (prompt ensembling); on real data it
  needs labelled records and ``--class-names``.
* ``linear_probe``: L2 multinomial logistic regression on frozen image embeddings
  (train split → test split, λ swept on a validation fraction).
* ``vqa``: fine-tune the fusion encoder with an answer-classification head on the
  training questions, report accuracy overall / closed / open on the test questions
  (synthetic QA by default, or VQA-RAD / SLAKE). The run's weights are copied first;
  the checkpoint on disk is never modified.

Writes ``<run-dir>/eval.json`` (or ``--output``) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python recipes/evaluate.py` from a checkout
    sys.path.insert(0, str(REPO))

from unimlip_kit.eval import (  # noqa: E402
    TASKS,
    EvalConfig,
    evaluate_model,
    format_table,
    read_slake,
    read_synthetic_vqa,
    read_vqa_rad,
    synthetic_class_prompts,
)
from unimlip_kit.utils.config import apply_overrides  # noqa: E402
from unimlip_kit.utils.io import run_metadata, save_json  # noqa: E402

Tokenize = Callable[[list[str]], Mapping[str, torch.Tensor]]


# --------------------------------------------------------------------------- run folder
def _load_recipe_module():
    from unimlip_kit.utils.io import load_script

    return load_script(REPO / "recipes" / "uni_mlip_roco.py")


def find_weights(run_dir: Path, checkpoint: str | None = None) -> Path:
    """``model.safetensors`` of ``checkpoint`` (a folder or file) or of the run's last complete checkpoint."""
    if checkpoint is not None:
        p = Path(checkpoint)
        return p / "model.safetensors" if p.is_dir() else p
    done = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if (p / "model.safetensors").is_file())
    if not done:
        raise FileNotFoundError(f"no checkpoint with model.safetensors under {run_dir / 'checkpoints'}")
    return done[-1] / "model.safetensors"


def load_run(run_dir: str | Path, *, checkpoint: str | None = None, device: str | torch.device = "cpu"):
    """``(model, tokenize, recipe_config)`` of a ``recipes/uni_mlip_roco.py`` run folder, model in eval mode."""
    from safetensors.torch import load_file

    from unimlip_kit.models import UniMlipModel
    from unimlip_kit.utils.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    recipe = _load_recipe_module()
    rcfg = load_config(recipe.RecipeConfig, run_dir / "config.yaml")
    model = UniMlipModel(rcfg.model)
    model.load_state_dict(load_file(str(find_weights(run_dir, checkpoint)), device="cpu"))
    model.to(device).eval()
    if (run_dir / "tokenizer" / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    elif rcfg.tokenizer == "bundled":
        from unimlip_kit.text import load_bundled_tokenizer

        tok = load_bundled_tokenizer()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(rcfg.tokenizer)
    max_len = rcfg.model.max_text_len

    def tokenize(texts: list[str]) -> Mapping[str, torch.Tensor]:
        enc = tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return model, tokenize, rcfg


def parse_args(argv: list[str] | None) -> tuple[EvalConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a recipes/uni_mlip_roco.py run folder")
    p.add_argument("--checkpoint", help="a checkpoints/step_* folder (default: the last one)")
    p.add_argument("--data-root", help="ROCO-layout folder for retrieval/classification (default: the run's data)")
    p.add_argument("--class-names", nargs="+", help="class names for zero-shot on labelled real data")
    p.add_argument("--vqa-rad", help="VQA-RAD JSON (VQA_RAD Dataset Public.json); trains on freeform/para, tests on test_*")
    p.add_argument("--slake", help="SLAKE folder with train.json, test.json and imgs/ (English questions)")
    p.add_argument("--tasks", nargs="+", choices=TASKS)
    p.add_argument("--output", help="where to write the metrics JSON (default <run-dir>/eval.json)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="EvalConfig override, repeatable")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from unimlip_kit.utils.config import config_from_dict, config_to_dict

    data = apply_overrides(config_to_dict(EvalConfig()), args.set)
    if args.tasks:
        data["tasks"] = list(args.tasks)
    if args.seed is not None:
        data["seed"] = args.seed
    return config_from_dict(EvalConfig, data), args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, args = parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    run_dir = Path(args.run_dir)
    model, tokenize, rcfg = load_run(run_dir, checkpoint=args.checkpoint, device=device)
    progress = not args.no_progress and rcfg.progress

    from unimlip_kit.data import SkipCounter, build_synthetic_dataset, read_roco

    skips = SkipCounter()
    data_root = args.data_root or rcfg.data.root
    synthetic = data_root is None
    if synthetic:
        data_root = build_synthetic_dataset(rcfg.data.synthetic, rcfg.data.cache_dir, progress=progress)
    train_records = read_roco(data_root, rcfg.data.train_split, skips=skips)
    eval_records = read_roco(data_root, cfg.eval_split, skips=skips)

    class_names = class_prompts = None
    vqa_train: list[Any] = []
    vqa_test: list[Any] = []
    if synthetic:
        class_names, class_prompts = synthetic_class_prompts(cfg.prompts_per_scene, cfg.seed)
        vqa_train = read_synthetic_vqa(data_root, "train", skips=skips)
        vqa_test = read_synthetic_vqa(data_root, "test", skips=skips)
    elif args.class_names:
        class_names = list(args.class_names)
    if args.vqa_rad:
        vqa_train = read_vqa_rad(args.vqa_rad, split="train", skips=skips)
        vqa_test = read_vqa_rad(args.vqa_rad, split="test", skips=skips)
    elif args.slake:
        vqa_train = read_slake(Path(args.slake) / "train.json", skips=skips)
        vqa_test = read_slake(Path(args.slake) / "test.json", skips=skips)

    metrics = evaluate_model(
        model, tokenize, train_records=train_records, eval_records=eval_records,
        image_size=rcfg.model.image_size, channels=rcfg.model.image_channels,
        class_names=class_names, class_prompts=class_prompts, vqa_train=vqa_train, vqa_test=vqa_test,
        cfg=cfg, progress=progress,
    )
    metrics["data"] = {"root": str(data_root), "synthetic": synthetic, "skipped_while_reading": skips.total,
                       "vqa_source": "vqa-rad" if args.vqa_rad else "slake" if args.slake else
                       ("synthetic" if synthetic else None)}
    metrics["config"] = dataclasses.asdict(cfg)
    metrics["run_dir"] = str(run_dir)
    metrics["meta"] = run_metadata()
    out = Path(args.output) if args.output else run_dir / "eval.json"
    save_json(out, metrics)
    print(format_table(metrics), flush=True)
    print(f"[done] {out}", flush=True)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
