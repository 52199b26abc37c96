"""One entry point for a user's pairs: a table, an image folder, a ROCO checkout or shards, told apart by looking.

``--data-root`` (``data.root``) and ``--val-data`` (``data.eval_root``) name a *source*; :func:`source_kind`
says which of :data:`SOURCE_KINDS` it is and :func:`read_source` reads it with the matching reader, every
bad row skipped and counted:

* ``table``: a ``.csv`` / ``.tsv`` / ``.tab`` / ``.jsonl`` / ``.json`` / ``.ndjson`` file of image paths and
  captions (:func:`~unimlip_kit.data.read_pairs`; columns ``image`` and ``caption`` unless named);
* ``folder``: a folder of images (any suffix :func:`~unimlip_kit.data.load_image` decodes, DICOM without a
  suffix too), each with a sidecar caption ``<name>.txt`` beside it (:func:`read_image_folder`); with
  ``label_column="folder"`` the first sub-folder is the class (``root/<class>/.../x.png``);
* ``roco``: ``<root>/data/<split>/radiology/captions.txt`` (:func:`~unimlip_kit.data.read_roco`);
* ``shards``: WebDataset tars (:func:`~unimlip_kit.data.is_shard_source`), streamed, not read here.

A table or folder has no splits: :func:`hold_out` keeps a seeded fraction of it for validation, by
``group`` when the rows have one (a patient's images never straddle the split). Class names from a
label column or class folders are aligned across sources by :func:`align_labels`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

from unimlip_kit.data.decode import IMAGE_SUFFIXES, image_format
from unimlip_kit.data.modality import infer_modality
from unimlip_kit.data.records import UNKNOWN_LABEL, ImageTextRecord
from unimlip_kit.data.roco import ROCO_SPLITS, read_roco, roco_split_dir
from unimlip_kit.data.shards import is_shard_source
from unimlip_kit.data.skips import SkipCounter
from unimlip_kit.data.tabular import read_pairs
from unimlip_kit.data.textfile import read_text_lines

__all__ = ["FOLDER_LABELS", "SOURCE_KINDS", "TABLE_SUFFIXES", "align_labels", "describe_source", "hold_out",
           "read_image_folder", "read_source", "source_kind"]

#: What a data source can be (``synthetic`` is ``data.root=None``).
SOURCE_KINDS = ("synthetic", "roco", "table", "folder", "shards")
#: File suffixes read as tables of pairs.
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".json", ".ndjson")
#: ``label_column`` value meaning "the class is the image's first sub-folder" (image folders).
FOLDER_LABELS = "folder"


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(IMAGE_SUFFIXES):
        return True
    # DICOM files often have no suffix, or a UID for a name (1.2.840.113619...): the magic bytes say
    return not name.endswith((".txt", ".csv", ".json", ".jsonl", ".md")) and image_format(path) == "dicom"


def source_kind(path: str | os.PathLike | None) -> str:
    """Which of :data:`SOURCE_KINDS` ``path`` is; a path that is none of them raises, saying what was looked for.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); _ = (d / "pairs.csv").write_text("image,caption\\n")
        >>> source_kind(None), source_kind(d / "pairs.csv"), source_kind("/data/shards-{000..009}.tar")
        ('synthetic', 'table', 'shards')
        >>> source_kind(d)
        Traceback (most recent call last):
        ...
        ValueError: ... is none of: a table (.csv, .tsv, ...), shards, a ROCO checkout (data/<split>/radiology/captions.txt) or a folder of images with .txt captions
    """
    if path is None:
        return "synthetic"
    if is_shard_source(path):
        return "shards"
    p = Path(path)
    if p.is_file():
        if p.name.lower().endswith(TABLE_SUFFIXES):
            return "table"
        raise ValueError(f"{p} is a file but not a table of pairs: expected one of {', '.join(TABLE_SUFFIXES)}")
    if not p.exists():
        raise FileNotFoundError(f"no data source {p} (a table, an image folder, a ROCO checkout or shards)")
    if any((roco_split_dir(p, s) / "captions.txt").is_file() for s in ROCO_SPLITS):
        return "roco"
    if any(f.is_file() and _is_image(f) for f in p.rglob("*")):
        return "folder"
    raise ValueError(f"{p} is none of: a table (.csv, .tsv, ...), shards, a ROCO checkout "
                     f"(data/<split>/radiology/captions.txt) or a folder of images with .txt captions")


def _sidecar(image: Path, suffix: str) -> Path | None:
    """``a.png`` -> ``a.txt``, else ``a.png.txt`` (``scan.nii.gz`` -> ``scan.txt``)."""
    name = image.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else image.stem
    for cand in (image.with_name(stem + suffix), image.with_name(name + suffix)):
        if cand.is_file():
            return cand
    return None


def read_image_folder(
    root: str | os.PathLike,
    *,
    caption_suffix: str = ".txt",
    label_column: str | None = None,
    skips: SkipCounter | None = None,
) -> list[ImageTextRecord]:
    """Every image under ``root`` (recursively, in sorted order) with its sidecar caption file.

    The caption of ``x.png`` is ``x.txt`` (or ``x.png.txt``), whitespace collapsed; an image without one,
    or with an empty one, is skipped as ``empty_caption``. Ids are the paths relative to ``root``, without
    the image suffix. ``label_column="folder"`` makes the first sub-folder the class (an image directly in
    ``root`` is then a ``bad_row``): class names sorted, indices in that order, the name in
    ``meta["label_name"]``. Modality comes from the caption (:func:`~unimlip_kit.data.infer_modality`).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp())
        >>> for cls, name, text in (("effusion", "a", "Chest X-ray, left effusion."), ("normal", "b", "Normal CT."),
        ...                         ("normal", "c", "")):
        ...     (d / cls).mkdir(exist_ok=True); Image.new("L", (4, 4)).save(d / cls / f"{name}.png")
        ...     _ = (d / cls / f"{name}.txt").write_text(text)
        >>> c = SkipCounter(); recs = read_image_folder(d, label_column="folder", skips=c)
        >>> [(r.id, r.label, r.meta["label_name"], r.modality) for r in recs], c.counts()
        ([('effusion/a', 0, 'effusion', 'xray'), ('normal/b', 1, 'normal', 'ct')], {'empty_caption': 1})
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder {root}")
    if label_column not in (None, FOLDER_LABELS):
        raise ValueError(f"an image folder's labels come from its class folders: label_column must be "
                         f"{FOLDER_LABELS!r} or None, got {label_column!r}")
    skips = skips if skips is not None else SkipCounter()
    pending: list[tuple[str, Path, str, str | None]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p)):
        rel = path.relative_to(root)
        rid = rel.as_posix()
        low = rid.lower()
        for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
            if low.endswith(s):
                rid = rid[: -len(s)]
                break
        side = _sidecar(path, caption_suffix)
        caption = " ".join(" ".join(read_text_lines(side, errors="replace")).split()) if side else ""
        if not caption:
            skips.add(rid, "empty_caption", f"no caption in {path.name}'s {caption_suffix} sidecar" if side else
                      f"no {caption_suffix} caption beside {path}")
            continue
        cls = None
        if label_column == FOLDER_LABELS:
            if len(rel.parts) < 2:
                skips.add(rid, "bad_row", f"{path} is not inside a class folder (label_column={FOLDER_LABELS!r})")
                continue
            cls = rel.parts[0]
        pending.append((rid, path, caption, cls))
    names = sorted({c for *_, c in pending if c is not None})
    index = {n: k for k, n in enumerate(names)}
    return [ImageTextRecord(rid, path, caption, UNKNOWN_LABEL if cls is None else index[cls], "",
                            infer_modality(caption), {} if cls is None else {"label_name": cls})
            for rid, path, caption, cls in pending]


