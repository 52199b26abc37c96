"""Gradient-cached accumulation on this CPU: peak memory and time per pair for a large effective batch.

    python benchmarks/bench_gradcache.py                       # 64 micro-batches of 64 = 4096 pairs, ITC only
    python benchmarks/bench_gradcache.py --micro 16 --micro-batch 64 --terms all
    python benchmarks/bench_gradcache.py --methods loss_only --merge   # add one method to the existing JSON

The model is the recipe's default (``UniMlipModelConfig(image_tower="resnet", image_pool="attn")``,
vocabulary 1000, 64×64 grey images, captions of ``--text-len`` tokens). Configurations, each in a
fresh process, one thread:

* ``micro``: one plain forward/backward of a single micro-batch (the memory yardstick);
* ``gradcache``: :func:`unimlip_kit.gradcache.grad_cache_step` over all micro-batches (one loss over
  all N pairs);
* ``plain``: plain accumulation (each micro-batch's loss on its own, ``/ grad_accum``, backward);
* ``loss_only``: the ITC loss forward/backward over N random embeddings (the part of ``gradcache``
  that plain accumulation does not compute: the N-pair loss itself);
* ``interleaved``: plain accumulation, gradient caching and a no-grad forward over ``--check-micro``
  micro-batches, alternated three times in one process (medians): on a shared CPU the sequential
  runs above see different loads, this ratio (of the fastest of three) much less;
* ``open_clip_accum_freq_reimpl``: a faithful re-implementation of open_clip's ``--accum-freq``
  loop (``open_clip_train/train.py::train_one_epoch``, open_clip_torch 3.3.0; not driven directly
  because ``open_clip`` imports torchvision, which this environment lacks): features of every
  micro-batch cached without a graph, then per micro-batch a forward with a graph, the cached
  features with this micro-batch's replaced, open_clip's ``ClipLoss`` on the materialised N×N
  logits, backward. Only ``--openclip-replays`` replays are run and timed; its time is extrapolated
  to all micro-batches (every replay does the same work) and marked so.

Inputs are rebuilt from a seed on each access (a lazy ``Sequence``) for every configuration, so
peak memory counts what each method allocates, not N stored images; the bytes the inputs of the
accumulated batch would take are reported beside it (open_clip keeps them: ``accum_images``).
Peak memory: ``VmHWM`` of the worker (reset through ``/proc/self/clear_refs`` after a warm-up) minus
``VmRSS`` right before the step, with glibc's mmap threshold fixed at 64 KiB so freed tensors
return to the OS and RSS follows the live allocations. Writes ``gradcache_cpu.json`` and ``.png`` into
``common.RESULTS`` (``benchmarks/results/local/``; ``UNIMLIP_BENCH_RESULTS=committed`` for ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from common import RESULTS, print_table, run_worker  # noqa: E402,I001

ALL_TERMS = ("itc", "itc_feature", "image_ssl", "text_ssl", "itm", "mlm")


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{key}:\s+(\d+)", fh.read()).group(1)) * 1024


class LazyBatches(Sequence):
    """Micro-batch ``m`` rebuilt from ``seed + m`` on each access (what a seeded loader + augmentation replays)."""

    def __init__(self, micro: int, size: int, text_len: int, vocab: int, seed: int = 0) -> None:
        self.micro, self.size, self.text_len, self.vocab, self.seed = micro, size, text_len, vocab, seed

    def __len__(self) -> int:
        return self.micro

    def __getitem__(self, m: int) -> dict[str, torch.Tensor]:
        if not 0 <= m < self.micro:
            raise IndexError(m)
        g = torch.Generator().manual_seed(self.seed + m)
        n, length = self.size, self.text_len
        ids = torch.randint(5, self.vocab, (n, length), generator=g)
        ids[:, 0] = 2
        return {"images": torch.rand(n, 1, 64, 64, generator=g), "images_view2": torch.rand(n, 1, 64, 64, generator=g),
                "input_ids": ids, "attention_mask": torch.ones(n, length, dtype=torch.long),
                "input_ids_aug": ids.flip(1).contiguous(), "attention_mask_aug": torch.ones(n, length, dtype=torch.long)}

    def input_bytes(self) -> int:
        b = self[0]
        return self.micro * sum(t.numel() * t.element_size() for t in b.values())


def _clip_loss_open_clip(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """open_clip's ``ClipLoss`` (world size 1): both N×N logit matrices materialised, symmetric cross-entropy."""
    logits_per_image = scale * image @ text.T
    logits_per_text = scale * text @ image.T
    labels = torch.arange(image.shape[0])
    return (torch.nn.functional.cross_entropy(logits_per_image, labels)
            + torch.nn.functional.cross_entropy(logits_per_text, labels)) / 2


