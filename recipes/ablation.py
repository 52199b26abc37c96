"""The Uni-Mlip ablation grid on the synthetic benchmark: variants x training-set sizes x seeds, resumable cell by cell.

    python recipes/ablation.py --plan                   # the grid, what is finished, the estimated time; runs nothing
    python recipes/ablation.py --max-cells 6            # run the next 6 unfinished cells (one sitting), then report
    python recipes/ablation.py                          # run every unfinished cell (72 at the defaults), then report
    python recipes/ablation.py --only-size 1000 --only-variant clip uni-mlip --max-cells 2
    python recipes/ablation.py --report                 # aggregate the finished cells, marking the missing ones
    python recipes/ablation.py --max-steps 300 --cells-dir runs/ablation_cells_300   # another grid, its own cells
    python recipes/ablation.py --scale shortened        # recipes/configs/ablation.yaml's smaller model (quick looks)

Variants (loss terms switched on; every other term has weight 0). Each family is added to CLIP on its
own; the leave-one-out variants take one term away from the full objective.

=================  ==================================================================================
uni-mlip           the full objective: ITC, feature-level ITC, image SSL, text SSL, ITM, MLM
clip               ITC only (CLIP), the same steps
clip-walltime      ITC only, given the full objective's measured training wall time in the same
                   (size, seed) cell (``train.max_seconds``; the schedule runs over the budget)
+itc-feature       ITC + feature-level ITC (dropout / token-keeping views)
+uni-modal         ITC + image NT-Xent/SimSiam + text SimCSE
+fused             ITC + ITM with hard negatives + image-conditioned MLM
no-<term>          the full objective without <term> (6 variants; at ``loo_sizes`` only, the middle size)
no-pretraining     not trained: the VQA head fine-tuned on a freshly initialised model (once per size and seed)
clip-aug           a control outside the default grid (``--variants``): ITC only with the light augmentation on
                   view 1 too. The recipe shows ITC a clean view 1, so ``clip`` trains on unaugmented images
                   while ``+itc-feature`` adds ITC on the augmented view 2; this separates the two.
=================  ==================================================================================

Data: one synthetic pool of ``pool_size`` (4000) training pairs (``data.synthetic.n_train``); a
training-set size N trains on its first N pairs (``data.limit_train=N``), so the sizes are nested and
the test split (``n_test`` and the generator seed untouched; sample i depends only on (seed, split, i))
is the same for every cell. The evaluation is identical across sizes: retrieval and zero-shot on the
test split, the linear probe and the VQA fine-tune on the pool's training split.

Each cell (size, variant, seed) runs ``recipes/uni_mlip_roco.py --config <training config>`` in its own
process (evaluating only retrieval at its end), then :func:`unimlip_kit.train.evaluate_run_folder`
in-process measures plain and meaning-level R@1 in both directions, zero-shot and linear-probe accuracy
over the 17 finding classes and VQA accuracy after a short fine-tune. The cell's numbers go to
``<cells_dir>/<size>/<variant>/seed<k>.json`` (default ``benchmarks/results/ablation_cells/``); a rerun
skips finished cells, so the grid can be completed over several sittings (``--max-cells N`` bounds one).
A killed cell starts again from step 0. Cells made under other settings (steps, training config,
evaluation) are refused by a run and left out of a report, naming the keys. Within a (seed, size), the
full objective runs first: the CLIP-wall-time cell needs its measured time.

The report (``benchmarks/results/ablation.{json,md,png}``): mean ± std over seeds per size and variant,
the paired difference of every variant to CLIP with a 95% t interval over seeds
(:func:`paired_interval`), a plot of each metric against training-set size, the command and commits.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, NamedTuple, Sequence

from unimlip_kit.eval import EvalConfig
from unimlip_kit.losses import DEFAULT_WEIGHTS
from unimlip_kit.train import (evaluate_run_folder, load_recipe_config, load_run, parse_recipe_args, resolve_device,
                               resolve_warmup)
from unimlip_kit.utils import config_to_dict, load_config, load_json, run_metadata, save_json
from unimlip_kit.utils.io import atomic_write

RECIPES = Path(__file__).resolve().parent
ROOT = RECIPES.parent
RESULTS = ROOT / "benchmarks" / "results"
CELLS = RESULTS / "ablation_cells"
#: the training config of each scale: the recipe's default model, or the smaller model of ablation.yaml
SCALES = {"recipe": RECIPES / "configs" / "default.yaml", "shortened": RECIPES / "configs" / "ablation.yaml"}

ALL_TERMS = tuple(DEFAULT_WEIGHTS)
FULL, BASELINE, WALLTIME, FLOOR = "uni-mlip", "clip", "clip-walltime", "no-pretraining"
#: variant -> loss terms enabled (UniMlipLoss term names); the full objective first (clip-walltime needs its time)
VARIANTS: dict[str, tuple[str, ...]] = {
    FULL: ALL_TERMS,
    BASELINE: ("itc",),
    WALLTIME: ("itc",),
    "+itc-feature": ("itc", "itc_feature"),
    "+uni-modal": ("itc", "image_ssl", "text_ssl"),
    "+fused": ("itc", "itm", "mlm"),
}
#: the full objective minus one term
LEAVE_ONE_OUT: dict[str, tuple[str, ...]] = {f"no-{t}": tuple(x for x in ALL_TERMS if x != t) for t in ALL_TERMS}
#: controls outside the default grid (ask for them with --variants): CLIP with augmented images. The recipe shows ITC a
#: clean view 1 (augment.view1_strength none), so clip sees no augmentation while +itc-feature adds a contrastive term
#: on the augmented view 2; clip-aug separates "augmented inputs" from "a second, feature-level ITC"
CONTROLS: dict[str, tuple[str, ...]] = {"clip-aug": ("itc",)}
#: recipe overrides a variant adds to its loss weights
VARIANT_OVERRIDES: dict[str, tuple[str, ...]] = {"clip-aug": ("augment.view1_strength=light",)}
ALL_VARIANTS = {**VARIANTS, **LEAVE_ONE_OUT, **CONTROLS}

#: (column, function of an evaluate_run_folder result): the quality metrics of a cell
EVAL_METRICS: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "i2t R@1": lambda m: m["retrieval"]["i2t"]["R@1"],
    "t2i R@1": lambda m: m["retrieval"]["t2i"]["R@1"],
    "i2t R@1 meaning": lambda m: m["retrieval"]["i2t_R@1_meaning"],
    "t2i R@1 meaning": lambda m: m["retrieval"]["t2i_R@1_meaning"],
    "zero-shot acc": lambda m: m["zero_shot"]["accuracy"],
    "linear-probe acc": lambda m: m["linear_probe"]["accuracy"],
    "VQA acc": lambda m: m["vqa"]["accuracy"],
}
#: the cost columns, from the run's metrics.json "train" section
COST_METRICS: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "train s": lambda t: t["wall_s"],
    "steps": lambda t: t["steps"],
}
METRICS = (*EVAL_METRICS, *COST_METRICS)

#: two-sided 95% quantiles t_{0.975, df} for df = 1..30 (used when scipy is absent)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

READING_RULE = ("Reading rule: claim only what the intervals support. A difference whose 95% interval over seeds "
                "contains 0 is not a finding (with 3 seeds the interval is wide: t = 4.30); an interval is marked "
                "▲ (above 0) or ▼ (below 0) only when it excludes 0.")


def _ablation_eval() -> EvalConfig:  # the same for every cell, sized for the CPU budget
    return EvalConfig(probe_train_limit=500, vqa_train_limit=1000, vqa_test_limit=500, vqa_max_steps=200)


@dataclass
class AblationConfig:
    """The grid (variants, sizes, seeds), the training config its cells share, and the evaluation settings.

    Example:
        >>> c = AblationConfig(); c.sizes, c.seeds, c.loo_sizes, c.pool_size, c.max_steps
        ([250, 1000, 4000], [0, 1, 2], [1000], 4000, None)
    """

    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    leave_one_out: bool = True  # the no-<term> variants at loo_sizes
    sizes: list[int] = field(default_factory=lambda: [250, 1000, 4000])  # training pairs (first N of the pool)
    loo_sizes: list[int] = field(default_factory=lambda: [1000])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    pool_size: int = 4000  # data.synthetic.n_train: one pool, so the test split and the probe/VQA data never change
    scale: Literal["recipe", "shortened"] = "recipe"  # recipe: default.yaml; shortened: ablation.yaml
    recipe_config: str | None = None  # a training config file instead of the scale's
    max_steps: int | None = None  # training steps per cell (None: the training config's train.max_steps)
    walltime_step_factor: int = 20  # clip-walltime: max_steps and warmup_steps x this, so the time budget binds
    output_dir: str = "runs/ablation"  # run folders: <output_dir>/<size>/<variant>/seed<k>
    cells_dir: str = str(CELLS)  # finished cells: <cells_dir>/<size>/<variant>/seed<k>.json
    results_dir: str = str(RESULTS)  # where ablation.md/.json/.png are written
    train_set: list[str] = field(default_factory=list)  # extra training-recipe overrides for every cell
    eval: EvalConfig = field(default_factory=_ablation_eval)
    reevaluate: bool = False  # evaluate trained cells again (keeps the training)
    keep_optimizer_state: bool = False  # keep checkpoints' state.pt (about 3x the weights) after a cell is stored
    only_size: list[int] = field(default_factory=list)  # restrict this call to these sizes
    only_variant: list[str] = field(default_factory=list)  # restrict this call to these variants
    max_cells: int | None = None  # run at most this many cells in this call
    report: bool = False  # only aggregate the finished cells
    plan: bool = False  # only print the grid, what is finished and the estimated time
    guess_seconds_per_cell: float = 360.0  # the time estimate before any cell of a variant is measured
    note: str = ""  # appended to the report header
    baseline: str = BASELINE  # the report's paired differences are to this variant (e.g. clip-aug)
    progress: bool = True
    lanes: int = 1  # cells run at once, each in its own process (see run_in_lanes)
    threads_per_lane: int = 0  # torch threads of each lane's process (0: the CPU count // lanes, at least 1)
    vqa_floor: Literal["auto", "yes", "no"] = "auto"  # the no-pretraining VQA floor: auto = when it is missing
    lane_child: bool = False  # set by run_in_lanes on the processes it starts: run the cells, write no report


class Cell(NamedTuple):
    """One (training-set size, variant, seed) of the grid."""

    size: int
    variant: str
    seed: int


def grid(cfg: AblationConfig) -> list[Cell]:
    """Every cell of the grid in running order: seed, then size, then variant with the full objective first.

    Example:
        >>> cells = grid(AblationConfig(sizes=[10, 20], loo_sizes=[20], seeds=[0]))
        >>> len(cells), cells[0], [c.variant for c in cells if c.size == 20][-1]
        (18, Cell(size=10, variant='uni-mlip', seed=0), 'no-mlm')
    """
    for v in cfg.variants:
        if v not in ALL_VARIANTS:
            raise ValueError(f"unknown variant {v!r}; known: {list(ALL_VARIANTS)}")
    if WALLTIME in cfg.variants and FULL not in cfg.variants:
        raise ValueError(f"{WALLTIME!r} needs {FULL!r} in variants (its budget is the full objective's wall time)")
    if not cfg.sizes or not cfg.seeds:
        raise ValueError("sizes and seeds must not be empty")
    if max(cfg.sizes) > cfg.pool_size or min(cfg.sizes) < 1:
        raise ValueError(f"sizes {cfg.sizes} must lie in [1, pool_size={cfg.pool_size}]")
    bad = [s for s in cfg.loo_sizes if s not in cfg.sizes]
    if cfg.leave_one_out and bad:
        raise ValueError(f"loo_sizes {bad} are not among sizes {cfg.sizes}")
    order = [v for v in ALL_VARIANTS if v in cfg.variants]  # FULL first, whatever order they were given in
    out = []
    for seed in cfg.seeds:
        for size in sorted(cfg.sizes):
            variants = order + ([v for v in LEAVE_ONE_OUT if v not in order]
                                if cfg.leave_one_out and size in cfg.loo_sizes else [])
            out += [Cell(size, v, seed) for v in variants]
    return out


def select(cells: Sequence[Cell], only_size: Sequence[int] = (), only_variant: Sequence[str] = ()) -> list[Cell]:
    """The cells of the given sizes and variants (empty = all).

    Example:
        >>> select([Cell(1, "clip", 0), Cell(2, "clip", 0), Cell(2, "uni-mlip", 0)], [2], ["clip"])
        [Cell(size=2, variant='clip', seed=0)]
    """
    bad = [v for v in only_variant if v not in ALL_VARIANTS]
    if bad:
        raise ValueError(f"unknown variant(s) {bad} in only_variant; known: {list(ALL_VARIANTS)}")
    return [c for c in cells if (not only_size or c.size in only_size) and (not only_variant or c.variant in only_variant)]


def cell_path(cells_dir: str | Path, cell: Cell) -> Path:
    """Where a finished cell is stored.

    Example:
        >>> cell_path("cells", Cell(250, "+fused", 1)).as_posix()
        'cells/250/+fused/seed1.json'
    """
    return Path(cells_dir) / str(cell.size) / cell.variant / f"seed{cell.seed}.json"


def variant_overrides(variant: str) -> list[str]:
    """Recipe overrides that switch on exactly ``variant``'s terms (others get weight 0).

    Example:
        >>> variant_overrides("clip")[:2]
        ['loss.weights.itc=1.0', 'loss.weights.itc_feature=0.0']
        >>> variant_overrides("clip-aug")[-1]
        'augment.view1_strength=light'
    """
    if variant not in ALL_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {list(ALL_VARIANTS)}")
    on = set(ALL_VARIANTS[variant])
    return [f"loss.weights.{t}={1.0 if t in on else 0.0}" for t in ALL_TERMS] + list(VARIANT_OVERRIDES.get(variant, ()))


def training_config_path(cfg: AblationConfig) -> Path:
    """The training config file every cell starts from."""
    return Path(cfg.recipe_config) if cfg.recipe_config else SCALES[cfg.scale]


def shared_overrides(cfg: AblationConfig) -> list[str]:
    """The overrides every cell gets: the pool, the extra ``train_set`` (the size, seed and terms come per cell)."""
    return [f"data.synthetic.n_train={cfg.pool_size}", *cfg.train_set]


def resolved_steps(cfg: AblationConfig) -> tuple[int, int]:
    """``(max_steps, warmup_steps)`` of a cell: ``cfg.max_steps`` or the training config's, and its warm-up."""
    rcfg = load_recipe_config(training_config_path(cfg), shared_overrides(cfg))
    steps = cfg.max_steps if cfg.max_steps is not None else rcfg.train.max_steps
    return steps, resolve_warmup(dataclasses.replace(rcfg.train, max_steps=steps))