def read_source(
    path: str | os.PathLike,
    *,
    split: str = "train",
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    label_column: str | None = None,
    group_column: str | None = None,
    image_root: str | os.PathLike | None = None,
    caption_suffix: str = ".txt",
    skips: SkipCounter | None = None,
    limit: int | None = None,
) -> list[ImageTextRecord]:
    """The pairs of any non-shard source (:func:`source_kind`), read by its reader; ``split`` is ROCO's only.

    ``label_column`` names a table's class column, or ``"folder"`` for an image folder's class folders (a
    table read with ``"folder"``, e.g. the validation pairs of a run on class folders, is unlabelled);
    ``limit`` keeps the first N pairs. Shards are streamed during training
    (:func:`~unimlip_kit.data.open_shards`) and refused here, as is the synthetic benchmark (``None``).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (4, 4)).save(d / "a.png")
        >>> _ = (d / "p.csv").write_text("file,text\\na.png,MRI brain.\\n")
        >>> [r.caption for r in read_source(d / "p.csv", image_column="file", caption_column="text")]
        ['MRI brain.']
    """
    kind = source_kind(path)
    if kind in ("shards", "synthetic"):
        raise ValueError(f"{path} is {kind}: read_source reads tables, image folders and ROCO checkouts")
    skips = skips if skips is not None else SkipCounter()
    if kind == "roco":
        if label_column is not None:
            raise ValueError(f"label_column={label_column!r} does not apply to a ROCO checkout ({path}): its labels "
                             f"come from metadata.jsonl")
        return read_roco(path, split, skips=skips, limit=limit)
    if kind == "folder":
        records = read_image_folder(path, caption_suffix=caption_suffix, label_column=label_column, skips=skips)
    else:
        if label_column == FOLDER_LABELS:  # class folders label an image folder; a table beside it is unlabelled
            label_column = None
        records = read_pairs(path, image_column=image_column, caption_column=caption_column, id_column=id_column,
                             label_column=label_column, group_column=group_column, image_root=image_root, skips=skips)
    return records if limit is None else records[:limit]


