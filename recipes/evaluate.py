"""Evaluate a trained Uni-Mlip run on the three downstream tasks of the paper.

    python recipes/evaluate.py --run-dir runs/uni_mlip_roco                 # synthetic benchmark (default)
    python recipes/evaluate.py --run-dir RUN --data-root /data/roco --tasks retrieval   # a test-only ROCO folder will do
    python recipes/evaluate.py --run-dir RUN --vqa-rad "/data/VQA_RAD/VQA_RAD Dataset Public.json"
    python recipes/evaluate.py --run-dir RUN --slake /data/Slake1.0 --tasks vqa
    python recipes/evaluate.py --run-dir RUN eval.vqa_epochs=10 eval.probe_train_limit=null
    python recipes/evaluate.py --run-dir RUN --zeroshot-labels diagnosis     # a run on a table: its own held-out pairs
    python recipes/evaluate.py --config my_eval.yaml                         # any EvaluateConfig keys

Tasks (``--tasks`` = ``eval.tasks``, default all four):

* ``retrieval``: image↔text Recall@1/5/10 and median rank on the held-out split
  (:func:`unimlip_kit.eval.retrieval_metrics`, computed tile by tile).
* ``zero_shot``: classification by the most similar class prompt. On the synthetic
  benchmark each of the 17 finding classes is described by captions the generator
  writes for that finding in every scene type (prompt ensembling); on real data it
  needs labelled records and ``--class-names``.
* ``linear_probe``: L2 multinomial logistic regression on frozen image embeddings
  (train split → test split, λ swept on a validation fraction); skipped, saying so,
  when the data folder has no training split.
* ``vqa``: fine-tune the fusion encoder with an answer-classification head on the
  training questions, report accuracy overall / closed / open on the test questions
  (synthetic QA by default, or VQA-RAD / SLAKE). The run's weights are copied first;
  the checkpoint on disk is never modified.

Only the splits the chosen tasks use are read. Writes ``<run-dir>/eval.json`` (or ``output``) and prints a table.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unimlip_kit.eval import EvalConfig, format_table
from unimlip_kit.train import evaluate_run_folder, load_run, parse_recipe_args, resolve_device
from unimlip_kit.utils import load_config, run_metadata, save_json


@dataclass
class EvaluateConfig:
    """What to evaluate (``run_dir``, ``checkpoint``), on which data, and the evaluation settings (``eval``)."""

    run_dir: str | None = None  # a recipes/uni_mlip_roco.py run folder (required)
    checkpoint: str | None = None  # a checkpoints/step_* folder (default: the last one)
    data_root: str | None = None  # a table, an image folder or a ROCO folder (default: the run's own held-out pairs)
    zeroshot_labels: str | None = None  # the classes: a table's label column or "folder" (default: the run's)
    class_names: list[str] | None = None  # zero-shot class names for labelled real data
    vqa_rad: str | None = None  # VQA-RAD JSON: trains on freeform/para questions, tests on test_*
    slake: str | None = None  # SLAKE folder with train.json, test.json and imgs/ (English questions)
    output: str | None = None  # the metrics JSON (default <run_dir>/eval.json)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True
    eval: EvalConfig = field(default_factory=EvalConfig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parse_recipe_args("evaluate", argv, description=__doc__.split("\n\n")[0])
    cfg = load_config(EvaluateConfig, p.config, p.overrides)
    if cfg.run_dir is None:
        raise SystemExit("evaluate.py needs a run folder: --run-dir RUN (or run_dir=RUN)")
    run_dir = Path(cfg.run_dir)
    model, tokenize, rcfg = load_run(run_dir, checkpoint=cfg.checkpoint, device=resolve_device(cfg.device))
    if cfg.zeroshot_labels is not None:  # labels for a run trained without them: the split stays the run's
        rcfg.data = dataclasses.replace(rcfg.data, label_column=cfg.zeroshot_labels)
    progress = cfg.progress and rcfg.progress
    metrics = evaluate_run_folder(model, tokenize, rcfg, cfg.eval, data_root=cfg.data_root, class_names=cfg.class_names,
                                  vqa_rad=cfg.vqa_rad, slake=cfg.slake, progress=progress)
    metrics["config"] = dataclasses.asdict(cfg.eval)
    metrics["run_dir"] = str(run_dir)
    metrics["meta"] = run_metadata()
    out = Path(cfg.output) if cfg.output else run_dir / "eval.json"
    save_json(out, metrics)
    print(format_table(metrics), flush=True)
    print(f"[done] {out}", flush=True)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
