"""Command line for the data package.

    python -m unimlip_kit.data synthetic --cache-dir /tmp/syn --preview syn.png   # build (or reuse), print a summary
    python -m unimlip_kit.data check /path/to/roco --split train --verify          # read a ROCO folder, report skips
    python -m unimlip_kit.data check pairs.csv --image-column file --caption-column text
    python -m unimlip_kit.data check scans/ --label-column folder --verify              # images + .txt captions
    python -m unimlip_kit.data shards --from roco /path/to/roco --split train --out /data/shards --max-per-shard 1000
    python -m unimlip_kit.data shards --from csv pairs.csv --out shards/ --image-column file --caption-column text
    python -m unimlip_kit.data shards --from synthetic --n-train 2000 --out shards/   # builds (or reuses) the benchmark
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from unimlip_kit.data.records import ImageTextRecord
from unimlip_kit.data.roco import ROCO_SPLITS, read_roco
from unimlip_kit.data.shards import write_shards
from unimlip_kit.data.skips import SkipCounter
from unimlip_kit.data.synthetic import SyntheticConfig, build_synthetic_dataset
from unimlip_kit.data.sources import read_source
from unimlip_kit.data.tabular import read_csv_pairs, read_jsonl_pairs
from unimlip_kit.data.verify import verify_records


def _summary(records: list[ImageTextRecord], skips: SkipCounter) -> dict:
    return {
        "pairs": len(records),
        "skipped": skips.to_dict(),
        "modality": dict(sorted(Counter(r.modality for r in records).items())),
        "labelled": sum(r.label >= 0 for r in records),
        "examples": [[r.id, r.caption] for r in records[:3]],
    }


def _preview(records: list[ImageTextRecord], path: Path, n: int = 16, size: int = 96) -> None:
    import numpy as np
    from PIL import Image

    from unimlip_kit.data.decode import load_image

    tiles = [(load_image(r.image_path, size=size)[0].numpy() * 255).astype(np.uint8) for r in records[:n]]
    cols = 4
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.zeros((rows * size, cols * size), dtype=np.uint8)
    for k, t in enumerate(tiles):
        sheet[(k // cols) * size : (k // cols + 1) * size, (k % cols) * size : (k % cols + 1) * size] = t
    Image.fromarray(sheet).save(path)
    path.with_suffix(".txt").write_text("".join(f"{i}: {r.caption}\n" for i, r in enumerate(records[:n])), encoding="utf-8")


def _shards(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``shards`` sub-command: read the source with its reader (skips counted), write the shards, print a summary."""
    skips = SkipCounter()
    if args.max_per_shard < 1:
        p.error(f"--max-per-shard must be >= 1, got {args.max_per_shard}")
    if (args.kind == "synthetic") != (args.path is None):
        p.error("--from synthetic takes no path" if args.path is not None else f"--from {args.kind} needs a path")
    columns = {f"{c}_column": getattr(args, f"{c}_column") for c in ("image", "caption", "id", "label", "modality", "group")}
    try:
        if args.kind == "synthetic":
            cfg = SyntheticConfig(args.n_train, args.n_validation, args.n_test, args.image_size, args.seed)
            root = build_synthetic_dataset(cfg, args.cache_dir, progress=not args.no_progress)
            records, prefix = read_roco(root, args.split, skips=skips), f"synthetic-{args.split}"
            source = f"synthetic benchmark {root} ({args.split})"
        elif args.kind == "roco":
            records, prefix = read_roco(args.path, args.split, skips=skips), f"roco-{args.split}"
            source = f"ROCO {args.path} ({args.split})"
        else:
            reader = read_csv_pairs if args.kind == "csv" else read_jsonl_pairs
            records = reader(args.path, image_root=args.image_root, skips=skips, **columns)
            prefix, source = args.path.stem, f"{args.kind} {args.path}"
        if args.verify:
            records = verify_records(records, skips, progress=not args.no_progress)
        shards = write_shards(records, args.out, max_per_shard=args.max_per_shard, prefix=args.prefix or prefix,
                              skips=skips, progress=not args.no_progress, overwrite=args.overwrite, source=source)
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # a wrong column, folder or prefix: one line
        p.error(str(err))
    print(json.dumps({"out": str(args.out), "shards": len(shards), "samples": sum(s.samples for s in shards),
                      "skipped": skips.to_dict()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m unimlip_kit.data", description="Build or check image–caption data.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synthetic", help="build (or reuse) the synthetic benchmark")
    for name, default in (("n-train", 2000), ("n-validation", 200), ("n-test", 500), ("image-size", 64), ("seed", 0)):
        s.add_argument(f"--{name}", type=int, default=default)
    s.add_argument("--cache-dir", default=None)
    s.add_argument("--preview", type=Path, default=None, help="write a contact sheet PNG (+ .txt captions)")
    c = sub.add_parser("check", help="read a table, an image folder or a ROCO folder and report what would be skipped")
    c.add_argument("path", type=Path)
    c.add_argument("--split", default="train", choices=ROCO_SPLITS)
    c.add_argument("--image-column", default="image")
    c.add_argument("--caption-column", default="caption")
    c.add_argument("--label-column", default=None, help="a table's class column, or 'folder' (class sub-folders)")
    c.add_argument("--verify", action="store_true", help="also decode every image")
    c.add_argument("--preview", type=Path, default=None)
    w = sub.add_parser("shards", help="write ROCO, a CSV/JSONL table or the synthetic benchmark as WebDataset tar shards")
    w.add_argument("path", type=Path, nargs="?", help="ROCO folder or table (not for --from synthetic)")
    w.add_argument("--from", dest="kind", required=True, choices=("roco", "csv", "jsonl", "synthetic"))
    w.add_argument("--out", type=Path, required=True, help="folder for <prefix>-000000.tar, ... and index.json")
    w.add_argument("--max-per-shard", type=int, default=1000)
    w.add_argument("--prefix", default=None, help="shard name prefix (default: roco-<split>, synthetic-<split>, table stem)")
    w.add_argument("--split", default="train", choices=ROCO_SPLITS)
    for col in ("image", "caption"):
        w.add_argument(f"--{col}-column", default=col)
    for col in ("id", "label", "modality", "group"):
        w.add_argument(f"--{col}-column", default=None)
    w.add_argument("--image-root", type=Path, default=None, help="table image paths are relative to this (default: the table's folder)")
    for name, default in (("n-train", 2000), ("n-validation", 200), ("n-test", 500), ("image-size", 64), ("seed", 0)):
        w.add_argument(f"--{name}", type=int, default=default, help="--from synthetic")
    w.add_argument("--cache-dir", default=None, help="--from synthetic: where the benchmark is built")
    w.add_argument("--verify", action="store_true", help="decode every image first; undecodable ones are counted, not written")
    w.add_argument("--overwrite", action="store_true", help="replace shards with the same prefix in --out")
    w.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "shards":
        return _shards(p, args)

    skips = SkipCounter()
    if args.cmd == "synthetic":
        cfg = SyntheticConfig(args.n_train, args.n_validation, args.n_test, args.image_size, args.seed)
        root = build_synthetic_dataset(cfg, args.cache_dir, progress=True)
        records = read_roco(root, "train", skips=skips)
        print(f"synthetic dataset at {root}")
    else:
        try:  # a table, an image folder with .txt captions or a ROCO folder (unimlip_kit.data.source_kind)
            records = read_source(args.path, split=args.split, image_column=args.image_column,
                                  caption_column=args.caption_column, label_column=args.label_column, skips=skips)
        except (ValueError, FileNotFoundError) as err:  # a wrong column name, encoding or folder: say it, no traceback
            p.error(str(err))
        if args.verify:
            records = verify_records(records, skips, progress=True)
    print(json.dumps(_summary(records, skips), indent=2))
    if args.preview is not None and records:
        _preview(records, args.preview)
        print(f"preview written to {args.preview}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
