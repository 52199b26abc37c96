"""Embed a folder of images, or a CSV of captions, with a saved model: ``python -m unimlip_kit.embed``.

::

    python -m unimlip_kit.embed --model runs/x/model --images scans/ --out image_emb.npy
    python -m unimlip_kit.embed --model runs/x/model --captions reports.csv --column caption --out text_emb.parquet

``--out`` ending in ``.npy`` writes an (N, D) float32 array plus ``<out>.ids.txt`` (one id per row,
in row order: the image's path relative to the folder, or the caption's ``--id-column`` value /
``row<k>``). ``.parquet`` writes one table with columns ``id`` and ``embedding`` (needs
``pyarrow``; without it the command stops with an error naming it before any work). Rows are unit-norm
embeddings of :func:`unimlip_kit.inference.embed_images` / :func:`~unimlip_kit.inference.embed_texts`.

Bad data is skipped and counted, never fatal: an image that cannot be decoded, an empty caption,
a malformed CSV row (the counts are printed, and the ids file lists only what was embedded).
A wrong argument (no such folder or column) is one error line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from unimlip_kit.data.decode import IMAGE_SUFFIXES, ImageDecodeError
from unimlip_kit.data.skips import SkipCounter

__all__ = ["find_images", "main", "write_embeddings"]


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Every decodable image file under ``folder`` (recursive, any case of suffix), sorted by relative path.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); (d / "b").mkdir()
        >>> for name in ("a.PNG", "b/c.nii.gz", "notes.txt"): _ = (d / name).write_bytes(b"")
        >>> [p.relative_to(d).as_posix() for p in find_images(d)]
        ['a.PNG', 'b/c.nii.gz']
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    found = [p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def write_embeddings(path: str | os.PathLike, embeddings: np.ndarray, ids: Sequence[str]) -> list[Path]:
    """Write ``embeddings`` (N, D) with their ``ids`` to ``.npy`` (+ ``.ids.txt``) or ``.parquet``; returns the files.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "e.npy"
        >>> [p.name for p in write_embeddings(out, np.eye(2, dtype=np.float32), ["a", "b"])]
        ['e.npy', 'e.npy.ids.txt']
        >>> np.load(out).shape, (out.parent / "e.npy.ids.txt").read_text().split()
        ((2, 2), ['a', 'b'])
    """
    from unimlip_kit.utils.io import atomic_write

    path = Path(path)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"embeddings must be (N, D) with N = len(ids) = {len(ids)}, got shape {emb.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)
        ids_path = path.with_name(path.name + ".ids.txt")
        atomic_write(ids_path, "".join(f"{i}\n" for i in ids))
        return [path, ids_path]
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        column = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        table = pa.table({"id": pa.array([str(i) for i in ids], pa.string()), "embedding": column})
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return [path]
    raise ValueError(f"--out must end in .npy or .parquet, got {path.name!r}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m unimlip_kit.embed", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="folder written by save_pretrained, or a hub id owner/name")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images (searched recursively)")
    src.add_argument("--captions", help="CSV/TSV file of captions")
    ap.add_argument("--column", default="caption", help="caption column of --captions (default: caption)")
    ap.add_argument("--id-column", default=None, help="id column of --captions (default: row<k>)")
    ap.add_argument("--encoding", default="utf-8", help="text encoding of --captions (default: utf-8)")
    ap.add_argument("--out", required=True, help="output file: .npy (+ .ids.txt) or .parquet")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _embed_image_folder(model, folder: str, batch_size: int, device: str, progress: bool,
                        skips: SkipCounter) -> tuple[np.ndarray, list[str]]:
    import torch
    from tqdm.auto import tqdm

    from unimlip_kit.inference import _prepare, embed_images

    root = Path(folder)
    files = find_images(root)
    pp = model.get_preprocessing()
    rows, ids = [], []
    bar = tqdm(total=len(files), desc="embed images", unit="img", disable=not progress)
    for start in range(0, len(files), batch_size):
        batch, names = [], []
        for f in files[start:start + batch_size]:
            rel = f.relative_to(root).as_posix()
            try:
                batch.append(_prepare(f, pp, rel))
                names.append(rel)
            except ImageDecodeError as err:
                skips.add(rel, err.reason, str(err))
        if batch:
            rows.append(embed_images(model, torch.stack(batch), batch_size=batch_size, device=device).numpy())
            ids += names
        bar.update(min(batch_size, len(files) - start))
    bar.close()
    dim = int(model.config.embed_dim)
    return (np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)), ids


def _embed_caption_table(model, path: str, column: str, id_column: str | None, encoding: str, batch_size: int,
                         device: str, progress: bool, skips: SkipCounter) -> tuple[np.ndarray, list[str]]:
    from unimlip_kit.data.tabular import _rows_table
    from unimlip_kit.inference import embed_texts

    table = Path(path)
    required = [column] + ([id_column] if id_column else [])
    texts, ids = [], []
    for k, row in enumerate(_rows_table(table, None, encoding, required, skips, column), start=1):
        rid = (row.get(id_column) or "").strip() if id_column else ""
        rid = rid or f"row{k}"
        caption = " ".join(str(row.get(column) or "").split())
        if not caption:
            skips.add(rid, "empty_caption")
            continue
        texts.append(caption)
        ids.append(rid)
    if not texts:
        return np.zeros((0, int(model.config.embed_dim)), np.float32), ids
    return embed_texts(model, texts, batch_size=max(batch_size, 1), device=device, progress=progress).numpy(), ids


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command (see the module docstring); returns 0, or exits with an argparse error line.

    Example:
        >>> main(["--help"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        SystemExit: 0
    """
    ap = _parser()
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".parquet"):
        ap.error(f"--out must end in .npy or .parquet, got {out.name!r}")
    if out.suffix.lower() == ".parquet":
        from unimlip_kit.utils.optional import is_available

        if not is_available("pyarrow"):
            ap.error("writing .parquet needs pyarrow (pip install pyarrow); or write --out x.npy")
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.images and not Path(args.images).is_dir():
        ap.error(f"--images {args.images}: not a folder")
    if args.captions and not Path(args.captions).is_file():
        ap.error(f"--captions {args.captions}: no such file")
    import torch

    from unimlip_kit.models import UniMlipModel

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = UniMlipModel.from_pretrained(args.model, map_location=device)
    except (OSError, ValueError) as err:
        ap.error(f"--model {args.model}: {err}")
    skips = SkipCounter()
    progress = not args.no_progress
    if args.images:
        emb, ids = _embed_image_folder(model, args.images, args.batch_size, device, progress, skips)
    else:
        if model.tokenizer is None:
            ap.error(f"--model {args.model} was saved without a tokenizer: captions cannot be embedded")
        try:
            emb, ids = _embed_caption_table(model, args.captions, args.column, args.id_column, args.encoding,
                                            args.batch_size, device, progress, skips)
        except (ValueError, UnicodeDecodeError) as err:
            ap.error(f"--captions {args.captions}: {err}")
    written = write_embeddings(out, emb, ids)
    print(f"embedded {len(ids)} {'images' if args.images else 'captions'} -> {', '.join(map(str, written))}"
          f" (dim {emb.shape[1]})")
    if len(skips):
        print(skips.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