def train_command(cfg: AblationConfig, cell: Cell, run: Path, budget_s: float | None = None) -> list[str]:
    """The training command of one cell: the recipe with the shared config, this size, seed and these terms.

    ``budget_s`` (clip-walltime): ``train.max_seconds``, with ``max_steps`` and ``warmup_steps`` scaled by
    ``walltime_step_factor`` so that the budget, not the step count, ends the run and the warm-up keeps
    its share of the schedule.

    Example:
        >>> cmd = train_command(AblationConfig(max_steps=7), Cell(250, "clip", 1), Path("runs/x"))
        >>> cmd[1].endswith("uni_mlip_roco.py"), cmd[3].endswith("default.yaml"), cmd[4:10]
        (True, True, ['--output-dir', 'runs/x', '--seed', '1', '--max-steps', '7'])
        >>> [a for a in cmd if a.startswith("data.")]
        ['data.synthetic.n_train=4000', 'data.limit_train=250']
    """
    steps, warmup = resolved_steps(cfg)
    extra = []
    if budget_s is not None:
        steps *= cfg.walltime_step_factor
        extra = [f"train.max_seconds={budget_s}", f"train.warmup_steps={warmup * cfg.walltime_step_factor}"]
    cmd = [sys.executable, str(RECIPES / "uni_mlip_roco.py"), "--config", str(training_config_path(cfg)),
           "--output-dir", str(run), "--seed", str(cell.seed), "--max-steps", str(steps)]
    cmd += ["--no-progress"] if not cfg.progress else []
    # the run evaluates only retrieval itself (the ablation evaluates everything after); one checkpoint at the end
    cmd += ["eval.tasks=[retrieval]", "eval.vqa_floor=false", f"train.ckpt_every={steps}", "train.keep_checkpoints=1"]
    return cmd + shared_overrides(cfg) + [f"data.limit_train={cell.size}"] + variant_overrides(cell.variant) + extra


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and k != "weights":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


