"""Synthetic benchmark: generation and loading throughput, and learnability with a tiny dual encoder.

    python benchmarks/bench_synthetic.py            # default config (2000/200/500 pairs, 64 px, 200 steps)
    python benchmarks/bench_synthetic.py --steps 300 --n-train 1000
    # the ITC-only CNN probe on the recipe's split, for the recipe's training wall time (README comparison)
    python benchmarks/bench_synthetic.py --n-validation 100 --n-test 300 --steps 100000 --max-seconds 200 \
        --out benchmarks/results/cnn_probe_vs_recipe.json

Writes ``benchmarks/results/synthetic.json`` (with ``run_metadata()``) and
``synthetic.png`` (ITC loss and test Recall@1 against steps).

Learnability: a 4-layer CNN image encoder and a 2-layer transformer text
encoder over a WordPiece vocabulary learnt from the training captions, trained
with CLIP's ITC only (``unimlip_kit.losses.image_text_contrastive_loss``), no
augmentation, then image<->text retrieval on the held-out test split
(``unimlip_kit.eval.retrieval_metrics``). Reported beside chance (1/N) and the
ceiling for this data: pairs with the same attribute signature are paraphrases,
so even a perfect model ranks a query's true partner first among its g
equivalents only 1/g of the time (``ceiling_R@1 = mean 1/g``).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import RESULTS  # noqa: E402

from unimlip_kit.data import ImageTextDataset, SyntheticConfig, build_dataloader, build_synthetic_dataset, read_roco
from unimlip_kit.eval import meaning_level_metrics, retrieval_metrics
from unimlip_kit.losses import image_text_contrastive_loss
from unimlip_kit.text.wordpiece import train_wordpiece_tokenizer
from unimlip_kit.utils import run_metadata, save_json, seed_everything


class TinyImageEncoder(nn.Module):
    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        chans = [1, 32, 64, 96, 128]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.GELU()]
        self.net = nn.Sequential(*layers)
        self.proj = nn.Linear(chans[-1] * 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x * 2 - 1)
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return F.normalize(self.proj(pooled), dim=-1)


class TinyTextEncoder(nn.Module):
    def __init__(self, vocab: int, dim: int = 128, width: int = 128, max_len: int = 48) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(max_len, width))
        layer = nn.TransformerEncoderLayer(width, 4, width * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)
        self.proj = nn.Linear(width, dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.tok(ids) + self.pos[: ids.shape[1]]
        h = self.enc(h, src_key_padding_mask=mask == 0)
        m = mask.unsqueeze(-1).float()
        return F.normalize(self.proj((h * m).sum(1) / m.sum(1)), dim=-1)


@torch.no_grad()
def evaluate(img_enc, txt_enc, tok, loader) -> dict:
    img_enc.eval(), txt_enc.eval()
    ie, te = [], []
    for b in loader:
        t = tok(b["captions"], padding=True, truncation=True, max_length=48, return_tensors="pt")
        ie.append(img_enc(b["images"]))
        te.append(txt_enc(t["input_ids"], t["attention_mask"]))
    img_enc.train(), txt_enc.train()
    ie, te = torch.cat(ie), torch.cat(te)
    return {**retrieval_metrics(ie, te), "_image_emb": ie, "_text_emb": te}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-validation", type=int, default=200)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--max-seconds", type=float, default=None, help="stop training after this much wall time")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "synthetic.json"))
    args = p.parse_args(argv)
    seed_everything(args.seed)
    cfg = SyntheticConfig(n_train=args.n_train, n_validation=args.n_validation, n_test=args.n_test, image_size=args.image_size, seed=args.seed)

    cache = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    root = build_synthetic_dataset(cfg, cache)
    gen_s = time.perf_counter() - t0
    n_images = cfg.n_train + cfg.n_validation + cfg.n_test
    t0 = time.perf_counter()
    build_synthetic_dataset(cfg, cache)
    reuse_s = time.perf_counter() - t0

    train = ImageTextDataset(read_roco(root, "train"), image_size=args.image_size)
    test_recs = read_roco(root, "test")
    test = ImageTextDataset(test_recs, image_size=args.image_size)
    t0 = time.perf_counter()
    n_loaded = sum(len(b["ids"]) for b in build_dataloader(train, 128, shuffle=False))
    load_s = time.perf_counter() - t0

    tok = train_wordpiece_tokenizer([r.caption for r in train.records], vocab_size=1000)
    img_enc, txt_enc = TinyImageEncoder(), TinyTextEncoder(len(tok))
    log_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), CLIP's init
    params = list(img_enc.parameters()) + list(txt_enc.parameters()) + [log_scale]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    if args.max_seconds is None:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.1)
    else:  # the same one-cycle shape over the fraction of the wall-time budget spent training
        budget = {"spent": 0.0}

        def one_cycle(_step: int) -> float:
            p = min(1.0, budget["spent"] / args.max_seconds)
            return max(p / 0.1, 0.04) if p < 0.1 else 0.5 * (1 + math.cos(math.pi * (p - 0.1) / 0.9)) + 1e-4

        sched = torch.optim.lr_scheduler.LambdaLR(opt, one_cycle)
    loader = build_dataloader(train, args.batch_size, seed=args.seed, drop_last=True)
    test_loader = build_dataloader(test, 256, shuffle=False)

    curve, evals, step, epoch = [], [], 0, 0
    t_train, eval_s = time.perf_counter(), 0.0
    while step < args.steps:
        loader.sampler.set_epoch(epoch)
        for b in loader:
            t = tok(b["captions"], padding=True, truncation=True, max_length=48, return_tensors="pt")
            loss = image_text_contrastive_loss(
                img_enc(b["images"]), txt_enc(t["input_ids"], t["attention_mask"]), log_scale.exp().clamp(max=100)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            curve.append((step, float(loss.detach())))
            if args.max_seconds is not None:
                budget["spent"] = time.perf_counter() - t_train - eval_s
            if step % args.eval_every == 0:
                t_e = time.perf_counter()
                m = evaluate(img_enc, txt_enc, tok, test_loader)
                m.pop("_image_emb"), m.pop("_text_emb")
                eval_s += time.perf_counter() - t_e
                evals.append((step, m["i2t"]["R@1"], m["t2i"]["R@1"]))
                print(f"step {step:5d}  loss {float(loss.detach()):.3f}  i2t R@1 {m['i2t']['R@1']:.3f}  t2i R@1 {m['t2i']['R@1']:.3f}", flush=True)
            if args.max_seconds is not None and time.perf_counter() - t_train - eval_s >= args.max_seconds:
                args.steps = step  # the wall-time budget ends the run
            if step >= args.steps:
                break
        epoch += 1
    train_s = time.perf_counter() - t_train - eval_s  # training only (the periodic evaluations excluded)

    final = evaluate(img_enc, txt_enc, tok, test_loader)
    final.update(meaning_level_metrics(final.pop("_image_emb"), final.pop("_text_emb"), [r.group for r in test_recs]))
    n_test = len(test_recs)
    groups = Counter(r.group for r in test_recs)
    ceiling = sum(1 / groups[r.group] for r in test_recs) / n_test
    result = {
        "metadata": {**run_metadata(), "load_average_at_end": os.getloadavg()},
        "config": {**vars(args), "synthetic": cfg.__dict__},
        "generation": {"images": n_images, "seconds": gen_s, "images_per_s": n_images / gen_s, "cache_reuse_seconds": reuse_s},
        "loading": {"pairs": n_loaded, "seconds": load_s, "pairs_per_s": n_loaded / load_s},
        "learnability": {
            "steps": args.steps,
            "train_seconds": train_s,
            "retrieval": final,
            "chance_R@1": 1 / n_test,
            "ceiling_R@1": ceiling,
            "distinct_meanings_in_test": len(groups),
            "i2t_R@1_over_chance": final["i2t"]["R@1"] * n_test,
            "t2i_R@1_over_chance": final["t2i"]["R@1"] * n_test,
            "curve": curve,
            "evals": evals,
        },
    }
    out = Path(args.out)
    save_json(out, result)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
        a1.plot([c[0] for c in curve], [c[1] for c in curve], lw=0.8)
        a1.set(xlabel="step", ylabel="ITC loss", title="tiny dual encoder on synthetic train")
        a2.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="image→text")
        a2.plot([e[0] for e in evals], [e[2] for e in evals], "s-", label="text→image")
        a2.axhline(1 / n_test, color="grey", ls=":", label="chance")
        a2.axhline(ceiling, color="k", ls="--", label="ceiling (paraphrase groups)")
        a2.set(xlabel="step", ylabel=f"test R@1 (N={n_test})", title="held-out retrieval")
        a2.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=110)
    except ImportError:
        pass
    print(
        f"generation {n_images / gen_s:.0f} img/s | loading {n_loaded / load_s:.0f} pairs/s | "
        f"test R@1 i2t {final['i2t']['R@1']:.3f} t2i {final['t2i']['R@1']:.3f} "
        f"(chance {1 / n_test:.4f}, ceiling {ceiling:.3f}) after {args.steps} steps in {train_s:.0f}s"
    )
    return result


if __name__ == "__main__":
    main()
