"""Training throughput of the default Uni-Mlip recipe (CPU), with and without FLIP token keeping.

One full optimizer step exactly as ``recipes/uni_mlip_roco.py`` runs it, because it is the same call:
:func:`unimlip_kit.train.train_step` (re-seeding of every stream, laterality-aware flip, two
medical-augmented views, caption augmentation, tokenisation, the forward passes of every term under the
recipe's autocast setting, ``UniMlipLoss``, backward, gradient clipping, AdamW over the recipe's parameter
groups and betas, the warm-up + cosine schedule) on batches of the synthetic benchmark.
The feature-level image view keeps ``image_keep_ratio`` of the image tokens (1.0 = no token dropping): a
ViT drops them before its encoder; a CNN tower computes the whole feature map and keeps those positions.

Reported per configuration: pairs/s from wall time (median step), and pairs per CPU-second from the
process CPU time, which is steadier on a shared machine; the load average at the start and end of each
worker is recorded so that numbers taken under contention can be recognised.

    python benchmarks/bench_train_throughput.py               # keep ratios 1.0, 0.5, 0.25; 1 and 2 threads
    python benchmarks/bench_train_throughput.py --quick       # fewer steps
    python benchmarks/bench_train_throughput.py --config recipes/configs/tiny.yaml --quick --keep 1.0 --threads 1

Writes ``train_throughput.json`` and ``train_throughput.png`` to ``benchmarks/results/local/`` (or ``--out``;
``UNIMLIP_BENCH_RESULTS=committed`` writes the committed ``benchmarks/results/``, see ``common.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from common import RESULTS, print_table, run_worker

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "recipes" / "configs" / "default.yaml"


def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import dataclasses

    from unimlip_kit.data import ImageTextDataset, SkipCounter, StepStream, build_dataloader
    from unimlip_kit.losses import UniMlipLoss
    from unimlip_kit.text import train_wordpiece_tokenizer
    from unimlip_kit.train import (BatchMaker, TrainParts, build_optimizer, build_run_model, load_recipe_config,
                                   load_records, train_step, use_bf16)
    from unimlip_kit.utils import derive_seed

    torch.set_num_threads(cfg["threads"])
    rc = load_recipe_config(cfg["config"], ["progress=false", f"model.image_keep_ratio={cfg['keep_ratio']}"])
    device = torch.device("cpu")
    recs = load_records(rc, rc.data.train_split, SkipCounter(), rc.data.limit_train)
    tok = train_wordpiece_tokenizer([r.caption for r in recs], vocab_size=rc.wordpiece_vocab)
    rc.model = dataclasses.replace(rc.model, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                   mask_token_id=tok.mask_token_id, special_token_ids=sorted(set(tok.all_special_ids)))
    ds = ImageTextDataset(recs, image_size=rc.model.image_size, channels=rc.model.image_channels)
    stream = StepStream(build_dataloader(ds, rc.train.batch_size, seed=rc.seed, drop_last=True))
    torch.manual_seed(derive_seed(rc.seed, "init"))
    model = build_run_model(rc.model).to(device).train()
    loss_fn = UniMlipLoss(rc.loss.weights, image_ssl=rc.loss.image_ssl, image_temperature=rc.loss.image_temperature,
                          text_temperature=rc.loss.text_temperature)
    opt, sched = build_optimizer(model, rc.train)
    parts = TrainParts(model, loss_fn, BatchMaker(rc, tok, device), opt, sched, seed=rc.seed, device=device,
                       grad_accum=rc.train.grad_accum, grad_clip=rc.train.grad_clip, bf16=use_bf16(rc.train.amp, device))
    batches = [stream.next() for _ in range((cfg["warmup"] + cfg["steps"]) * rc.train.grad_accum)]  # decode untimed
    feed = iter(batches)
    wall, cpu, pairs = [], [], []
    load0 = os.getloadavg()[0]
    for step in range(cfg["warmup"] + cfg["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        out = train_step(parts, step, lambda: next(feed))
        if step >= cfg["warmup"]:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            pairs.append(out.pairs)
    b = statistics.median(pairs)
    return {
        **cfg,
        "batch_size": rc.train.batch_size,
        "grad_accum": rc.train.grad_accum,
        "seconds_median": statistics.median(wall),
        "cpu_seconds_median": statistics.median(cpu),
        "pairs_per_s": b / statistics.median(wall),
        "pairs_per_cpu_s": b / statistics.median(cpu),
        "final_loss": out.losses.get("total"),
        "load_avg_start": load0,
        "load_avg_end": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the recipe config to time (default: default.yaml)")
    p.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json", help="JSON path (PNG beside it)")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    from unimlip_kit.utils import run_metadata, save_json

    steps, warmup = (4, 1) if args.quick else (12, 2)
    rows = []
    for threads in args.threads:
        for keep in args.keep:
            row = run_worker(__file__, {"keep_ratio": keep, "threads": threads, "steps": steps, "warmup": warmup,
                                        "config": str(args.config)})
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows, [("threads", "threads"), ("keep_ratio", "keep"), ("pairs_per_s", "pairs/s"),
                       ("pairs_per_cpu_s", "pairs/CPU-s"), ("load_avg_start", "load")])
    out = {"benchmark": "train_throughput", "meta": run_metadata(), "rows": rows, "config": str(args.config),
           "notes": "one unimlip_kit.train.train_step per timed step (the recipe's own step), full objective; "
                    "keep_ratio is the FLIP fraction of patches kept in the feature-level image view"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_json(args.out, out)
    if any("error" not in r for r in rows):
        _chart(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


def _chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for threads in sorted({r["threads"] for r in ok}):
        sel = sorted((r for r in ok if r["threads"] == threads), key=lambda r: r["keep_ratio"])
        for ax, key in zip(axes, ("pairs_per_s", "pairs_per_cpu_s")):
            ax.plot([r["keep_ratio"] for r in sel], [r[key] for r in sel], "o-", label=f"{threads} thread(s)")
    for ax, title in zip(axes, ("pairs/s (wall)", "pairs per CPU-second")):
        ax.set_xlabel("image keep ratio (feature-level view)"), ax.set_title(title), ax.legend()
    fig.suptitle(f"Uni-Mlip recipe ({Path(rows[0]['config']).name}): training throughput on CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