#: recipe keys that differ between cells by design (or do not change a result)
_PER_CELL = ("seed", "output_dir", "progress", "threads", "device", "data.limit_train", "loss.weights", "eval.",
             "train.max_steps", "train.max_seconds", "train.warmup_steps", "train.ckpt_every", "train.keep_checkpoints",
             "train.log_every", "train.loggers", "data.num_workers")


def settings(cfg: AblationConfig) -> dict[str, Any]:
    """What must be equal for two cells to belong to one grid: the resolved training config, steps, evaluation.

    Example:
        >>> s = settings(AblationConfig(max_steps=5)); s["max_steps"], s["train"]["data.synthetic.n_train"]
        (5, 4000)
    """
    rcfg = load_recipe_config(training_config_path(cfg), shared_overrides(cfg))
    train = {k: v for k, v in _flatten(config_to_dict(rcfg)).items() if not k.startswith(_PER_CELL)}
    ev = {k: v for k, v in config_to_dict(cfg.eval).items() if k not in ("seed", "vqa_floor")}
    return {"train": train, "max_steps": resolved_steps(cfg)[0], "walltime_step_factor": cfg.walltime_step_factor,
            "eval": ev}


def settings_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, current)}`` for the keys present in both that differ (keys new on one side are ignored).

    Example:
        >>> settings_mismatch({"max_steps": 5, "train": {"a": 1, "b": 2}}, {"max_steps": 6, "train": {"a": 1, "c": 0}})
        {'max_steps': (5, 6)}
    """
    a, b = _flatten(saved), _flatten(current)
    return {k: (a[k], b[k]) for k in sorted(set(a) & set(b)) if a[k] != b[k]}


def cell_metrics(evaluation: Mapping[str, Any], train: Mapping[str, Any]) -> dict[str, float]:
    """The :data:`METRICS` of a cell from its evaluation and its run's ``metrics.json["train"]`` (NaN if absent).

    Example:
        >>> ev = {"retrieval": {"i2t": {"R@1": 0.5}, "t2i": {"R@1": 0.25}, "i2t_R@1_meaning": 0.75,
        ...                     "t2i_R@1_meaning": 1.0}, "zero_shot": {"accuracy": 0.1}, "vqa": {"accuracy": 0.6}}
        >>> m = cell_metrics(ev, {"wall_s": 12.0, "steps": 100}); m["i2t R@1"], m["steps"], math.isnan(m["linear-probe acc"])
        (0.5, 100.0, True)
    """
    out = {}
    for table, src in ((EVAL_METRICS, evaluation), (COST_METRICS, train)):
        for name, fn in table.items():
            try:
                out[name] = float(fn(src))
            except (KeyError, TypeError):
                out[name] = float("nan")
    return out


# ------------------------------------------------------------------ statistics (pure)


def t_quantile_975(df: int) -> float:
    """The two-sided 95% Student t quantile ``t_{0.975, df}`` (scipy when installed, else :data:`T975`).

    Example:
        >>> round(t_quantile_975(2), 3), round(t_quantile_975(9), 3)
        (4.303, 2.262)
    """
    if df < 1:
        raise ValueError(f"a t interval needs df >= 1 (at least 2 paired seeds), got df={df}")
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:
        if df > len(T975):
            raise ValueError(f"without scipy the t table covers df <= {len(T975)}, got {df}") from None
        return T975[df - 1]


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; 0 for one value) and count; NaNs dropped.

    Example:
        >>> mean_std([1.0, 2.0, 3.0, float("nan")])
        (2.0, 1.0, 3)
    """
    v = [float(x) for x in values if x == x]
    if not v:
        return float("nan"), float("nan"), 0
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s, len(v)