def hold_out(records: Sequence[ImageTextRecord], fraction: float, seed: int
             ) -> tuple[list[ImageTextRecord], list[ImageTextRecord]]:
    """``(train, validation)``: a seeded ``fraction`` of the records (at least one, at most all but one) held out.

    Units are groups (``record.group``, e.g. a patient id), else images (the last two parts of the image path:
    an image with two captions stays on one side), so records sharing a unit fall on one side. Each unit is
    ranked by ``derive_seed(seed, "hold-out", unit)`` (BLAKE2b), so the split depends on the seed and the
    units only: not on the rows' order, their positional ids or where the folder is. Units are taken in that
    order while they bring the held-out count closer to ``fraction · n``; a unit that would overshoot by more
    than it helps is passed over, so a big group cannot take most of the data.

    Example:
        >>> recs = [ImageTextRecord(f"p{i}", Path(f"{i}.png"), "CT.", group=f"pt{i // 2}") for i in range(10)]
        >>> train, val = hold_out(recs, 0.2, seed=0)
        >>> len(train), len(val), {r.group for r in val} & {r.group for r in train}
        (8, 2, set())
        >>> sorted(r.id for r in val) == sorted(r.id for r in hold_out(recs[::-1], 0.2, seed=0)[1])
        True
    """
    from unimlip_kit.utils.seeding import derive_seed

    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    units: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        key = f"group:{r.group}" if r.group else "image:" + "/".join(Path(r.image_path).parts[-2:])
        units.setdefault(key, []).append(i)
    if len(units) < 2:
        raise ValueError(f"{len(records)} pairs in {len(units)} group(s) cannot be split into training and validation")
    ranked = sorted(units, key=lambda k: derive_seed(seed, "hold-out", k))
    target = round(fraction * len(records), 9)  # 0.07 * 100 is 7.000000000000001
    val: set[int] = set()
    for k in ranked:
        size = len(units[k])
        if len(val) >= target:
            break
        if len(val) + size > len(records) - 1:  # training keeps at least one pair
            continue
        if val and (len(val) + size - target) > (target - len(val)):  # overshoots by more than it closes
            continue
        val.update(units[k])
    return ([r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val])


def align_labels(*sources: Sequence[ImageTextRecord]) -> tuple[list[list[ImageTextRecord]], list[str] | None]:
    """Re-index named labels over several sources (training and validation files), by the sorted union of names.

    Each reader numbers class names within its own file, so the same name can get different indices in two
    files; this gives every name one index. Sources without names are returned unchanged (``None`` names).

    Example:
        >>> a = [ImageTextRecord("a", Path("a.png"), "x", 0, meta={"label_name": "normal"})]
        >>> b = [ImageTextRecord("b", Path("b.png"), "y", 0, meta={"label_name": "effusion"})]
        >>> (ra, rb), names = align_labels(a, b)
        >>> names, ra[0].label, rb[0].label
        (['effusion', 'normal'], 1, 0)
        >>> align_labels([ImageTextRecord("c", Path("c.png"), "z", 4)])[1] is None  # an index without a name
        True
    """
    lists = [list(s) for s in sources]
    labelled = [r for s in lists for r in s if r.label >= 0]
    named = [r for r in labelled if "label_name" in r.meta]
    if not named:
        return lists, None  # no labels, or unnamed integer labels: indices are all there is
    if len(named) < len(labelled):
        unnamed = next(r for r in labelled if "label_name" not in r.meta)
        raise ValueError(f"labels mix class names ({named[0].id}: {named[0].meta['label_name']!r}) and bare indices "
                         f"({unnamed.id}: {unnamed.label}): their indices cannot be compared; label every source by "
                         f"name, or every one by index")
    names = sorted({r.meta["label_name"] for s in lists for r in s if "label_name" in r.meta})
    index = {n: k for k, n in enumerate(names)}
    out = [[dataclasses.replace(r, label=index[r.meta["label_name"]]) if "label_name" in r.meta else r for r in s]
           for s in lists]
    return out, names


def describe_source(kind: str) -> str:
    """A few words for logs: what a source kind is.

    Example:
        >>> describe_source("table")
        'a table of pairs'
    """
    return {"synthetic": "the synthetic benchmark", "roco": "a ROCO checkout", "table": "a table of pairs",
            "folder": "an image folder with sidecar captions", "shards": "WebDataset shards"}[kind]
