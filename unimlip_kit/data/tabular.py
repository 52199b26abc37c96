"""Generic image–caption tables: CSV/TSV and JSON Lines, column names configurable.

Image paths are resolved relative to the table's folder (or ``image_root``),
so a dataset folder can be moved as a whole. Rows with an empty caption,
a missing image, a duplicate id or a missing column are skipped and counted.
String labels are mapped to indices by sorted name (the name is kept in
``meta["label_name"]``); integer labels are used as they are.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from unimlip_kit.data.modality import infer_modality
from unimlip_kit.data.records import UNKNOWN_LABEL, ImageTextRecord
from unimlip_kit.data.skips import SkipCounter

__all__ = ["read_csv_pairs", "read_jsonl_pairs", "read_pairs"]


def _rows_csv(path: Path, delimiter: str | None) -> Iterable[Mapping[str, Any]]:
    delim = delimiter or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    with open(path, encoding="utf-8", newline="") as fh:
        yield from csv.DictReader(fh, delimiter=delim)


def _rows_jsonl(path: Path, skips: SkipCounter) -> Iterable[Mapping[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                skips.add(f"{path.name}:line{lineno}", "bad_row", str(err))
                continue
            if not isinstance(row, dict):
                skips.add(f"{path.name}:line{lineno}", "bad_row", "not a JSON object")
                continue
            yield row


def _to_records(
    rows: Iterable[Mapping[str, Any]],
    *,
    source: Path,
    image_column: str,
    caption_column: str,
    id_column: str | None,
    label_column: str | None,
    modality_column: str | None,
    group_column: str | None,
    image_root: str | os.PathLike | None,
    check_exists: bool,
    skips: SkipCounter,
) -> list[ImageTextRecord]:
    base = Path(image_root) if image_root is not None else source.parent
    pending: list[tuple[str, Path, str, Any, str, str]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        rid = str(row.get(id_column) if id_column else "") or f"{source.stem}:{i}"
        if image_column not in row or caption_column not in row:
            skips.add(rid, "bad_row", f"missing column {image_column!r} or {caption_column!r}")
            continue
        if rid in seen:
            skips.add(rid, "duplicate_id", f"row {i}")
            continue
        seen.add(rid)
        caption = " ".join(str(row.get(caption_column) or "").split())
        if not caption:
            skips.add(rid, "empty_caption")
            continue
        image = str(row.get(image_column) or "").strip()
        path = base / image if image else None
        if path is None or (check_exists and not path.is_file()):
            skips.add(rid, "missing_image", f"no file {path}")
            continue
        label = row.get(label_column) if label_column else None
        modality = str(row.get(modality_column) or "") if modality_column else ""
        group = str(row.get(group_column) or "") if group_column else ""
        pending.append((rid, path, caption, label, modality or infer_modality(caption), group))
    names = sorted(
        {str(p[3]) for p in pending if p[3] not in (None, "") and not str(p[3]).lstrip("-").isdigit()}
    )
    index = {n: k for k, n in enumerate(names)}
    records = []
    for rid, path, caption, label, modality, group in pending:
        meta: dict[str, Any] = {}
        if label in (None, ""):
            lab = UNKNOWN_LABEL
        elif str(label).lstrip("-").isdigit():
            lab = int(label)
        else:
            lab, meta["label_name"] = index[str(label)], str(label)
        records.append(ImageTextRecord(rid, path, caption, lab, group, modality, meta))
    return records


def read_csv_pairs(
    path: str | os.PathLike,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    label_column: str | None = None,
    modality_column: str | None = None,
    group_column: str | None = None,
    image_root: str | os.PathLike | None = None,
    delimiter: str | None = None,
    check_exists: bool = True,
    skips: SkipCounter | None = None,
) -> list[ImageTextRecord]:
    """Read a CSV (``,``) or TSV (``.tsv``: TAB) table of image–caption pairs.

    Without ``id_column`` a row's id is ``<file stem>:<row index>``.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (4, 4)).save(d / "a.png")
        >>> _ = (d / "pairs.csv").write_text("file,text,dx\\na.png,MRI brain.,tumour\\nb.png,CT.,normal\\n")
        >>> c = SkipCounter()
        >>> r = read_csv_pairs(d / "pairs.csv", image_column="file", caption_column="text", label_column="dx", skips=c)
        >>> [(x.id, x.caption, x.label, x.modality) for x in r], c.counts()
        ([('pairs:0', 'MRI brain.', 0, 'mri')], {'missing_image': 1})
    """
    path = Path(path)
    skips = skips if skips is not None else SkipCounter()
    return _to_records(
        _rows_csv(path, delimiter),
        source=path,
        image_column=image_column,
        caption_column=caption_column,
        id_column=id_column,
        label_column=label_column,
        modality_column=modality_column,
        group_column=group_column,
        image_root=image_root,
        check_exists=check_exists,
        skips=skips,
    )


def read_jsonl_pairs(
    path: str | os.PathLike,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    label_column: str | None = None,
    modality_column: str | None = None,
    group_column: str | None = None,
    image_root: str | os.PathLike | None = None,
    check_exists: bool = True,
    skips: SkipCounter | None = None,
) -> list[ImageTextRecord]:
    """Read a JSON Lines file (one object per line) of image–caption pairs; bad lines are counted.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (4, 4)).save(d / "a.png")
        >>> _ = (d / "p.jsonl").write_text('{"id": "x", "image": "a.png", "caption": "Chest X-ray.", "label": 2}\\n{oops\\n')
        >>> c = SkipCounter(); r = read_jsonl_pairs(d / "p.jsonl", id_column="id", label_column="label", skips=c)
        >>> [(x.id, x.label) for x in r], c.counts()
        ([('x', 2)], {'bad_row': 1})
    """
    path = Path(path)
    skips = skips if skips is not None else SkipCounter()
    return _to_records(
        _rows_jsonl(path, skips),
        source=path,
        image_column=image_column,
        caption_column=caption_column,
        id_column=id_column,
        label_column=label_column,
        modality_column=modality_column,
        group_column=group_column,
        image_root=image_root,
        check_exists=check_exists,
        skips=skips,
    )


def read_pairs(path: str | os.PathLike, **kwargs: Any) -> list[ImageTextRecord]:
    """:func:`read_jsonl_pairs` for ``.jsonl``/``.json`` files, :func:`read_csv_pairs` otherwise.

    Example:
        >>> read_pairs("missing.jsonl")
        Traceback (most recent call last):
        ...
        FileNotFoundError: missing.jsonl
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(str(path))
    if p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return read_jsonl_pairs(p, **kwargs)
    return read_csv_pairs(p, **kwargs)