def paired_interval(diffs: Sequence[float]) -> dict[str, float]:
    """Mean paired difference and its 95% t interval over seeds: ``d̄ ± t_{0.975, n-1} · s_d / √n``.

    ``lo``/``hi`` are NaN for fewer than 2 differences. NaNs are dropped.

    Example:
        >>> r = paired_interval([1.0, 2.0, 3.0]); r["mean"], round(r["lo"], 3), round(r["hi"], 3), r["n"]
        (2.0, -0.484, 4.484, 3)
    """
    m, s, n = mean_std(diffs)
    if n < 2:
        return {"mean": m, "lo": float("nan"), "hi": float("nan"), "n": n}
    half = t_quantile_975(n - 1) * s / math.sqrt(n)
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}


def aggregate(cells: Sequence[Mapping[str, Any]], expected: Sequence[Cell] = (), baseline: str = BASELINE,
              metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    """Mean ± std per (size, variant, metric) and the paired difference of every variant to ``baseline``.

    ``cells``: ``{"size", "variant", "seed", "metrics": {name: value}}`` each. Pairs are formed over the
    seeds both the variant and the baseline have at that size (NaN values left out). ``expected``: the
    grid, to list the missing cells.

    Returns ``{"summary": {size: {variant: {metric: {mean, std, n, values: {seed: v}}}}},
    "paired": {size: {variant: {metric: {mean, lo, hi, n}}}}, "missing": [[size, variant, seed]], "complete"}``
    (sizes and seeds as strings, as in the JSON).

    Example:
        >>> cs = [{"size": 10, "variant": v, "seed": s, "metrics": {"m": x}}
        ...       for v, xs in (("clip", (1.0, 2.0)), ("b", (2.0, 4.0))) for s, x in enumerate(xs)]
        >>> a = aggregate(cs, metrics=["m"]); a["summary"]["10"]["b"]["m"]["mean"], a["paired"]["10"]["b"]["m"]["mean"]
        (3.0, 1.5)
    """
    by: dict[int, dict[str, dict[int, Mapping[str, float]]]] = {}
    for c in cells:
        by.setdefault(int(c["size"]), {}).setdefault(str(c["variant"]), {})[int(c["seed"])] = c["metrics"]
    summary: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    for size in sorted(by):
        summary[str(size)], paired[str(size)] = {}, {}
        base = by[size].get(baseline, {})
        for variant, seeds in by[size].items():
            row = {}
            for name in metrics:
                vals = {str(s): float(m.get(name, float("nan"))) for s, m in sorted(seeds.items())}
                mean, std, n = mean_std(list(vals.values()))
                row[name] = {"mean": mean, "std": std, "n": n, "values": vals}
            summary[str(size)][variant] = row
            if variant == baseline or not base:
                continue
            prow = {}
            for name in metrics:
                common = sorted(set(seeds) & set(base))
                diffs = [float(seeds[s].get(name, float("nan"))) - float(base[s].get(name, float("nan")))
                         for s in common]
                prow[name] = paired_interval(diffs)
            paired[str(size)][variant] = prow
    have = {(int(c["size"]), str(c["variant"]), int(c["seed"])) for c in cells}
    missing = [[c.size, c.variant, c.seed] for c in expected if (c.size, c.variant, c.seed) not in have]
    return {"summary": summary, "paired": paired, "missing": missing, "complete": not missing}


# ------------------------------------------------------------------ report


def _fmt(x: float, digits: int = 3, sign: bool = False) -> str:
    if x != x:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:+.0f}" if sign else f"{x:.0f}"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def full_objective_against(cells: Sequence[Mapping[str, Any]], baseline: str,
                           metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    """``{size: paired difference uni-mlip − baseline}`` over the sizes that have both (see :func:`aggregate`).

    Example:
        >>> cs = [{"size": 10, "variant": v, "seed": s, "metrics": {"m": x}}
        ...       for v, xs in (("uni-mlip", (3.0, 5.0)), ("no-itm", (1.0, 2.0))) for s, x in enumerate(xs)]
        >>> full_objective_against(cs, "no-itm", metrics=["m"])["10"]["m"]["mean"]
        2.5
    """
    paired = aggregate(cells, baseline=baseline, metrics=metrics)["paired"]
    return {size: rows[FULL] for size, rows in paired.items() if FULL in rows}