def worker(cfg: dict) -> dict:
    from unimlip_kit.gradcache import grad_cache_step
    from unimlip_kit.losses import UniMlipLoss
    from unimlip_kit.models import UniMlipModel, UniMlipModelConfig

    torch.set_num_threads(cfg["threads"])
    terms = tuple(cfg["terms"])
    torch.manual_seed(0)
    model = UniMlipModel(UniMlipModelConfig(image_tower="resnet", image_pool="attn", vocab_size=cfg["vocab"],
                                            mask_token_id=4, special_token_ids=[0, 1, 2, 3, 4],
                                            gradient_checkpointing=cfg.get("checkpointing", False))).train()
    loss_fn = UniMlipLoss({t: (1.0 if t in terms else 0.0) for t in ALL_TERMS})
    gen = torch.Generator()
    micro = 1 if cfg["method"] == "micro" else cfg["micro"]
    batches = LazyBatches(micro, cfg["micro_batch"], cfg["text_len"], cfg["vocab"])

    # warm-up on 4 pairs (lazy kernel set-up, parameter .grad buffers), then reset the peak
    warm = LazyBatches(1, 4, cfg["text_len"], cfg["vocab"], seed=999)[0]
    total, _ = loss_fn(model(warm, terms, generator=gen))
    total.backward()
    grad_cache_step(model, loss_fn, [warm, warm], terms=terms, generator=gen)
    model.zero_grad(set_to_none=False)
    del warm, total
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status("VmRSS")

    method = cfg["method"]
    extra: dict = {}
    if method == "loss_only":  # the part gradient caching adds beyond one more forward: the loss over all N
        from unimlip_kit.losses.itc import image_text_contrastive_loss

        n, d = cfg["micro"] * cfg["micro_batch"], model.config.embed_dim
        emb = [torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(i)), dim=1)
               .requires_grad_() for i in range(2)]
        scale = model.logit_scale()
    t0 = time.perf_counter()
    if method == "interleaved":  # the same work alternated in one process: a shared CPU's load hits all alike
        small = LazyBatches(cfg["check_micro"], cfg["micro_batch"], cfg["text_len"], cfg["vocab"])

        def run_plain() -> None:
            for m in range(len(small)):
                loss_fn(model(small[m], terms, generator=gen))[0].div(len(small)).backward()

        def run_forward() -> None:
            with torch.no_grad():
                for m in range(len(small)):
                    model(small[m], terms, generator=gen)

        times: dict[str, list[float]] = {"plain": [], "gradcache": [], "forward_no_grad": []}
        fns = {"plain": run_plain, "gradcache": lambda: grad_cache_step(model, loss_fn, small, terms=terms, generator=gen),
               "forward_no_grad": run_forward}
        for _ in range(3):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        med = {k: min(v) for k, v in times.items()}  # the least-disturbed run of each (other jobs share the CPU)
        extra = {"check_pairs": len(small) * cfg["micro_batch"], "seconds_all": times, "seconds_min": med,
                 "gradcache_vs_plain": med["gradcache"] / med["plain"],
                 "plain_plus_forward_vs_plain": (med["plain"] + med["forward_no_grad"]) / med["plain"]}
    elif method == "loss_only":
        image_text_contrastive_loss(emb[0], emb[1], scale).backward()
    elif method in ("micro", "plain"):
        for m in range(len(batches)):
            total, _ = loss_fn(model(batches[m], terms, generator=gen))
            (total / len(batches)).backward()
            del total
    elif method == "gradcache":
        grad_cache_step(model, loss_fn, batches, terms=terms, generator=gen)
    elif method == "open_clip_accum_freq_reimpl":
        if terms != ("itc",):
            raise ValueError("the open_clip re-implementation covers the ITC loss only")
        feats: dict[str, list[torch.Tensor]] = {"image_emb": [], "text_emb": []}
        with torch.no_grad():  # open_clip: "cache the features without any gradient tracking"
            for m in range(len(batches)):
                out = model(batches[m], terms)
                for k in feats:
                    feats[k].append(out[k])
        t_cache = time.perf_counter() - t0
        replays = min(cfg["openclip_replays"], len(batches))
        t1 = time.perf_counter()
        for j in range(replays):  # "re-do the forward pass ... use the cached features from the other batches"
            out = model(batches[j], terms)
            inputs = {k: torch.cat(v[:j] + [out[k]] + v[j + 1:]) for k, v in feats.items()}
            loss = _clip_loss_open_clip(inputs["image_emb"], inputs["text_emb"], out["logit_scale"])
            del inputs
            loss.backward()
            del loss, out
        t_replay = (time.perf_counter() - t1) / replays
        extra = {"replays_run": replays, "seconds_cache_pass": t_cache, "seconds_per_replay": t_replay,
                 "extrapolated": replays < len(batches)}
    else:
        raise ValueError(f"unknown method {method!r}")
    seconds = time.perf_counter() - t0
    if method == "open_clip_accum_freq_reimpl":
        seconds = extra["seconds_cache_pass"] + extra["seconds_per_replay"] * len(batches)
    peak = _status("VmHWM") - base
    if method == "micro":  # the floor of gradient caching's time: 1 + forward / (forward + backward)
        b0 = batches[0]

        def best(fn) -> float:
            ts = []
            for _ in range(3):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            return min(ts)

        def fwd() -> None:
            with torch.no_grad():
                model(b0, terms, generator=gen)

        def fwd_bwd() -> None:
            loss_fn(model(b0, terms, generator=gen))[0].backward()

        extra = {"seconds_forward_no_grad": best(fwd), "seconds_forward_backward": best(fwd_bwd)}
        extra["time_floor_vs_plain"] = 1 + extra["seconds_forward_no_grad"] / extra["seconds_forward_backward"]
    pairs = (cfg["micro"] if method == "loss_only" else len(batches)) * cfg["micro_batch"]
    return {**cfg, **extra, "pairs": pairs, "seconds": seconds, "seconds_per_pair": seconds / pairs,
            "extra_peak_bytes": peak, "extra_peak_mib": peak / 2**20, "input_bytes": batches.input_bytes(),
            "embed_dim": model.config.embed_dim}


