"""Training throughput of the default Uni-Mlip recipe (tiny config, CPU), with and without FLIP token keeping.

One full training step exactly as ``recipes/uni_mlip_roco.py`` runs it — laterality-aware flip, two
medical-augmented views, caption augmentation, tokenisation, the forward passes of every term,
``UniMlipLoss``, backward, gradient clipping and the AdamW step — on batches of the synthetic benchmark.
The feature-level image view keeps ``image_keep_ratio`` of the 64 patches (1.0 = no token dropping).

Reported per configuration: pairs/s from wall time (median step), and pairs per CPU-second from the
process CPU time, which is steadier on a shared machine; the load average at the start and end of each
worker is recorded so that numbers taken under contention can be recognised.

    python benchmarks/bench_train_throughput.py               # keep ratios 1.0, 0.5, 0.25; 1 and 2 threads
    python benchmarks/bench_train_throughput.py --quick       # fewer steps

Writes ``benchmarks/results/train_throughput.json`` and ``train_throughput.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, print_table, run_worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import dataclasses
    import importlib.util

    torch.set_num_threads(cfg["threads"])
    spec = importlib.util.spec_from_file_location("uni_mlip_roco", ROOT / "recipes" / "uni_mlip_roco.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe
    spec.loader.exec_module(recipe)
    from unimlip_kit.data import ImageTextDataset, SkipCounter, build_dataloader
    from unimlip_kit.losses import UniMlipLoss
    from unimlip_kit.models import UniMlipModel
    from unimlip_kit.text import train_wordpiece_tokenizer

    rc, _ = recipe.parse_args(["--no-progress", f"model.image_keep_ratio={cfg['keep_ratio']}"])
    recs = recipe.load_records(rc, "train", SkipCounter(), None)
    tok = train_wordpiece_tokenizer([r.caption for r in recs], vocab_size=rc.wordpiece_vocab)
    rc.model = dataclasses.replace(rc.model, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                   mask_token_id=tok.mask_token_id, special_token_ids=sorted(set(tok.all_special_ids)))
    loader = build_dataloader(ImageTextDataset(recs, image_size=rc.model.image_size), rc.train.batch_size, drop_last=True)
    maker = recipe.BatchMaker(rc, tok, torch.device("cpu"))
    torch.manual_seed(0)
    model = UniMlipModel(rc.model).train()
    loss_fn = UniMlipLoss(rc.loss.weights)
    opt = torch.optim.AdamW(model.parameters(), lr=rc.train.lr)
    gen = torch.Generator().manual_seed(0)
    it = iter(loader)
    wall, cpu = [], []
    load0 = os.getloadavg()[0]
    for step in range(cfg["warmup"] + cfg["steps"]):
        raw = next(it)
        t0, c0 = time.perf_counter(), time.process_time()
        batch = maker(raw, step, 0, 0)
        total, _ = loss_fn(model(batch, loss_fn.enabled_terms, generator=gen))
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), rc.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= cfg["warmup"]:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    b = rc.train.batch_size
    return {
        **cfg,
        "batch_size": b,
        "seconds_median": statistics.median(wall),
        "cpu_seconds_median": statistics.median(cpu),
        "pairs_per_s": b / statistics.median(wall),
        "pairs_per_cpu_s": b / statistics.median(cpu),
        "load_avg_start": load0,
        "load_avg_end": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    from unimlip_kit.utils import run_metadata, save_json

    steps, warmup = (4, 1) if args.quick else (12, 2)
    rows = []
    for threads in args.threads:
        for keep in args.keep:
            row = run_worker(__file__, {"keep_ratio": keep, "threads": threads, "steps": steps, "warmup": warmup})
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows, [("threads", "threads"), ("keep_ratio", "keep"), ("pairs_per_s", "pairs/s"),
                       ("pairs_per_cpu_s", "pairs/CPU-s"), ("load_avg_start", "load")])
    out = {"benchmark": "train_throughput", "meta": run_metadata(), "rows": rows,
           "notes": "tiny default recipe config, full objective, batch 32, image 64 px / patch 8 (64 patches); "
                    "keep_ratio is the FLIP fraction of patches kept in the feature-level image view"}
    save_json(RESULTS / "train_throughput.json", out)
    _chart(rows, RESULTS / "train_throughput.png")
    print(f"wrote {RESULTS / 'train_throughput.json'}")


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
    fig.suptitle("Uni-Mlip tiny recipe: training throughput on CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
