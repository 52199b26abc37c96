"""Ablation of the Uni-Mlip self-supervision families on the synthetic benchmark, one command.

    python recipes/ablation.py                          # 4 variants x 3 seeds, shrunk tiny config, 200 steps
    python recipes/ablation.py --scale recipe --seeds 0 1   # the recipe's default model and 500 steps
    python recipes/ablation.py --seeds 0 --max-steps 100 --output-dir runs/ablation_quick
    python recipes/ablation.py --variants clip full --train-set train.batch_size=32

Variants (loss terms switched on; every other term has weight 0):

=============  ==========================================================================
clip           ITC only (CLIP)
+uni-modal     ITC + image NT-Xent/SimSiam + text SimCSE
+fused         ITC + ITM with hard negatives + image-conditioned MLM
uni-mlip       all terms: ITC, feature-level ITC, image SSL, text SSL, ITM, MLM (Uni-Mlip)
=============  ==========================================================================

Each (variant, seed) trains with ``recipes/uni_mlip_roco.py`` at the same tiny
config, steps and data, then ``recipes/evaluate.py`` measures retrieval R@1
(mean of both directions), zero-shot and linear-probe accuracy on the 17 finding
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

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from unimlip_kit.utils.io import load_json, load_script, run_metadata, save_json  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"

#: variant -> loss terms enabled (UniMlipLoss / UniMlipModel term names)
VARIANTS: dict[str, tuple[str, ...]] = {
    "clip": ("itc",),
    "+uni-modal": ("itc", "image_ssl", "text_ssl"),
    "+fused": ("itc", "itm", "mlm"),
    "uni-mlip": ("itc", "itc_feature", "image_ssl", "text_ssl", "itm", "mlm"),
}
ALL_TERMS = ("itc", "itc_feature", "image_ssl", "text_ssl", "itm", "mlm")

#: (column title, function of an evaluate.py result)
METRICS: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "retrieval R@1": lambda m: (m["retrieval"]["i2t"]["R@1"] + m["retrieval"]["t2i"]["R@1"]) / 2,
    "zero-shot acc": lambda m: m["zero_shot"]["accuracy"],
    "linear-probe acc": lambda m: m["linear_probe"]["accuracy"],
    "VQA acc": lambda m: m["vqa"]["accuracy"],
}


def _load_recipe(name: str):
    return load_script(REPO / "recipes" / f"{name}.py")


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--scale", choices=["shortened", "recipe"], default="shortened",
                   help="shortened: the shrunk config below (about 30 CPU-minutes for 12 runs); "
                        "recipe: uni_mlip_roco.py's own defaults (64 px, 2-layer 128-wide towers, batch 32, 500 steps)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="training steps per run (same for every variant; default 200 shortened, 500 recipe)")
    p.add_argument("--output-dir", default="runs/ablation")
    p.add_argument("--results-dir", default=str(RESULTS), help="where ablation.md/.json/.png are copied")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra uni_mlip_roco.py config override for every run (repeatable)")
    p.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra evaluate.py EvalConfig override (repeatable)")
    p.add_argument("--reevaluate", action="store_true", help="evaluate trained runs again (keeps the training)")
    p.add_argument("--note", default="", help="appended to the table header (e.g. what was shortened)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


#: training config of every ablation run: the recipe's tiny model shrunk further so that
#: 4 variants x 3 seeds fit the CPU budget (2-5 min of training + about 2 min of evaluation per run
#: on one contended core of the 2-core development machine at 200 steps)
TRAIN_DEFAULTS = ["data.synthetic.image_size=32", "model.image_size=32", "model.vision_width=64", "model.text_width=64",
                  "model.vision_layers=1", "model.text_layers=1", "model.embed_dim=64", "model.ssl_dim=64",
                  "train.batch_size=16", "train.lr=5e-4", "train.warmup_steps=10", "train.log_every=10"]
#: evaluation settings for the ablation: the same for every run, sized for the CPU budget
EVAL_DEFAULTS = ["probe_train_limit=500", "vqa_train_limit=1000", "vqa_test_limit=500", "vqa_max_steps=200"]
SHORTENED = ("SHORTENED to fit about 30 CPU-minutes on a shared 2-core machine: {steps} steps instead of the recipe's 500, "
             "batch 16 instead of 32, lr 5e-4 instead of 1e-3, 32-px images and 1-layer 64-wide towers instead of 64 px / 2 layers / 128 wide, "
             "linear probe on 500 training images, VQA fine-tuned for {vqa} steps on 1000 questions, tested on 500.")

RECIPE_SCALE = ("At the recipe's own model and data (64 px, 2-layer 128-wide towers with mean pooling, batch 32, lr 1e-3, "
                "medical augmentations on), {steps} steps; linear probe on 500 training images, VQA fine-tuned for {vqa} steps "
                "on 1000 questions, tested on 500.")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.max_steps is None:
        args.max_steps = 200 if args.scale == "shortened" else 500
    train_defaults = TRAIN_DEFAULTS if args.scale == "shortened" else []
    train_recipe, eval_recipe = _load_recipe("uni_mlip_roco"), _load_recipe("evaluate")
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    t_all = time.time()
    for variant in args.variants:
        results[variant] = {}
        for seed in args.seeds:
            run = out_dir / f"{variant.strip('+')}_seed{seed}"
            done = run / "eval.json"
            if done.is_file() and not args.reevaluate:  # reuse a finished (variant, seed)
                results[variant][seed] = load_json(done)
                print(f"[ablation] reuse {run}", flush=True)
                continue
            t0 = time.time()
            if (run / "metrics.json").is_file():  # trained already: evaluate only
                print(f"[ablation] evaluate {variant} seed {seed} ({run} is trained)", flush=True)
            else:
                print(f"[ablation] train {variant} seed {seed} -> {run}", flush=True)
                train_argv = ["--output-dir", str(run), "--seed", str(seed), "--max-steps", str(args.max_steps)]
                if args.no_progress:
                    train_argv.append("--no-progress")
                train_recipe.main(train_argv + train_defaults + variant_overrides(variant) + list(args.train_set))
            eval_argv = ["--run-dir", str(run), "--seed", str(seed)]
            for kv in EVAL_DEFAULTS + list(args.eval_set):
                eval_argv += ["--set", kv]
            if args.no_progress:
                eval_argv.append("--no-progress")
            results[variant][seed] = eval_recipe.main(eval_argv)
            timings[f"{variant}/{seed}"] = time.time() - t0

    summary = summarize(results)
    n_seeds = {v: len(r) for v, r in results.items()}
    eval_cfg = dict(kv.split("=", 1) for kv in EVAL_DEFAULTS + args.eval_set)
    cfg_line = (f"Synthetic benchmark, {args.max_steps} training steps per run, seeds {args.seeds}; "
                f"retrieval R@1 = mean of i2t and t2i (chance 1/gallery); zero-shot / linear probe over the 17 finding "
                f"classes (chance 0.059); VQA accuracy after {eval_cfg.get('vqa_max_steps', '?')} fine-tuning steps. "
                + (SHORTENED.format(steps=args.max_steps, vqa=eval_cfg.get("vqa_max_steps", "?")) if args.scale == "shortened"
                   else RECIPE_SCALE.format(steps=args.max_steps, vqa=eval_cfg.get("vqa_max_steps", "?"))))
    if args.train_set or args.eval_set:
        cfg_line += f" Extra overrides: train {args.train_set}, eval {args.eval_set}."
    if args.note:
        cfg_line += f" {args.note}"
    header = f"**Uni-Mlip ablation** (mean ± std over seeds). {cfg_line}"
    table = markdown_table(summary, header, n_seeds)
    payload = {"summary": {v: {k: list(ms) for k, ms in row.items()} for v, row in summary.items()},
               "runs": {v: {str(s): {k: m.get(k) for k in ("retrieval", "zero_shot", "linear_probe", "vqa")}
                            for s, m in r.items()} for v, r in results.items()},
               "variants": {v: list(VARIANTS[v]) for v in args.variants}, "seeds": args.seeds,
               "max_steps": args.max_steps, "scale": args.scale, "train_overrides": train_defaults + args.train_set,
               "eval_overrides": EVAL_DEFAULTS + args.eval_set, "seconds_per_run": timings,
               "total_seconds": time.time() - t_all, "meta": run_metadata()}
    for folder in {out_dir, Path(args.results_dir)}:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ablation.md").write_text(table + "\n", encoding="utf-8")
        save_json(folder / "ablation.json", payload)
        bar_chart(summary, folder / "ablation.png", f"Uni-Mlip ablation, synthetic benchmark, {args.max_steps} steps")
    print(table, flush=True)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
