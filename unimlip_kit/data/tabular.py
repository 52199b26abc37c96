"""Generic image–caption tables: CSV/TSV and JSON Lines, column names configurable.

Image paths are resolved relative to the table's folder (or ``image_root``),
so a dataset folder can be moved as a whole. Rows with an empty caption,
a missing image, a duplicate id, a bad label or a malformed line are skipped and
counted; a column name that the table's header lacks raises ``ValueError`` once.

Formats, as real files are written (lines and labels: :mod:`unimlip_kit.data.textfile`):

* a UTF-8 byte-order mark is dropped (Excel's "CSV UTF-8"), CRLF is a line end, a lone CR
  inside a field is whitespace;
* CSV (``,``) follows RFC 4180: ``"`` quotes a field (commas, quotes ``""`` and line breaks
  inside it); an unterminated quote is one ``bad_row`` and the lines after it are read again;
* TSV (``.tsv``/``.tab`` or ``delimiter="\t"``) has no quoting, as the TSV convention: a
  ``"`` is an ordinary character, so a caption may start with one;
* a row with more fields than the header (an unquoted delimiter inside a field) is rejoined
  into the caption when the caption is the last column, else skipped as ``bad_row``;
* with ``id_column`` set, a row without an id gets the positional id ``<file stem>:<row>``.

Labels: integer indices (also ``2.0`` and ``"2"``) are used as they are, empty/``-1`` is unknown,
other strings are class names mapped to indices by sorted name (kept in ``meta["label_name"]``),
numbered after the largest integer label when a column mixes both; ``2.5``, ``true`` or ``-3``
is a ``bad_row``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from unimlip_kit.data.modality import infer_modality
from unimlip_kit.data.records import UNKNOWN_LABEL, ImageTextRecord
from unimlip_kit.data.skips import SkipCounter
from unimlip_kit.data.textfile import BadLabel, parse_label, read_text_lines

__all__ = ["read_csv_pairs", "read_jsonl_pairs", "read_pairs"]


def _split_csv(lines: list[str], delim: str, source: Path, skips: SkipCounter) -> Iterator[tuple[int, list[str]]]:
    """RFC 4180 records as (first line number, fields); an unterminated quote is a bad row, then parsing resumes."""
    # a lone CR in an unquoted field makes the csv module stop; it is whitespace in a caption
    text = [line.replace("\r", " ") + "\n" for line in lines]
    start = 0
    while start < len(text):
        pos = [start]

        def feed(k: int = start) -> Iterator[str]:
            for j in range(k, len(text)):
                pos[0] = j
                yield text[j]

        reader = csv.reader(feed(), delimiter=delim, strict=True)
        first = start
        try:
            for fields in reader:
                yield first + 1, fields
                first = pos[0] + 1
            return
        except csv.Error as err:
            skips.add(f"{source.name}:line{first + 1}", "bad_row", f"{err} (a quote opened on line {first + 1}?)")
            start = first + 1


def _rows_table(
    path: Path, delimiter: str | None, encoding: str, required: list[str], skips: SkipCounter, caption_column: str
) -> Iterable[Mapping[str, Any]]:
    delim = delimiter or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    lines = read_text_lines(path, encoding=encoding)
    if delim == "\t":
        records: Iterable[tuple[int, list[str]]] = ((i + 1, line.split("\t")) for i, line in enumerate(lines))
    else:
        records = _split_csv(lines, delim, path, skips)
    header: list[str] | None = None
    for lineno, fields in records:
        if not any(f.strip() for f in fields):
            continue  # blank line
        if header is None:
            header = [h.strip() for h in fields]
            missing = [c for c in required if c not in header]
            if missing:
                raise ValueError(f"{path}: no column {', '.join(map(repr, missing))} in the header (columns: {', '.join(header)})")
            continue
        if len(fields) > len(header):
            if header[-1] == caption_column:  # an unquoted delimiter inside the caption: rejoin it
                fields = fields[: len(header) - 1] + [delim.join(fields[len(header) - 1 :])]
            else:
                skips.add(f"{path.name}:line{lineno}", "bad_row",
                          f"{len(fields)} fields for {len(header)} columns (a delimiter inside a field?)")
                continue
        yield dict(zip(header, fields + [""] * (len(header) - len(fields))))


def _rows_jsonl(path: Path, skips: SkipCounter, encoding: str = "utf-8") -> Iterable[Mapping[str, Any]]:
    lines = read_text_lines(path, encoding=encoding)
    if "".join(lines).lstrip().startswith("["):  # a .json file holding one array of objects, not JSON Lines
        try:
            rows = json.loads("\n".join(lines), strict=False)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a JSON array of objects ({err}); JSON Lines has one object per line") from None
        for k, row in enumerate(rows):
            if isinstance(row, dict):
                yield row
            else:
                skips.add(f"{path.name}:item{k}", "bad_row", "not a JSON object")
        return
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, strict=False)  # strict=False: a raw tab or CR inside a caption string
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
        raw_id = row.get(id_column) if id_column else None
        rid = "" if raw_id is None else str(raw_id).strip()
        rid = rid or f"{source.stem}:{i}"
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
        try:
            label = parse_label(row.get(label_column)) if label_column else None
        except BadLabel as err:
            skips.add(rid, "bad_row", str(err))
            continue
        image = str(row.get(image_column) or "").strip()
        path = base / image if image else None
        if path is None or (check_exists and not path.is_file()):
            skips.add(rid, "missing_image", f"no file {path}")
            continue
        modality = str(row.get(modality_column) or "").strip() if modality_column else ""
        group = str(row.get(group_column) or "").strip() if group_column else ""
        pending.append((rid, path, caption, label, modality or infer_modality(caption), group))
    ints = [p[3] for p in pending if isinstance(p[3], int)]
    offset = max(ints) + 1 if ints else 0
    names = sorted({p[3] for p in pending if isinstance(p[3], str)})
    index = {n: offset + k for k, n in enumerate(names)}
    records = []
    for rid, path, caption, label, modality, group in pending:
        meta: dict[str, Any] = {}
        if label is None:
            lab = UNKNOWN_LABEL
        elif isinstance(label, int):
            lab = label
        else:
            lab, meta["label_name"] = index[label], label
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
    encoding: str = "utf-8",
) -> list[ImageTextRecord]:
    """Read a CSV (``,``) or TSV (``.tsv``: TAB) table of image–caption pairs.

    Without ``id_column`` a row's id is ``<file stem>:<row index>``. See the module
    docstring for quoting, BOM, CR and label rules; a column the header lacks raises ``ValueError``.

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
    named = [image_column, caption_column, id_column, label_column, modality_column, group_column]
    required = [c for c in named if c is not None]
    return _to_records(
        _rows_table(path, delimiter, encoding, required, skips, caption_column),
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
    encoding: str = "utf-8",
) -> list[ImageTextRecord]:
    """Read a JSON Lines file (one object per line), or a JSON array of objects, of image–caption pairs; bad lines are counted.

    A row lacking the image or caption key, or with a bad label (``2.5``), is a ``bad_row``;
    ``2.0`` is class 2.

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
        _rows_jsonl(path, skips, encoding),
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
        FileNotFoundError: no table file missing.jsonl
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no table file {path}")
    if p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return read_jsonl_pairs(p, **kwargs)
    return read_csv_pairs(p, **kwargs)
