"""Ablation of the Uni-Mlip self-supervision families on the synthetic benchmark, one command.

    python recipes/ablation.py                          # 4 variants x 3 seeds, recipes/configs/ablation.yaml, 200 steps
    python recipes/ablation.py --scale recipe --seeds 0 1   # the recipe's default config (default.yaml) and 500 steps
    python recipes/ablation.py --seeds 0 --max-steps 100 --output-dir runs/ablation_quick
    python recipes/ablation.py --variants clip uni-mlip --train-set train.batch_size=32 --eval-set vqa_max_steps=50
    python recipes/ablation.py recipe_config=recipes/configs/tiny.yaml seeds=[0]        # any AblationConfig key

Variants (loss terms switched on; every other term has weight 0):

=============  ==========================================================================
clip           ITC only (CLIP)
+uni-modal     ITC + image NT-Xent/SimSiam + text SimCSE
+fused         ITC + ITM with hard negatives + image-conditioned MLM
uni-mlip       all terms: ITC, feature-level ITC, image SSL, text SSL, ITM, MLM (Uni-Mlip)
=============  ==========================================================================

Each (variant, seed) runs the command ``recipes/uni_mlip_roco.py --config <recipe config>`` in
its own process (the same config, steps and data for every variant), then
:func:`unimlip_kit.train.evaluate_run_folder` (what ``recipes/evaluate.py`` runs) measures
retrieval R@1 (mean of both directions), zero-shot and linear-probe accuracy on the 17 finding
classes, and VQA accuracy after a short fine-tune. The table (mean ± std over
seeds) goes to ``<output-dir>/ablation.md`` and ``benchmarks/results/ablation.md``,
the raw numbers to ``ablation.json`` and a bar chart to ``ablation.png``.
Finished (variant, seed) pairs are reused when the command is run again; a trained
but unevaluated run is only evaluated (``--reevaluate`` evaluates every trained run again).
Several processes (e.g. one per variant) may share ``--output-dir``; a last call
then only collects the table. The committed table took about 25 minutes that way
(4 processes) on the shared 2-core development machine.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from unimlip_kit.eval import EvalConfig
from unimlip_kit.losses import DEFAULT_WEIGHTS
from unimlip_kit.train import evaluate_run_folder, load_run, parse_recipe_args, resolve_device
from unimlip_kit.utils import load_config, load_json, run_metadata, save_json

RECIPES = Path(__file__).resolve().parent
RESULTS = RECIPES.parent / "benchmarks" / "results"
#: the training config of each scale
SCALES = {"shortened": RECIPES / "configs" / "ablation.yaml", "recipe": RECIPES / "configs" / "default.yaml"}

#: variant -> loss terms enabled (UniMlipLoss / UniMlipModel term names)
VARIANTS: dict[str, tuple[str, ...]] = {
    "clip": ("itc",),
    "+uni-modal": ("itc", "image_ssl", "text_ssl"),
    "+fused": ("itc", "itm", "mlm"),
    "uni-mlip": ("itc", "itc_feature", "image_ssl", "text_ssl", "itm", "mlm"),
}
ALL_TERMS = tuple(DEFAULT_WEIGHTS)

#: (column title, function of an evaluation result)
METRICS: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "retrieval R@1": lambda m: (m["retrieval"]["i2t"]["R@1"] + m["retrieval"]["t2i"]["R@1"]) / 2,
    "zero-shot acc": lambda m: m["zero_shot"]["accuracy"],
    "linear-probe acc": lambda m: m["linear_probe"]["accuracy"],
    "VQA acc": lambda m: m["vqa"]["accuracy"],
}


def _ablation_eval() -> EvalConfig:  # the same for every run, sized for the CPU budget
    return EvalConfig(probe_train_limit=500, vqa_train_limit=1000, vqa_test_limit=500, vqa_max_steps=200)


@dataclass
class AblationConfig:
    """Which variants and seeds, the training config they share, and the evaluation settings."""

    variants: list[Literal["clip", "+uni-modal", "+fused", "uni-mlip"]] = field(default_factory=lambda: list(VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # shortened: recipes/configs/ablation.yaml (about 30 CPU-minutes for 12 runs); recipe: the recipe's defaults
    scale: Literal["shortened", "recipe"] = "shortened"
    recipe_config: str | None = None  # a training config file instead of the scale's
    max_steps: int | None = None  # training steps per run (default 200 shortened, 500 recipe)
    output_dir: str = "runs/ablation"
    results_dir: str = str(RESULTS)  # where ablation.md/.json/.png are copied
    train_set: list[str] = field(default_factory=list)  # extra training-recipe overrides for every run
    eval: EvalConfig = field(default_factory=_ablation_eval)
    reevaluate: bool = False  # evaluate trained runs again (keeps the training)
    note: str = ""  # appended to the table header (e.g. what was shortened)
    progress: bool = True


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaNs dropped).

    Example:
        >>> mean_std([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    v = [float(x) for x in values if x == x]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s


def summarize(results: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{variant: {metric: (mean, std)}}`` from ``{variant: {seed: evaluate.py result}}``."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for variant, by_seed in results.items():
        out[variant] = {}
        for name, fn in METRICS.items():
            vals = []
            for m in by_seed.values():
                try:
                    vals.append(float(fn(m)))
                except (KeyError, TypeError):
                    vals.append(float("nan"))
            out[variant][name] = mean_std(vals)
    return out


def markdown_table(summary: Mapping[str, Mapping[str, tuple[float, float]]], header: str, n_seeds: Mapping[str, int]) -> str:
    """The Markdown table (mean ± std over seeds) with a header line saying how it was produced.

    Example:
        >>> print(markdown_table({"clip": {k: (0.5, 0.01) for k in METRICS}}, "demo", {"clip": 3}))
        demo
        <BLANKLINE>
        | variant | terms | seeds | retrieval R@1 | zero-shot acc | linear-probe acc | VQA acc |
        |---|---|---|---|---|---|---|
        | clip | itc | 3 | 0.500 ± 0.010 | 0.500 ± 0.010 | 0.500 ± 0.010 | 0.500 ± 0.010 |
    """
    cols = list(METRICS)
    lines = [header, "", "| variant | terms | seeds | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
    for variant, row in summary.items():
        cells = [f"{row[c][0]:.3f} ± {row[c][1]:.3f}" if row[c][0] == row[c][0] else "n/a" for c in cols]
        terms = ", ".join(VARIANTS.get(variant, ()))
        lines.append(f"| {variant} | {terms} | {n_seeds.get(variant, 0)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(summary: Mapping[str, Mapping[str, tuple[float, float]]], path: Path, title: str) -> Path:
    """Grouped bars (one group per metric, one bar per variant) with ±std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, variants = list(METRICS), list(summary)
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(9, 4))
    for k, v in enumerate(variants):
        xs = [i + (k - (len(variants) - 1) / 2) * width for i in range(len(cols))]
        means = [summary[v][c][0] if summary[v][c][0] == summary[v][c][0] else 0.0 for c in cols]
        stds = [summary[v][c][1] if summary[v][c][1] == summary[v][c][1] else 0.0 for c in cols]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=v)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def variant_overrides(variant: str) -> list[str]:
    """Recipe overrides that switch on exactly ``variant``'s terms (others get weight 0).

    Example:
        >>> variant_overrides("clip")[:2]
        ['loss.weights.itc=1.0', 'loss.weights.itc_feature=0.0']
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {list(VARIANTS)}")
    on = set(VARIANTS[variant])
    return [f"loss.weights.{t}={1.0 if t in on else 0.0}" for t in ALL_TERMS]


SHORTENED = ("SHORTENED to fit about 30 CPU-minutes on a shared 2-core machine: {steps} steps instead of the recipe's 500, "
             "batch 16 instead of 32, lr 5e-4 instead of 1e-3, 32-px images and 1-layer 64-wide towers instead of 64 px / 2 layers / 128 wide, "
             "linear probe on 500 training images, VQA fine-tuned for {vqa} steps on 1000 questions, tested on 500.")

RECIPE_SCALE = ("At the recipe's own model and data (64 px, 2-layer 128-wide towers with mean pooling, batch 32, lr 1e-3, "
                "medical augmentations on), {steps} steps; linear probe on 500 training images, VQA fine-tuned for {vqa} steps "
                "on 1000 questions, tested on 500.")


def train_command(cfg: AblationConfig, variant: str, seed: int, run: Path) -> list[str]:
    """The training command of one (variant, seed): the recipe with the shared config, this seed and these terms.

    Example:
        >>> cmd = train_command(AblationConfig(max_steps=7), "clip", 1, Path("runs/x"))
        >>> cmd[1].endswith("uni_mlip_roco.py"), cmd[3].endswith("ablation.yaml"), cmd[4:10]
        (True, True, ['--output-dir', 'runs/x', '--seed', '1', '--max-steps', '7'])
    """
    config = cfg.recipe_config or str(SCALES[cfg.scale])
    cmd = [sys.executable, str(RECIPES / "uni_mlip_roco.py"), "--config", config, "--output-dir", str(run),
           "--seed", str(seed), "--max-steps", str(cfg.max_steps)]
    return cmd + (["--no-progress"] if not cfg.progress else []) + variant_overrides(variant) + list(cfg.train_set)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parse_recipe_args("ablation", argv, description=__doc__.split("\n\n")[0])
    cfg = load_config(AblationConfig, p.config, p.overrides)
    if cfg.max_steps is None:
        cfg.max_steps = 200 if cfg.scale == "shortened" else 500
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    t_all = time.time()
    for variant in cfg.variants:
        results[variant] = {}
        for seed in cfg.seeds:
            run = out_dir / f"{variant.strip('+')}_seed{seed}"
            done = run / "eval.json"
            if done.is_file() and not cfg.reevaluate:  # reuse a finished (variant, seed)
                results[variant][seed] = load_json(done)
                print(f"[ablation] reuse {run}", flush=True)
                continue
            t0 = time.time()
            if (run / "metrics.json").is_file():  # trained already: evaluate only
                print(f"[ablation] evaluate {variant} seed {seed} ({run} is trained)", flush=True)
            else:
                print(f"[ablation] train {variant} seed {seed} -> {run}", flush=True)
                subprocess.run(train_command(cfg, variant, seed, run), check=True)
            model, tokenize, rcfg = load_run(run, device=resolve_device("auto"))
            ecfg = EvalConfig(**{**cfg.eval.__dict__, "seed": seed})
            metrics = evaluate_run_folder(model, tokenize, rcfg, ecfg, progress=cfg.progress)
            metrics.update(config=dict(ecfg.__dict__), run_dir=str(run), meta=run_metadata())
            save_json(done, metrics)
            results[variant][seed] = metrics
            timings[f"{variant}/{seed}"] = time.time() - t0

    summary = summarize(results)
    n_seeds = {v: len(r) for v, r in results.items()}
    vqa_steps = cfg.eval.vqa_max_steps if cfg.eval.vqa_max_steps is not None else "?"
    cfg_line = (f"Synthetic benchmark, {cfg.max_steps} training steps per run, seeds {cfg.seeds}; "
                f"retrieval R@1 = mean of i2t and t2i (chance 1/gallery); zero-shot / linear probe over the 17 finding "
                f"classes (chance 0.059); VQA accuracy after {vqa_steps} fine-tuning steps. "
                + (SHORTENED.format(steps=cfg.max_steps, vqa=vqa_steps) if cfg.scale == "shortened"
                   else RECIPE_SCALE.format(steps=cfg.max_steps, vqa=vqa_steps)))
    if cfg.train_set or cfg.recipe_config:
        cfg_line += f" Training config {cfg.recipe_config or SCALES[cfg.scale].name}, extra overrides {cfg.train_set}."
    if cfg.note:
        cfg_line += f" {cfg.note}"
    header = f"**Uni-Mlip ablation** (mean ± std over seeds). {cfg_line}"
    table = markdown_table(summary, header, n_seeds)
    payload = {"summary": {v: {k: list(ms) for k, ms in row.items()} for v, row in summary.items()},
               "runs": {v: {str(s): {k: m.get(k) for k in ("retrieval", "zero_shot", "linear_probe", "vqa")}
                            for s, m in r.items()} for v, r in results.items()},
               "variants": {v: list(VARIANTS[v]) for v in cfg.variants}, "seeds": cfg.seeds,
               "max_steps": cfg.max_steps, "scale": cfg.scale,
               "train_config": cfg.recipe_config or str(SCALES[cfg.scale].relative_to(RECIPES.parent)),
               "train_overrides": cfg.train_set, "eval_config": dict(cfg.eval.__dict__), "seconds_per_run": timings,
               "total_seconds": time.time() - t_all, "meta": run_metadata()}
    for folder in {out_dir, Path(cfg.results_dir)}:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ablation.md").write_text(table + "\n", encoding="utf-8")
        save_json(folder / "ablation.json", payload)
        bar_chart(summary, folder / "ablation.png", f"Uni-Mlip ablation, synthetic benchmark, {cfg.max_steps} steps")
    print(table, flush=True)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