def cache_bytes(pairs: int, terms: tuple[str, ...], embed_dim: int, ssl_dim: int, text_width: int,
                predictor: bool = False) -> int:
    """float32 bytes of the embedding cache and its gradients (2 × N × Σ widths of the cached outputs)."""
    widths = 0
    if {"itc", "itm"} & set(terms):
        widths += 2 * embed_dim
    if "itc_feature" in terms:
        widths += 2 * embed_dim
    if "image_ssl" in terms:
        widths += (4 if predictor else 2) * ssl_dim
    if "text_ssl" in terms:
        widths += 2 * text_width
    return 2 * pairs * widths * 4


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r and r["method"] not in ("loss_only", "interleaved")]
    names = [r["method"] for r in ok]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(names, [r["extra_peak_mib"] for r in ok], color="tab:blue")
    ax1.set_title("extra peak memory (MiB, VmHWM)")
    ax2.bar(names, [1e3 * r["seconds_per_pair"] for r in ok], color="tab:orange")
    ax2.set_title("time per pair (ms)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--micro", type=int, default=64, help="micro-batches per optimizer step (grad_accum)")
    p.add_argument("--micro-batch", type=int, default=64)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--terms", default="itc", help="'itc' or 'all' or a comma list")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--openclip-replays", type=int, default=8)
    p.add_argument("--check-micro", type=int, default=8, help="micro-batches of the interleaved timing check")
    p.add_argument("--methods", default="micro,gradcache,plain,open_clip_accum_freq_reimpl,loss_only,interleaved")
    p.add_argument("--merge", action="store_true", help="keep the other methods' rows of an existing --out JSON")
    p.add_argument("--out", default=str(RESULTS / "gradcache_cpu.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return []

    from unimlip_kit.utils.io import run_metadata, save_json

    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # fixed threshold: freed tensors leave RSS
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "65536")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    terms = ALL_TERMS if args.terms == "all" else tuple(t for t in args.terms.split(",") if t)
    base = {"micro": args.micro, "micro_batch": args.micro_batch, "text_len": args.text_len, "vocab": args.vocab,
            "terms": list(terms), "threads": args.threads, "openclip_replays": args.openclip_replays,
            "check_micro": args.check_micro}
    rows = []
    out = Path(args.out)
    methods = args.methods.split(",")
    if args.merge and out.exists():
        rows = [r for r in json.loads(out.read_text())["results"] if r.get("method") not in methods]
    for method in methods:
        if method == "open_clip_accum_freq_reimpl" and terms != ("itc",):
            continue
        row = run_worker(__file__, {**base, "method": method})
        rows.append(row)
        print(f"  {method:28s} " + (row.get("error") or
              f"{row['seconds']:.1f}s  {1e3 * row['seconds_per_pair']:.2f} ms/pair  +{row['extra_peak_mib']:.0f} MiB"),
              flush=True)
    by = {r["method"]: r for r in rows if "error" not in r}
    n = args.micro * args.micro_batch
    summary: dict = {"pairs": n, "micro_batches": args.micro, "micro_batch": args.micro_batch, "terms": list(terms)}
    if "micro" in by:
        from unimlip_kit.models import UniMlipModelConfig

        mc = UniMlipModelConfig()
        cb = cache_bytes(n, terms, mc.embed_dim, mc.ssl_dim, mc.text_width)
        yardstick = by["micro"]["extra_peak_bytes"] + cb
        summary.update({"embedding_cache_bytes": cb, "micro_batch_peak_bytes": by["micro"]["extra_peak_bytes"],
                        "yardstick_bytes": yardstick, "input_bytes_of_accumulated_batch": by["micro"]["input_bytes"] * args.micro})
        for name in ("gradcache", "plain", "open_clip_accum_freq_reimpl"):
            if name in by:
                summary[f"memory_{name}_vs_micro_plus_cache"] = by[name]["extra_peak_bytes"] / yardstick
    if "micro" in by:
        summary["time_floor_vs_plain"] = by["micro"]["time_floor_vs_plain"]  # one more no-grad forward, measured
    for name in ("gradcache", "open_clip_accum_freq_reimpl"):
        if name in by and "plain" in by:
            summary[f"time_{name}_vs_plain"] = by[name]["seconds_per_pair"] / by["plain"]["seconds_per_pair"]
    if "loss_only" in by and "gradcache" in by and "plain" in by:
        # gradient caching less the loss over all N pairs (plain accumulation has no such loss): the replay's price
        summary["time_gradcache_without_big_batch_loss_vs_plain"] = (
            (by["gradcache"]["seconds"] - by["loss_only"]["seconds"]) / by["gradcache"]["pairs"]
            / by["plain"]["seconds_per_pair"])
    if "interleaved" in by:
        summary["interleaved_check"] = {k: by["interleaved"][k] for k in
                                        ("check_pairs", "gradcache_vs_plain", "plain_plus_forward_vs_plain")}
    summary["targets"] = {"memory_gradcache_vs_micro_plus_cache": 1.3, "time_gradcache_vs_plain": 1.4}
    print_table(rows, [("method", "method"), ("seconds", "s"), ("seconds_per_pair", "s/pair"),
                       ("extra_peak_mib", "peak MiB")])
    print(json.dumps(summary, indent=1))
    meta = run_metadata()
    save_json(out, {"benchmark": "gradcache", "metadata": meta, "summary": summary, "results": rows})
    plot(rows, out.with_suffix(".png"),
         f"{n} pairs as {args.micro} × {args.micro_batch}, terms {','.join(terms)}, {args.threads} thread(s), CPU")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
