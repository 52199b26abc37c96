"""Peak memory and time of chunked retrieval metrics vs the full-matrix evaluation most CLIP codebases use.

The baseline is what open_clip's ``get_clip_metrics`` and most retrieval evals do:
form the N×N logit matrix, then rank every row and column. Ours
(:func:`unimlip_kit.eval.retrieval_metrics`) never holds it. Each measurement
runs in a fresh subprocess and reports its peak RSS minus the RSS after the
embeddings were created, so the number is the metric's own working memory.

    python benchmarks/bench_retrieval.py                      # N up to 32k (full matrix up to 16k)
    python benchmarks/bench_retrieval.py --sizes 1000 100000  # the 100k gallery

Writes ``retrieval_metrics.json`` and ``retrieval_metrics.png`` to ``common.RESULTS`` (``benchmarks/results/local/``
unless ``UNIMLIP_BENCH_RESULTS=committed``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import RESULTS  # noqa: E402  benchmarks/results/local/ unless UNIMLIP_BENCH_RESULTS=committed

CHILD = r"""
import json, resource, sys, time, torch
n, d, method, threads = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
a = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
b = torch.nn.functional.normalize(a + 0.4 * torch.randn(n, d, generator=g), dim=1)
from unimlip_kit.eval import retrieval_metrics
def full_matrix(a, b):
    s = a @ b.T                       # N x N
    diag = s.diagonal()
    r_i2t = (s >= diag[:, None]).sum(1)   # ties against the query, like ours (self counted once)
    r_t2i = (s >= diag[None, :]).sum(0)
    return float((r_i2t <= 1).float().mean()), float((r_t2i <= 1).float().mean())
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if method == "chunked":
    m = retrieval_metrics(a, b, ks=(1,))
    r1 = (m["i2t"]["R@1"], m["t2i"]["R@1"])
else:
    r1 = full_matrix(a, b)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "d": d, "method": method, "seconds": dt, "extra_peak_mib": (peak - base) / 1024, "R@1": r1}))
"""


def run_one(n: int, d: int, method: str, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(d), method, str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000, 16000, 32000])
    ap.add_argument("--full-max", type=int, default=16000, help="largest N for the full-matrix baseline")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "retrieval_metrics.json")
    args = ap.parse_args(argv)

    from unimlip_kit.utils.io import run_metadata, save_json

    rows = []
    for n in args.sizes:
        for method in ("chunked", "full_matrix"):
            if method == "full_matrix" and n > args.full_max:
                continue
            r = run_one(n, args.dim, method, args.threads)
            print(f"N={n:>7} {method:<12} {r['seconds']:8.2f}s  +{r['extra_peak_mib']:9.1f} MiB  R@1={r['R@1']}")
            rows.append(r)
    for n in args.sizes:  # both methods must agree where both ran
        pair = [r["R@1"] for r in rows if r["n"] == n]
        if len(pair) == 2 and max(abs(x - y) for x, y in zip(*pair)) > 1e-6:
            raise SystemExit(f"chunked and full-matrix R@1 differ at N={n}: {pair}")
    result = {"benchmark": "retrieval_metrics", "dim": args.dim, "threads": args.threads, "rows": rows,
              "metadata": run_metadata()}
    save_json(args.out, result)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, style in (("chunked", "o-"), ("full_matrix", "s--")):
        pts = [r for r in rows if r["method"] == method]
        axes[0].plot([r["n"] for r in pts], [max(r["extra_peak_mib"], 0.1) for r in pts], style, label=method)
        axes[1].plot([r["n"] for r in pts], [r["seconds"] for r in pts], style, label=method)
    for ax, title in zip(axes, ("extra peak RSS (MiB)", "time (s)")):
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("N images = N texts"), ax.set_title(title)
        ax.legend()
    fig.suptitle(f"retrieval_metrics vs full N×N matrix, D={args.dim}, {result['metadata']['device']}")
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=110)
    return result


if __name__ == "__main__":
    main()