def term_contributions(cells: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS
                       ) -> dict[str, dict[str, Any]]:
    """What each term adds with all the others present: the paired difference uni-mlip − no-<term> per size.

    Leave-one-out reads the other way round from the table against CLIP: a positive difference means the
    full objective is better *with* the term. Keys are ``"uni-mlip − no-<term>"``; sizes without a
    leave-one-out variant are left out.

    Example:
        >>> cs = [{"size": 10, "variant": v, "seed": s, "metrics": {"m": x}}
        ...       for v, xs in (("uni-mlip", (3.0, 5.0)), ("no-itm", (1.0, 2.0))) for s, x in enumerate(xs)]
        >>> term_contributions(cs, metrics=["m"])["10"]["uni-mlip − no-itm"]["m"]["mean"]
        2.5
    """
    out: dict[str, dict[str, Any]] = {}
    for v in LEAVE_ONE_OUT:
        for size, row in full_objective_against(cells, v, metrics).items():
            out.setdefault(size, {})[f"{FULL} − {v}"] = row
    return out


def _paired_table(prows: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str]) -> list[str]:
    lines = ["| variant | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    for variant, row in prows.items():
        cells = []
        for name in metrics:
            p = row[name]
            if p["n"] == 0:
                cells.append("")
                continue
            digits = 0 if name in COST_METRICS else 3
            mark = " ▲" if p["lo"] > 0 else " ▼" if p["hi"] < 0 else ""
            cells.append(f"{_fmt(p['mean'], digits, True)} [{_fmt(p['lo'], digits, True)}, "
                         f"{_fmt(p['hi'], digits, True)}]{mark}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def markdown_report(agg: Mapping[str, Any], header: str, n_expected: int | None = None,
                    metrics: Sequence[str] = METRICS, baseline: str = BASELINE) -> str:
    """The Markdown report: per size a mean ± std table and a table of paired differences to ``baseline``
    (and, where ``agg`` has them, the full objective's difference to clip-walltime, ``paired_equal_time``,
    and to each leave-one-out variant, ``paired_term``: see :func:`term_contributions`).

    A cell of the first table reads ``mean ± std`` with ``(n/expected)`` when seeds are missing; a paired
    difference reads ``+d [lo, hi]`` with ▲/▼ when the 95% interval excludes 0.

    Example:
        >>> cs = [{"size": 10, "variant": v, "seed": s, "metrics": {"m": x}}
        ...       for v, xs in (("clip", (1.0, 2.0)), ("b", (2.0, 4.0))) for s, x in enumerate(xs)]
        >>> text = markdown_report(aggregate(cs, metrics=["m"]), "demo", 3, metrics=["m"])
        >>> "| b | 3.000 ± 1.414 (2/3) |" in text, "| b | +1.500 [-4.853, +7.853] |" in text
        (True, True)
    """
    lines = [header, ""]
    for size, rows in agg["summary"].items():
        lines += [f"### {size} training pairs", "", "| variant | " + " | ".join(metrics) + " |",
                  "|" + "---|" * (len(metrics) + 1)]
        for variant, row in rows.items():
            cells = []
            for name in metrics:
                r = row[name]
                if r["n"] == 0:
                    cells.append("")
                    continue
                digits = 0 if name in COST_METRICS else 3
                text = f"{_fmt(r['mean'], digits)} ± {_fmt(r['std'], digits)}"
                if n_expected is not None and r["n"] < n_expected:
                    text += f" ({r['n']}/{n_expected})"
                cells.append(text)
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        for key, what in (("paired", f"Paired difference to {baseline}"),
                          ("paired_equal_time", f"Equal training time: paired difference to {WALLTIME}"),
                          ("paired_term", f"Leave-one-out, what each term adds with the others present: "
                                          f"{FULL} − no-<term>")):
            prows = agg.get(key, {}).get(size, {})
            if prows:
                lines += ["", f"{what} over seeds, mean [95% t interval]:", ""]
                lines += _paired_table(prows, metrics)
        lines.append("")
    if agg["missing"]:
        shown = ", ".join(f"{s}/{v}/seed{k}" for s, v, k in agg["missing"][:40])
        more = f" and {len(agg['missing']) - 40} more" if len(agg["missing"]) > 40 else ""
        lines += [f"**Incomplete**: {len(agg['missing'])} cells missing ({shown}{more}).", ""]
    return "\n".join(lines).rstrip() + "\n"


def plot_by_size(agg: Mapping[str, Any], path: Path, title: str, metrics: Sequence[str] = METRICS) -> Path:
    """One panel per metric against training-set size (log axis), one line per variant, ±std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(s) for s in agg["summary"]]
    variants: list[str] = []
    for rows in agg["summary"].values():
        variants += [v for v in rows if v not in variants]
    ncol = 3
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow + 0.4), squeeze=False)
    loo = [v for v in variants if v in LEAVE_ONE_OUT]
    main = [v for v in variants if v not in loo]
    tab10, dark2 = plt.get_cmap("tab10"), plt.get_cmap("Dark2")  # the variants' own colours; leave-one-out apart
    colour = {v: tab10(i % 10) for i, v in enumerate(main)} | {v: dark2(i % 8) for i, v in enumerate(loo)}
    legend: dict[str, Any] = {}
    for ax, name in zip(axes.flat, metrics):
        for v in variants:
            pts = [(s, agg["summary"][str(s)][v][name]) for s in sizes if v in agg["summary"][str(s)]]
            pts = [(s, r) for s, r in pts if r["n"] > 0]
            if not pts:
                continue
            style = "--" if v in loo else ":" if v == FLOOR else "-"
            # leave-one-out variants exist at one size: spread them a little along x so each stays visible
            shift = 1.0 + 0.04 * (loo.index(v) - (len(loo) - 1) / 2) if v in loo else 1.0
            h = ax.errorbar([s * shift for s, _ in pts], [r["mean"] for _, r in pts], yerr=[r["std"] for _, r in pts],
                            linestyle=style, marker="s" if v in loo else "o", markersize=3, capsize=2, label=v,
                            color=colour[v])
            legend.setdefault(v, h)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("training pairs", fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.legend(list(legend.values()), list(legend), loc="lower center", fontsize=7, ncol=min(7, len(legend)))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.45 / (3.2 * nrow + 0.4), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ running cells


def run_cell(cfg: AblationConfig, cell: Cell, run: Path, *, budget_s: float | None, floor: bool) -> dict[str, Any]:
    """Train (unless ``run`` is trained) and evaluate one cell; ``{"metrics", "train", "vqa_floor"?, "command"}``.

    A run folder without ``metrics.json`` (a killed training) is removed and trained from step 0.
    ``floor`` also fine-tunes the VQA head on a freshly initialised model (``vqa_floor``).
    """
    command = train_command(cfg, cell, run, budget_s)
    if not (run / "metrics.json").is_file():
        if run.exists():
            print(f"[ablation] {run} has no metrics.json (killed?): training it again from step 0", flush=True)
            shutil.rmtree(run)
        subprocess.run(command, check=True)
    train = load_json(run / "metrics.json")["train"]
    model, tokenize, rcfg = load_run(run, device=resolve_device("auto"))
    ecfg = dataclasses.replace(cfg.eval, seed=cell.seed, vqa_floor=floor and "vqa" in cfg.eval.tasks)
    evaluation = evaluate_run_folder(model, tokenize, rcfg, ecfg, progress=cfg.progress)
    out: dict[str, Any] = {"metrics": cell_metrics(evaluation, train), "train": train, "command": command,
                           "evaluation": {k: evaluation.get(k) for k in ("retrieval", "zero_shot", "linear_probe", "vqa")}}
    if "vqa_floor" in evaluation:
        out["vqa_floor"] = evaluation["vqa_floor"]
    if not cfg.keep_optimizer_state:  # the weights stay (reevaluate works); the optimizer state is not needed again
        for state in (run / "checkpoints").glob("step_*/state.pt"):
            state.unlink()
    return out


def lane_command(argv: Sequence[str], cell: Cell, floor: bool) -> list[str]:
    """The command that runs exactly ``cell`` in a lane: this call's arguments, narrowed to the cell (flags last win).

    Example:
        >>> cmd = lane_command(["--seeds", "0", "1"], Cell(250, "clip", 1), floor=False)
        >>> cmd[2:4], cmd[4:]  # doctest: +NORMALIZE_WHITESPACE
        (['--seeds', '0'], ['1', '--seeds', '1', '--only-size', '250', '--only-variant', 'clip', '--max-cells', '1',
          '--lanes', '1', '--lane-child', 'vqa_floor=no'])
    """
    return [sys.executable, str(Path(__file__).resolve()), *argv, "--seeds", str(cell.seed), "--only-size",
            str(cell.size), "--only-variant", cell.variant, "--max-cells", "1", "--lanes", "1", "--lane-child",
            f"vqa_floor={'yes' if floor else 'no'}"]


def run_in_lanes(cfg: AblationConfig, argv: Sequence[str], todo: Sequence[Cell],
                 launch: Callable[[list[str], dict[str, str], Path], Any] | None = None, poll_s: float = 2.0
                 ) -> tuple[int, list[str]]:
    """Run ``todo`` with ``cfg.lanes`` cells at once, each cell in its own process; ``(cells stored, failed logs)``.

    On a machine with more cores than one small cell can use, lanes raise throughput: on this 2-core CPU, two
    single-thread lanes train 1.3x the steps per second of one two-thread process. Each lane's process gets
    ``threads_per_lane`` threads (``OMP_NUM_THREADS``), so every cell of a grid should run under one lane setting:
    the cells' training times (and clip-walltime's budget, the full objective's time) depend on it. The order is
    the serial order; a clip-walltime cell waits until its full-objective cell is stored; the VQA floor of a
    (size, seed) is computed by one cell only. A failed cell is reported with its log and the others go on.
    ``launch(cmd, env, log)`` returns an object with ``poll()`` (default: :class:`subprocess.Popen`).
    """
    threads = cfg.threads_per_lane or max(1, (os.cpu_count() or 1) // cfg.lanes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    logs = Path(cfg.output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def _popen(cmd: list[str], env: dict[str, str], log: Path) -> Any:
        with open(log, "w") as fh:
            return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)

    launch = launch or _popen
    pending, running = list(todo), {}
    floors = {(c.size, c.seed) for c in todo if cell_path(cfg.cells_dir, Cell(c.size, FLOOR, c.seed)).is_file()}
    ran, failed, t_all = 0, [], time.time()
    print(f"[ablation] {len(todo)} cells in {cfg.lanes} lanes of {threads} thread(s); logs in {logs}", flush=True)
    while pending or running:
        for c in list(pending):
            if len(running) >= cfg.lanes:
                break
            if c.variant == WALLTIME and not cell_path(cfg.cells_dir, Cell(c.size, FULL, c.seed)).is_file():
                full = Cell(c.size, FULL, c.seed)
                if full in pending or full in running:
                    continue  # its budget is being measured
                print(f"[ablation] skip {c}: it needs the finished {FULL} cell of size {c.size}, seed {c.seed}",
                      flush=True)
                pending.remove(c)
                continue
            floor = cfg.vqa_floor == "yes" or (cfg.vqa_floor == "auto" and (c.size, c.seed) not in floors)
            floors.add((c.size, c.seed))
            log = logs / f"{c.size}_{c.variant}_seed{c.seed}.log"
            pending.remove(c)
            running[c] = (launch(lane_command(argv, c, floor), env, log), log, time.time())
            print(f"[ablation] start {c.size} {c.variant} seed {c.seed} ({len(running)} running, {len(pending)} "
                  f"waiting)", flush=True)
        for c, (proc, log, t0) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del running[c]
            if rc == 0 and cell_path(cfg.cells_dir, c).is_file():
                ran += 1
                m = load_json(cell_path(cfg.cells_dir, c))["metrics"]
                print(f"[ablation] done {c.size} {c.variant} seed {c.seed} in {time.time() - t0:.0f} s: R@1 "
                      f"{m['i2t R@1']:.3f}/{m['t2i R@1']:.3f}, VQA {m['VQA acc']:.3f}", flush=True)
            else:
                failed.append(str(log))
                print(f"[ablation] FAILED {c.size} {c.variant} seed {c.seed} (exit {rc}); see {log}", flush=True)
        if running:
            time.sleep(poll_s)
    print(f"[ablation] ran {ran} cells in {(time.time() - t_all) / 60:.1f} min ({len(failed)} failed)", flush=True)
    return ran, failed


def load_cells(cfg: AblationConfig, cells: Sequence[Cell], current: Mapping[str, Any]
               ) -> tuple[dict[Cell, dict[str, Any]], dict[Cell, dict[str, tuple[Any, Any]]]]:
    """The stored cells among ``cells`` made under ``current`` settings, and the others with what differs."""
    done, stale = {}, {}
    for c in cells:
        p = cell_path(cfg.cells_dir, c)
        if p.is_file():
            saved = load_json(p)
            diff = settings_mismatch(saved.get("settings", {}), current)
            (stale if diff else done)[c] = diff if diff else saved
    return done, stale


def estimate_seconds(todo: Sequence[Cell], done: Mapping[Cell, Mapping[str, Any]], guess: float) -> tuple[float, str]:
    """Estimated seconds for ``todo``: each variant's measured mean cell time where finished cells exist, else ``guess``.

    clip-walltime is estimated from the full objective (the same training time).

    Example:
        >>> done = {Cell(1, "clip", 0): {"cell_s": 100.0}, Cell(1, "clip", 1): {"cell_s": 120.0}}
        >>> estimate_seconds([Cell(2, "clip", 0), Cell(2, "uni-mlip", 0)], done, 300.0)
        (410.0, 'measured for clip; guessed 300 s for uni-mlip')
    """
    measured: dict[str, list[float]] = {}
    for c, rec in done.items():
        if "cell_s" in rec:
            measured.setdefault(c.variant, []).append(float(rec["cell_s"]))
    mean = {v: sum(x) / len(x) for v, x in measured.items()}
    if WALLTIME not in mean and FULL in mean:
        mean[WALLTIME] = mean[FULL]
    total, guessed, used = 0.0, [], []
    for c in todo:
        if c.variant in mean:
            total += mean[c.variant]
            used += [c.variant] if c.variant not in used else []
        else:
            total += guess
            guessed += [c.variant] if c.variant not in guessed else []
    parts = ([f"measured for {', '.join(used)}"] if used else []) + (
        [f"guessed {guess:.0f} s for {', '.join(guessed)}"] if guessed else [])
    return total, "; ".join(parts) or "nothing to run"


def write_report(cfg: AblationConfig, expected: Sequence[Cell], current: Mapping[str, Any], command: str
                 ) -> dict[str, Any] | None:
    """Aggregate the finished cells of ``expected`` into ``results_dir``/ablation.{json,md,png}; None if there are none."""
    done, stale = load_cells(cfg, expected, current)
    floors = {}
    for size, seed in sorted({(c.size, c.seed) for c in expected}):
        p = cell_path(cfg.cells_dir, Cell(size, FLOOR, seed))
        if p.is_file() and not settings_mismatch(load_json(p).get("settings", {}), current):
            floors[(size, seed)] = load_json(p)
    if not done:
        print(f"[ablation] no finished cells under {cfg.cells_dir} for these settings: no report written", flush=True)
        return None
    records = [{"size": c.size, "variant": c.variant, "seed": c.seed, "metrics": r["metrics"]} for c, r in done.items()]
    records += [{"size": s, "variant": FLOOR, "seed": k, "metrics": r["metrics"]} for (s, k), r in floors.items()]
    if cfg.baseline not in {c.variant for c in expected}:
        raise ValueError(f"baseline {cfg.baseline!r} is not among the variants {sorted({c.variant for c in expected})}")
    agg = aggregate(records, expected, baseline=cfg.baseline)
    # the full objective at CLIP's compute, and against each leave-one-out variant
    agg["paired_equal_time"] = {size: {FULL: row} for size, row in full_objective_against(records, WALLTIME).items()}
    agg["paired_term"] = term_contributions(records)
    commits = sorted({str(r.get("meta", {}).get("commit")) for r in [*done.values(), *floors.values()]})
    meta = run_metadata()
    steps = current["max_steps"]
    ev = cfg.eval
    header = (f"**Uni-Mlip ablation** on the synthetic benchmark: sizes {sorted({c.size for c in expected})} (the first N "
              f"of one {cfg.pool_size}-pair pool; one fixed test split), seeds {sorted({c.seed for c in expected})}, "
              f"{steps} training steps per cell (clip-walltime: the full objective's training time of the same size "
              f"and seed), training config `{_rel(training_config_path(cfg))}`"
              + (f" + {cfg.train_set}" if cfg.train_set else "") +
              f". R@1 over the test gallery (chance 1/gallery); meaning = any caption of the same meaning counts; "
              f"zero-shot / linear probe over the 17 finding classes (chance 0.059; probe on {ev.probe_train_limit} "
              f"images); VQA after {ev.vqa_max_steps} fine-tuning steps on {ev.vqa_train_limit} questions, tested on "
              f"{ev.vqa_test_limit}; {FLOOR} = the same head on an untrained model. Mean ± std over seeds. "
              f"{READING_RULE}\n\nCommand: `{command}`. Report at commit {meta.get('commit')}; cells from commit(s) "
              f"{', '.join(commits)}. {len(done)} of {len(expected)} cells finished."
              + (f" {cfg.note}" if cfg.note else ""))
    text = markdown_report(agg, header, n_expected=len({c.seed for c in expected}), baseline=cfg.baseline)
    if stale:
        text += (f"\n{len(stale)} stored cells were made under other settings and are left out, e.g. "
                 f"{cell_path(cfg.cells_dir, next(iter(stale)))}: {next(iter(stale.values()))}\n")
    payload = {"aggregate": agg, "command": command, "commit": meta.get("commit"), "cell_commits": commits,
               "settings": current, "variants": {v: list(ALL_VARIANTS[v]) for v in {c.variant for c in expected}},
               "cells": {f"{c.size}/{c.variant}/seed{c.seed}": {"metrics": r["metrics"], "cell_s": r.get("cell_s"),
                                                               "budget_s": r.get("budget_s")} for c, r in done.items()},
               "stale_cells": [str(cell_path(cfg.cells_dir, c)) for c in stale], "meta": meta}
    out = Path(cfg.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "ablation.md", text)
    save_json(out / "ablation.json", payload)
    plot_by_size(agg, out / "ablation.png", f"Uni-Mlip ablation, synthetic benchmark, {steps} steps, mean ± std over seeds")
    print(text, flush=True)
    return payload


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parse_recipe_args("ablation", argv, description=__doc__.split("\n\n")[0])
    cfg = load_config(AblationConfig, p.config, p.overrides)
    command = "python recipes/ablation.py " + " ".join(shlex.quote(a) for a in argv)
    expected = grid(cfg)
    current = settings(cfg)
    if cfg.report:
        return write_report(cfg, expected, current, command)

    chosen = select(expected, cfg.only_size, cfg.only_variant)
    done, stale = load_cells(cfg, expected, current)
    if stale and not cfg.plan:
        c, diff = next(iter(stale.items()))
        raise ValueError(f"{len(stale)} stored cells were made under other settings, e.g. {cell_path(cfg.cells_dir, c)}: "
                         f"{'; '.join(f'{k}: {a!r} stored, {b!r} now' for k, (a, b) in diff.items())}; use another "
                         f"--cells-dir or delete them")
    todo = [c for c in chosen if cfg.reevaluate or c not in done]
    if cfg.max_cells is not None:
        todo = todo[:cfg.max_cells]
    seconds, basis = estimate_seconds(todo, done, cfg.guess_seconds_per_cell)
    print(f"[ablation] grid {len(expected)} cells ({len(done)} finished); this call: {len(todo)} of {len(chosen)} "
          f"selected, estimated {seconds / 3600:.1f} h ({basis}); steps {current['max_steps']}, "
          f"training config {_rel(training_config_path(cfg))}", flush=True)
    if cfg.plan:
        for c in todo:
            print(f"  {c.size:>5} {c.variant:<16} seed {c.seed}", flush=True)
        return None
    if cfg.lanes > 1 and not cfg.lane_child:
        ran, failed = run_in_lanes(cfg, argv, todo)
        payload = write_report(cfg, expected, current, command)
        if failed:
            raise RuntimeError(f"{len(failed)} cells failed (logs: {', '.join(failed)}); the others are stored")
        if payload is not None:
            payload["cells_run"] = ran
        return payload
    out_dir, t_all, ran = Path(cfg.output_dir), time.time(), 0
    for c in todo:
        budget = None
        if c.variant == WALLTIME:
            full = cell_path(cfg.cells_dir, Cell(c.size, FULL, c.seed))
            if not full.is_file():
                print(f"[ablation] skip {c}: it needs the finished {FULL} cell of size {c.size}, seed {c.seed}", flush=True)
                continue
            budget = float(load_json(full)["metrics"]["train s"])
        floor_path = cell_path(cfg.cells_dir, Cell(c.size, FLOOR, c.seed))
        floor = cfg.vqa_floor == "yes" or (cfg.vqa_floor == "auto" and not floor_path.is_file())
        run = out_dir / str(c.size) / c.variant / f"seed{c.seed}"
        print(f"[ablation] cell {ran + 1}/{len(todo)}: size {c.size}, {c.variant}, seed {c.seed} -> {run}"
              + (f" (budget {budget:.0f} s)" if budget else ""), flush=True)
        t0 = time.time()
        result = run_cell(cfg, c, run, budget_s=budget, floor=floor)
        meta = run_metadata()
        record = {"size": c.size, "variant": c.variant, "seed": c.seed, "terms": list(ALL_VARIANTS[c.variant]),
                  "settings": current, "cell_s": time.time() - t0, "budget_s": budget, "run_dir": str(run),
                  "meta": meta, **result}
        if budget is not None:
            record["budget_binding"] = record["metrics"]["steps"] < resolved_steps(cfg)[0] * cfg.walltime_step_factor
        floor_result = record.pop("vqa_floor", None)
        save_json(cell_path(cfg.cells_dir, c), record)
        if floor and floor_result is not None:
            save_json(floor_path, {"size": c.size, "variant": FLOOR, "seed": c.seed, "settings": current,
                                   "metrics": {"VQA acc": float(floor_result.get("accuracy", float("nan")))},
                                   "vqa": floor_result, "from_cell": str(cell_path(cfg.cells_dir, c)), "meta": meta})
        ran += 1
        done[c] = record
    print(f"[ablation] ran {ran} cells in {(time.time() - t_all) / 60:.1f} min", flush=True)
    if cfg.lane_child:
        return {"cells_run": ran}
    payload = write_report(cfg, expected, current, command)
    if payload is not None:
        payload["cells_run"] = ran
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
