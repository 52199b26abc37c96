"""Shared benchmark plumbing: one process per configuration, timing, peak memory, JSON + chart.

Every benchmark in this folder writes ``<name>.json`` with ``run_metadata()`` (commit, versions,
device) and a PNG chart beside it, into :data:`RESULTS`:

* by default ``benchmarks/results/local/`` (git-ignored): a user's ``make bench`` or any benchmark run
  never overwrites the committed numbers;
* ``UNIMLIP_BENCH_RESULTS=committed`` writes the committed ``benchmarks/results/`` (when the numbers are
  meant to be recorded, e.g. ``benchmarks/gpu_check.sh``); any other value is a folder to write to.

A benchmark's own ``--out`` still wins.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

#: the committed results (README and docs quote them)
COMMITTED_RESULTS = Path(__file__).resolve().parent / "results"
#: where a run writes unless asked otherwise (git-ignored)
LOCAL_RESULTS = COMMITTED_RESULTS / "local"


def results_dir(env: str | None = None) -> Path:
    """The output folder: ``UNIMLIP_BENCH_RESULTS`` (``committed`` or a path), else :data:`LOCAL_RESULTS`.

    Example:
        >>> results_dir("") == LOCAL_RESULTS, results_dir("committed") == COMMITTED_RESULTS, results_dir("/tmp/b")
        (True, True, PosixPath('/tmp/b'))
    """
    value = os.environ.get("UNIMLIP_BENCH_RESULTS", "") if env is None else env
    if not value:
        return LOCAL_RESULTS
    return COMMITTED_RESULTS if value == "committed" else Path(value)


RESULTS = results_dir()


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc), in bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_and_memory(step: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    """Median/min/max seconds of ``step`` after ``warmup`` calls, and its extra peak memory.

    Extra peak memory is measured from the state right before the first call:
    CUDA via ``max_memory_allocated``, CPU via the process's peak RSS (the
    worker is a fresh process holding only its inputs).
    """
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = current_rss_bytes()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    return {
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "seconds_max": max(times),
        "seconds_all": times,
        "extra_peak_bytes": max(0, peak - base),
    }


def run_worker(script: str, config: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``script --worker CONFIG_JSON`` in a fresh process; return its last-line JSON (or the error)."""
    load_before = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(config)], capture_output=True, text=True, timeout=timeout
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**config, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return {**json.loads(lines[-1]), "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0]}


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Print rows as an aligned text table; ``columns`` is a list of (key, header)."""
    cells = [[h for _, h in columns]] + [[_fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def plot_time_and_memory(rows: list[dict[str, Any]], path: Path, *, labels: dict[str, str], title: str,
                         time_title: str = "fwd+bwd time (s, median)") -> None:
    """Two log-log panels (median time and extra peak memory against N), one line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for backend in sorted({r["backend"] for r in rows}):
        pts = sorted((r["n"], r) for r in rows if r["backend"] == backend and "error" not in r)
        if not pts:
            continue
        label = labels.get(backend, backend)
        ax1.plot([n for n, _ in pts], [r["seconds_median"] for _, r in pts], "o-", label=label)
        ax2.plot([n for n, _ in pts], [max(r["extra_peak_bytes"] / 2**20, 0.1) for _, r in pts], "o-", label=label)
    for ax, panel in ((ax1, time_title), (ax2, "extra peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size N")
        ax.set_title(panel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_sweep(script: str, backends: list[str], sizes: list[int], base: dict[str, Any]) -> list[dict[str, Any]]:
    """Run ``script``'s worker once per (N, backend), each in a fresh process, printing a line per result."""
    rows = []
    for n in sizes:
        for backend in backends:
            row = run_worker(script, {**base, "backend": backend, "n": n})
            row.setdefault("extra_peak_mib", row.get("extra_peak_bytes", 0) / 2**20)
            rows.append(row)
            print(f"  {backend:9s} N={n:7d}: " + (row.get("error") or
                  f"{row['seconds_median']:.3f}s  +{row['extra_peak_mib']:.0f} MiB"), flush=True)
    return rows


def add_ratios(rows: list[dict[str, Any]], against: str, suffix: str) -> None:
    """Add ``time_vs_<suffix>`` and ``memory_vs_<suffix>`` to each row, relative to backend ``against`` at the same N."""
    ref = {r["n"]: r for r in rows if r["backend"] == against and "error" not in r}
    for r in rows:
        b = ref.get(r["n"])
        if b and "error" not in r:
            r[f"time_vs_{suffix}"] = r["seconds_median"] / b["seconds_median"]
            r[f"memory_vs_{suffix}"] = r["extra_peak_bytes"] / max(1, b["extra_peak_bytes"])
