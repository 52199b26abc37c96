"""Reader for the ROCO layout (Pelka et al., MICCAI LABELS 2018, github.com/razorx89/roco-dataset).

Layout::

    <root>/data/{train,validation,test}/radiology/captions.txt   ROCO_ID<TAB>caption
    <root>/data/<split>/radiology/images/<ROCO_ID>.jpg           (current naming)
    <root>/data/<split>/radiology/images/PMC<id>_<figure>.jpg    (older fetch.py naming)
    <root>/data/<split>/radiology/dlinks*.txt                    ROCO_ID<TAB>wget ... PMC<id>.tar.gz ...<TAB><figure>
    <root>/data/<split>/radiology/metadata.jsonl                 optional: {"id", "label", "group", "modality", ...}

Images are looked up by ROCO id first, then by the PMC file name that ROCO's
``fetch.py`` wrote (``<PMC id>_<figure file name>``, derived from the
``dlinks*.txt`` beside the captions or from a ``pmc_names`` mapping, e.g. a
table with ``roco_id``/``pmc_image`` columns). Missing images, empty
captions, duplicate ids and malformed lines are skipped and counted. Any
format :func:`~unimlip_kit.data.load_image` decodes is found (``ROCO_x.jpg``,
``.png``, ``.dcm``, ``.nii.gz``, ...; the suffix's case is ignored). Files are read
with the rules of :mod:`unimlip_kit.data.textfile` (a UTF-8 BOM is dropped, a lone
CR inside a caption is whitespace). A malformed ``metadata.jsonl`` line is a
``bad_row`` named by file and line, never an exception.
``metadata.jsonl`` is not part of ROCO; the synthetic benchmark writes it to
give its pairs labels and groups, and real ROCO pairs get their modality from
:func:`~unimlip_kit.data.modality.infer_modality`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import Mapping

from unimlip_kit.data.decode import IMAGE_SUFFIXES
from unimlip_kit.data.modality import infer_modality
from unimlip_kit.data.records import UNKNOWN_LABEL, ImageTextRecord
from unimlip_kit.data.skips import SkipCounter
from unimlip_kit.data.textfile import BadLabel, parse_label, read_text_lines

__all__ = ["ROCO_SPLITS", "read_pmc_names", "read_roco", "roco_split_dir"]

log = logging.getLogger(__name__)

ROCO_SPLITS = ("train", "validation", "test")
_IMAGE_SUFFIXES = IMAGE_SUFFIXES
_PMC_ARCHIVE = re.compile(r"(PMC\d+)\.tar\.gz")


def roco_split_dir(root: str | os.PathLike, split: str, subset: str = "radiology") -> Path:
    """The folder holding ``captions.txt`` for ``split``; ``root`` may be the repo root or its ``data/``.

    Example:
        >>> roco_split_dir("/roco", "test").as_posix()
        '/roco/data/test/radiology'
    """
    if split not in ROCO_SPLITS:
        raise ValueError(f"split must be one of {ROCO_SPLITS}, got {split!r}")
    root = Path(root)
    for cand in (root / "data" / split / subset, root / split / subset):
        if (cand / "captions.txt").is_file():
            return cand
    return root / "data" / split / subset


def read_pmc_names(path: str | os.PathLike) -> dict[str, str]:
    """ROCO id -> PMC image file name, from a ``dlinks*.txt`` or a table with ``roco_id``/``pmc_image``.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "dlinks.txt")
        >>> _ = open(p, "w").write("ROCO_1\\twget -r ftp://x/oa_package/1e/ed/PMC397.tar.gz -P /d\\tfig.003.jpg\\n")
        >>> read_pmc_names(p)
        {'ROCO_1': 'PMC397_fig.003.jpg'}
    """
    path = Path(path)
    out: dict[str, str] = {}
    lines = read_text_lines(path, errors="replace")
    first = lines[0] if lines else ""
    if "roco_id" in first and "pmc_image" in first:
        delim = "\t" if "\t" in first else ","
        rows = csv.DictReader(lines, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL)
        for row in rows:
            if row.get("roco_id") and row.get("pmc_image"):
                out[row["roco_id"].strip()] = row["pmc_image"].strip()
        return out
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        m = _PMC_ARCHIVE.search(parts[1])
        if m and parts[-1].strip():
            out[parts[0].strip()] = f"{m.group(1)}_{parts[-1].strip()}"
    return out


def _read_metadata(path: Path, skips: SkipCounter) -> dict[str, dict]:
    """``metadata.jsonl`` rows by id; a line that is not a JSON object with an ``id`` is a counted ``bad_row``."""
    meta: dict[str, dict] = {}
    if not path.is_file():
        return meta
    for lineno, line in enumerate(read_text_lines(path, errors="replace"), 1):
        if not line.strip():
            continue
        where = f"{path.parent.parent.name}/{path.name}:line{lineno}"
        try:
            row = json.loads(line, strict=False)
        except json.JSONDecodeError as err:
            skips.add(where, "bad_row", f"{path}: line {lineno}: {err}")
            continue
        if not isinstance(row, dict) or row.get("id") in (None, ""):
            skips.add(where, "bad_row", f"{path}: line {lineno}: not a JSON object with an 'id'")
            continue
        try:
            label = parse_label(row.get("label"))
        except BadLabel as err:
            skips.add(where, "bad_row", f"{path}: line {lineno}: {err}")
            continue
        if isinstance(label, str):
            skips.add(where, "bad_row", f"{path}: line {lineno}: label {label!r} is not a class index")
            continue
        row["label"] = UNKNOWN_LABEL if label is None else label
        meta[str(row["id"]).strip()] = row
    return meta


def read_roco(
    root: str | os.PathLike,
    split: str = "train",
    *,
    subset: str = "radiology",
    pmc_names: Mapping[str, str] | str | os.PathLike | None = None,
    skips: SkipCounter | None = None,
    limit: int | None = None,
) -> list[ImageTextRecord]:
    """Read one ROCO split into records; skipped lines are counted in ``skips``.

    Args:
        root: the ROCO checkout (holding ``data/``) or its ``data/`` folder.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        subset: ``"radiology"`` (default) or ``"non-radiology"``.
        pmc_names: extra ROCO id -> PMC file name mapping (or a file for :func:`read_pmc_names`),
            merged over the ``dlinks*.txt`` found beside ``captions.txt``.
        skips: counter that receives ``empty_caption``, ``missing_image``,
            ``duplicate_id`` and ``bad_row`` entries.
        limit: keep only the first ``limit`` valid pairs (quick runs); ``0`` reads none.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp()) / "data" / "test" / "radiology"
        >>> (d / "images").mkdir(parents=True)
        >>> _ = (d / "captions.txt").write_text("ROCO_1\\t CT of the head.\\nROCO_2\\t \\n")
        >>> Image.new("L", (8, 8)).save(d / "images" / "ROCO_1.jpg")
        >>> c = SkipCounter(); recs = read_roco(d.parents[2], "test", skips=c)
        >>> [(r.id, r.caption, r.modality) for r in recs], c.counts()
        ([('ROCO_1', 'CT of the head.', 'ct')], {'empty_caption': 1})
    """
    folder = roco_split_dir(root, split, subset)
    captions = folder / "captions.txt"
    if not captions.is_file():
        raise FileNotFoundError(
            f"no ROCO captions at {captions}; expected <root>/data/{split}/{subset}/captions.txt "
            "(see github.com/razorx89/roco-dataset)"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an integer >= 0, got {limit!r}")
    skips = skips if skips is not None else SkipCounter()
    if limit == 0:
        return []
    image_dir = folder / "images"
    present = {e.name for e in os.scandir(image_dir)} if image_dir.is_dir() else set()
    by_lower: dict[str, str] = {}
    for name in sorted(present):
        by_lower.setdefault(name.lower(), name)
    names: dict[str, str] = {}
    for dl in sorted(folder.glob("dlinks*.txt")):
        names.update(read_pmc_names(dl))
    if pmc_names is not None:
        names.update(pmc_names if isinstance(pmc_names, Mapping) else read_pmc_names(pmc_names))
    metadata = _read_metadata(folder / "metadata.jsonl", skips)

    records: list[ImageTextRecord] = []
    seen: set[str] = set()
    for lineno, line in enumerate(read_text_lines(captions, errors="replace"), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            skips.add(f"{split}:line{lineno}", "bad_row", "no TAB between ROCO id and caption")
            continue
        rid, caption = line.split("\t", 1)
        rid, caption = rid.strip(), " ".join(caption.split())
        if rid in seen:
            skips.add(rid, "duplicate_id", f"line {lineno}")
            continue
        seen.add(rid)
        if not caption:
            skips.add(rid, "empty_caption")
            continue
        fname = next((by_lower[(rid + s).lower()] for s in _IMAGE_SUFFIXES if (rid + s).lower() in by_lower), None)
        if fname is None and names.get(rid) in present:
            fname = names[rid]
        if fname is None:
            tried = f"{rid}.jpg (or .png, .dcm, ...)" + (f" or {names[rid]}" if rid in names else "")
            skips.add(rid, "missing_image", f"no {tried} in {image_dir}")
            continue
        m = metadata.get(rid, {})
        records.append(
            ImageTextRecord(
                id=rid,
                image_path=image_dir / fname,
                caption=caption,
                label=int(m.get("label", UNKNOWN_LABEL)),
                group=str(m.get("group", "")),
                modality=str(m.get("modality") or infer_modality(caption)),
                meta={k: v for k, v in m.items() if k not in ("id", "label", "group", "modality")},
            )
        )
        if limit is not None and len(records) >= limit:
            break
    if skips.total:
        log.info("ROCO %s: %d pairs, %s", split, len(records), skips.summary())
    return records
