"""ALBEF hard-negative sampling: time and extra peak memory, tiled Gumbel-max vs the N×N softmax.

    python benchmarks/bench_hard_negatives.py                          # CPU, N = 1024 … 8192, D = 256
    python benchmarks/bench_hard_negatives.py --sizes 1024 2048 --repeats 2
    python benchmarks/bench_hard_negatives.py --device cuda --dtype bfloat16 --sizes 8192 32768 65536

Backends: ``reference`` is ALBEF's sampler (N×N similarity, masked softmax, then
``torch.multinomial`` per direction: O(N²) memory); ``tiled`` is the pure-PyTorch
Gumbel-max over tiles (O(N·D + tile)); ``triton`` (CUDA) is the fused kernel.
Each (backend, N) runs in its own process (clean peak memory). Writes
``benchmarks/results/hard_negatives_<device>.json`` and a PNG chart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from common import RESULTS, add_ratios, plot_time_and_memory, print_table, run_sweep, time_and_memory  # noqa: E402,I001


def worker(cfg: dict) -> dict:
    from unimlip_kit.losses import sample_hard_negatives

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    dtype = getattr(torch, cfg["dtype"])
    n, d = cfg["n"], cfg["d"]
    g = torch.Generator(device=device).manual_seed(0)
    img = F.normalize(torch.randn(n, d, device=device, generator=g), dim=1).to(dtype)
    txt = F.normalize(torch.randn(n, d, device=device, generator=g), dim=1).to(dtype)
    ids = torch.randint(0, max(1, n // 2), (n,), device=device, generator=g)  # ~2 pairs per id, as in ROCO groups
    scale = torch.tensor(1 / 0.07, device=device)

    def step():
        sample_hard_negatives(img, txt, scale, ids=ids, generator=g, backend=cfg["backend"])

    res = time_and_memory(step, device, repeats=cfg["repeats"], warmup=cfg["warmup"])
    return {**cfg, **res, "extra_peak_mib": res["extra_peak_bytes"] / 2**20}


def chart(rows: list[dict], path: Path) -> None:
    labels = {"reference": "ALBEF N×N softmax + multinomial", "tiled": "tiled Gumbel-max (PyTorch)",
              "triton": "Triton Gumbel-max"}
    d = rows[0]
    plot_time_and_memory(rows, path, labels=labels, time_title="time per call (s, median)",
                         title=f"ITM hard-negative sampling (both directions), D={d['d']}, {d['dtype']}, {d['device']}")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", nargs="+", default=None,
                   help="default: reference tiled (+ triton on cuda)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/hard_negatives_<device>.json)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return []

    from unimlip_kit.utils.io import run_metadata, save_json

    backends = args.backends or (["reference", "tiled"] + (["triton"] if args.device == "cuda" else []))
    base = {"d": args.dim, "dtype": args.dtype, "device": args.device, "repeats": args.repeats,
            "warmup": args.warmup, "threads": args.threads}
    rows = run_sweep(__file__, backends, args.sizes, base)
    add_ratios(rows, "reference", "reference")
    out = args.out or RESULTS / f"hard_negatives_{args.device}.json"
    meta = run_metadata()  # includes the load average: shared machines skew timings
    save_json(out, {"benchmark": "hard_negative_sampling", "metadata": meta, "results": rows})
    chart([r for r in rows if "error" not in r] or rows, out.with_suffix(".png"))
    print_table(rows, [("backend", "backend"), ("n", "N"), ("seconds_median", "s (median)"),
                       ("extra_peak_mib", "extra MiB"), ("time_vs_reference", "time/ref"),
                       ("memory_vs_reference", "mem/ref")])
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return rows


if __name__ == "__main__":
    main()
