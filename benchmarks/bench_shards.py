"""Loading throughput of WebDataset shards against the folder reader, on the synthetic benchmark.

    OMP_NUM_THREADS=1 python benchmarks/bench_shards.py       # 1024 pairs at 64 px and 256 at 224 px (JPEG), batch 64
    python benchmarks/bench_shards.py --sets 4096:224 --workers 0 2 --repeats 5

Both readers decode the same JPEG bytes with ``load_image`` to (1, size, size) and collate with
``ImageTextCollate``: the folder reader is ``ImageTextDataset`` + ``build_dataloader`` (shuffled
``EpochSampler``), the shard reader ``open_shards`` (shards shuffled, 8 streams, 256-sample buffers).
One epoch per round, the readers alternating within a round so a change in machine load hits both;
images/s = pairs / median seconds. Also measured: converting records to shards (pairs/s), the cost of
an exact mid-epoch resume (time to the first batch at ``start = N/2`` against ``start = 0``: the
skipped half is parsed, not decoded; beside it the time decoding that half would take), and the per-sample cost of the temporary file through which the
shard reader hands member bytes to ``load_image``. Writes ``benchmarks/results/shards_cpu.json`` (with
``run_metadata()``) and ``shards_cpu.png``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import RESULTS, print_table  # the script's folder is on sys.path

from unimlip_kit.data import (ImageTextDataset, SyntheticConfig, build_dataloader, build_synthetic_dataset,  # noqa: E402
                              open_shards, read_roco, write_shards)
from unimlip_kit.data.shards import _scratch_dir  # noqa: E402
from unimlip_kit.utils.io import run_metadata, save_json  # noqa: E402


def _epoch(loader) -> tuple[float, int]:
    loader.sampler.set_epoch(1)
    t0 = time.perf_counter()
    n = sum(len(b["ids"]) for b in loader)
    return time.perf_counter() - t0, n


def _first_batch(loader, start: int) -> float:
    loader.set_epoch(1, start=start)
    t0 = time.perf_counter()
    next(iter(loader))
    return time.perf_counter() - t0


def run_set(n: int, size: int, args: argparse.Namespace, tmp: Path) -> dict:
    """Build ``n`` synthetic pairs at ``size`` px, convert them, time both readers, the resume and the temp file."""
    cfg = SyntheticConfig(n_train=n, n_validation=0, n_test=0, image_size=size)
    root = build_synthetic_dataset(cfg, args.cache_dir or tmp / "cache")
    records = read_roco(root, "train")
    out_dir = tmp / f"shards-{n}-{size}"
    t0 = time.perf_counter()
    shards = write_shards(records, out_dir, max_per_shard=args.per_shard, prefix="syn")
    convert_s = time.perf_counter() - t0

    rows, seconds = [], {}
    for _ in range(args.repeats):
        for w in args.workers:
            folder = build_dataloader(ImageTextDataset(records, image_size=size), args.batch, seed=0, num_workers=w)
            shard = open_shards(out_dir, args.batch, image_size=size, seed=0, num_workers=w)
            for name, loader in (("folder", folder), ("shards", shard)):
                s, got = _epoch(loader)
                assert got == len(records), (name, got)
                seconds.setdefault((name, w), []).append(s)
    for (name, w), ts in seconds.items():
        rows.append({"pairs": n, "size": size, "reader": name, "workers": w, "seconds_median": statistics.median(ts),
                     "seconds_all": ts, "images_per_s": n / statistics.median(ts)})
    for w in args.workers:
        f = next(r for r in rows if r["reader"] == "folder" and r["workers"] == w)
        s = next(r for r in rows if r["reader"] == "shards" and r["workers"] == w)
        s["vs_folder"] = s["images_per_s"] / f["images_per_s"]

    loader = open_shards(out_dir, args.batch, image_size=size, seed=0)
    half = (n // 2 // args.batch) * args.batch
    first = [(_first_batch(loader, 0), _first_batch(loader, half)) for _ in range(args.repeats)]
    shard_rate = next(r for r in rows if r["reader"] == "shards" and r["workers"] == args.workers[0])["images_per_s"]
    resume = {"pairs": n, "size": size, "start": half,
              "first_batch_s_at_0": statistics.median(a for a, _ in first),
              "first_batch_s_at_start": statistics.median(b for _, b in first),
              "decoding_the_skipped_samples_s": half / shard_rate}

    data = records[0].image_path.read_bytes()
    t0 = time.perf_counter()
    for _ in range(1000):
        with tempfile.NamedTemporaryFile(suffix=".jpg", dir=_scratch_dir()) as fh:
            fh.write(data)
            fh.flush()
    scratch = {"pairs": n, "size": size, "us_per_sample": (time.perf_counter() - t0) * 1e3, "image_bytes": len(data)}
    conversion = {"pairs": n, "size": size, "shards": len(shards), "seconds": convert_s, "pairs_per_s": n / convert_s,
                  "bytes": sum(Path(x.path).stat().st_size for x in shards)}
    return {"rows": rows, "resume": resume, "scratch_file": scratch, "conversion": conversion}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["1024:64", "256:224"], help="PAIRS:SIZE of the synthetic benchmark")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--per-shard", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-dir", default=None, help="where the synthetic benchmark is built (default: a temp dir)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    parts, load_before = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.sets:
            n, size = (int(v) for v in spec.split(":"))
            parts.append(run_set(n, size, args, Path(tmp)))
    rows = [r for p in parts for r in p["rows"]]
    out = {
        "benchmark": "shards",
        "config": vars(args),
        "rows": rows,
        "conversion": [p["conversion"] for p in parts],
        "resume": [p["resume"] for p in parts],
        "scratch_file": {"dir": _scratch_dir(), "sets": [p["scratch_file"] for p in parts]},
        "load_1min_before": load_before,
        "load_1min_after": os.getloadavg()[0],
        "metadata": run_metadata(),
    }
    print_table(rows, [("pairs", "pairs"), ("size", "px"), ("reader", "reader"), ("workers", "workers"),
                       ("images_per_s", "images/s"), ("seconds_median", "s/epoch"), ("vs_folder", "vs folder")])
    for p in parts:
        c, r, t = p["conversion"], p["resume"], p["scratch_file"]
        print(f"{c['pairs']} x {c['size']} px: convert {c['pairs_per_s']:.0f} pairs/s; resume at {r['start']}: first batch "
              f"{r['first_batch_s_at_start']:.3f} s vs {r['first_batch_s_at_0']:.3f} s at 0 (decoding the skipped "
              f"samples: {r['decoding_the_skipped_samples_s']:.3f} s); temp file {t['us_per_sample']:.0f} us/sample")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = save_json(RESULTS / f"shards_cpu{args.tag}.json", out)
    chart(rows, RESULTS / f"shards_cpu{args.tag}.png")
    print(f"wrote {path}")
    return out


def chart(rows: list[dict], path: Path) -> None:
    """Bars of images/s per data set, reader and worker count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.8))
    labels = [f"{r['reader']}, {r['workers']} w\n{r['pairs']} x {r['size']} px" for r in rows]
    bars = ax.bar(labels, [r["images_per_s"] for r in rows],
                  color=["#4c72b0" if r["reader"] == "folder" else "#dd8452" for r in rows])
    for b, r in zip(bars, rows):
        ax.annotate(f"{r['images_per_s']:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom")
    ax.set_ylabel("images/s (one epoch, median)")
    ax.set_title("loading synthetic JPEG pairs: folder reader vs tar shards (1 thread)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
