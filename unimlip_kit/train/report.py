"""What a run reports: ``log.csv``, ``loss_curves.png``, ``summary.md``, and optional TensorBoard / W&B loggers.

The logged rows (``{"step", "lr", "logit_scale", "total", <term>: ...}``) are the run's *history*,
kept in every checkpoint; :func:`write_csv` and :func:`plot_losses` write it out at the end of a run,
so a resumed run's files equal an uninterrupted run's. Loggers (``train.loggers``) stream the same rows
while training: ``csv`` (these files, the default), ``tensorboard`` (``<run>/tensorboard/``, needs the
``[tensorboard]`` extra) and ``wandb`` (needs ``[wandb]``; ``WANDB_MODE=offline`` writes
``<run>/wandb/`` without network; a resumed run continues the same W&B run id, kept in
``<run>/wandb_id.txt``).
"""

from __future__ import annotations

import csv
import io
import math
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from unimlip_kit.eval import format_table
from unimlip_kit.utils.io import atomic_write
from unimlip_kit.utils.optional import require

__all__ = ["NOT_LOSSES", "Loggers", "plot_losses", "summary_table", "write_csv"]

#: Columns of a history row that are not loss terms.
NOT_LOSSES = ("step", "lr", "logit_scale", "logit_bias", "pairs_per_s")


def _columns(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of the rows in order of first appearance (validation keys join the rows of the steps that validated)."""
    return list(dict.fromkeys(k for row in history for k in row))


def write_csv(history: Sequence[Mapping[str, float]], path: str | Path) -> None:
    """One row per logged step, one column per key of any row (``log.csv``; empty where a row lacks it), atomically.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "log.csv"; write_csv([{"step": 1, "total": 2.5}, {"step": 2, "val_R@1": 0.5}], p)
        >>> p.read_text().splitlines()
        ['step,total,val_R@1', '1,2.5,', '2,,0.5']
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(history))
    w.writeheader()
    w.writerows(history)
    atomic_write(path, buf.getvalue())


def plot_losses(history: Sequence[Mapping[str, float]], path: str | Path) -> list[str]:
    """``loss_curves.png``: one panel per loss term (the weighted total first, validation ``val_*`` after), each on its own y scale.

    A single axis let the total set the scale and squashed the terms near zero; here every term gets
    a panel with its own range (log scale when the term is positive and spans more than a factor of 10).
    Returns the plotted keys.

    Example:
        >>> import tempfile
        >>> h = [{"step": s, "lr": 1e-3, "total": 5 / s, "itc": 2 / s, "mlm": 0.01 / s} for s in (1, 2, 3)]
        >>> p = Path(tempfile.mkdtemp()) / "loss.png"; plot_losses(h, p), p.stat().st_size > 1000
        (['total', 'itc', 'mlm'], True)
    """
    matplotlib = require("matplotlib", "train", "loss-curve plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in _columns(history) if k not in NOT_LOSSES]
    keys = sorted(keys, key=lambda k: k != "total")  # total first, the terms in logged order
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        rows = [h for h in history if k in h]  # validation keys exist on the steps that validated only
        steps, ys = [h["step"] for h in rows], [h[k] for h in rows]
        ax.plot(steps, ys, lw=1.5, color="black" if k == "total" else None, marker="." if len(ys) < 30 else None)
        finite = [y for y in ys if y == y and math.isfinite(y)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 10:
            ax.set_yscale("log")
        ax.set_title("total (weighted)" if k == "total" else k, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("Uni-Mlip training losses (one panel per term)", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return keys


def summary_table(metrics: Mapping[str, Any]) -> str:
    """The run's headline numbers as Markdown (``summary.md``): retrieval table, the evaluation table, data and time.

    Example:
        >>> m = {"eval": {}, "data": {"train_pairs": 8, "skipped": 0}, "train": {"steps": 2, "wall_s": 1.2}}
        >>> print(summary_table(m))
        ```
        <BLANKLINE>
        ```
        <BLANKLINE>
        train pairs 8, skipped 0; 2 steps in 1 s
    """
    lines = []
    if metrics.get("retrieval"):
        r = metrics["retrieval"]
        lines += ["| direction | R@1 | R@5 | R@10 | median rank | meaning-level R@1 |", "|---|---|---|---|---|---|"]
        for d in ("i2t", "t2i"):
            m = r[d]
            lines.append(f"| {d} | {m['R@1']:.3f} | {m['R@5']:.3f} | {m['R@10']:.3f} | {m['median_rank']:.0f} | "
                         f"{r.get(f'{d}_R@1_meaning', float('nan')):.3f} |")
        ceiling = f", ceiling R@1 {r['ceiling_R@1']:.3f} ({r['distinct_meanings']} meanings)" if "ceiling_R@1" in r else ""
        lines.append(f"\nchance R@1 = {r['chance_R@1']:.4f} (gallery {r['gallery']}){ceiling}\n")
    lines.append("```\n" + format_table(metrics["eval"]) + "\n```\n")
    lines.append(f"train pairs {metrics['data']['train_pairs']}, skipped {metrics['data']['skipped']}; "
                 f"{metrics['train']['steps']} steps in {metrics['train']['wall_s']:.0f} s")
    return "\n".join(lines)


class Loggers:
    """The run's streaming loggers (``train.loggers``): rows go to TensorBoard and/or W&B as they are logged.

    ``csv`` streams nothing (``log.csv`` and ``loss_curves.png`` are written from the history at the end);
    ``tensorboard`` writes one scalar per key under ``<run>/tensorboard``; ``wandb`` logs each row at its
    step. A missing package raises an ``ImportError`` naming the extra before training starts.

    Example:
        >>> import tempfile
        >>> lg = Loggers(["csv"], tempfile.mkdtemp()); lg.log({"step": 1, "total": 1.0}); lg.close(); lg.active
        []
    """

    def __init__(self, names: Sequence[str], run_dir: str | Path, *, config: Mapping[str, Any] | None = None,
                 project: str = "unimlip_kit") -> None:
        unknown = sorted(set(names) - {"csv", "tensorboard", "wandb"})
        if unknown:
            raise ValueError(f"unknown loggers {unknown}; known: csv, tensorboard, wandb")
        self.run_dir = Path(run_dir)
        self.active: list[str] = []
        self._tb = self._wandb = None
        if "tensorboard" in names:
            require("tensorboard", "tensorboard", "train.loggers=[tensorboard]")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            self.active.append("tensorboard")
        if "wandb" in names:
            wandb = require("wandb", "wandb", "train.loggers=[wandb]")
            id_file = self.run_dir / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]  # W&B's id format
            self.run_dir.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id + "\n")
            self._wandb = wandb.init(project=project, id=run_id, resume="allow", dir=str(self.run_dir),
                                     name=self.run_dir.name, config=dict(config or {}))
            self.active.append("wandb")

    def log(self, row: Mapping[str, float]) -> None:
        """Send one history row (``step`` is the x axis; losses under ``loss/``, the rest under ``train/``)."""
        step = int(row["step"])
        scalars = {(f"train/{k}" if k in NOT_LOSSES else f"loss/{k}"): float(v) for k, v in row.items() if k != "step"}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def summary(self, values: Mapping[str, float]) -> None:
        """Final numbers (e.g. retrieval R@1) as W&B summary values and TensorBoard scalars at the last step."""
        if self._wandb is not None:
            for k, v in values.items():
                self._wandb.summary[k] = v
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, float(v), 0)

    def close(self) -> None:
        """Flush and close every logger."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
