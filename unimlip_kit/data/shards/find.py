"""Finding shards: what names shards, which shards a source holds and their sample counts, their captions.

A source is a folder (its ``index.json``, else its ``*.tar``), a ``.tar`` file or a brace pattern; counts
come from the index where it still matches the shard, else from the tar headers. Also the skips a
conversion recorded in the index (:func:`conversion_skips`).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import warnings
from pathlib import Path
from typing import Any, Sequence

from unimlip_kit.data.records import UNKNOWN_MODALITY
from unimlip_kit.data.shards.layout import INDEX_FORMAT, INDEX_NAME, ShardInfo
from unimlip_kit.data.skips import SkipCounter
from unimlip_kit.utils.optional import require

_BRACE = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator skips these members


def is_shard_source(path_or_pattern: str | os.PathLike) -> bool:
    """Whether ``path_or_pattern`` names tar shards: a ``.tar`` file, a brace pattern, or a folder of shards.

    A folder counts when it holds an ``index.json`` written by :func:`write_shards` or ``*.tar`` files
    directly inside it (a ROCO checkout holds neither). The answer needs no ``webdataset``.

    Example:
        >>> is_shard_source("/data/shards/roco-{000000..000009}.tar"), is_shard_source("/data/roco")
        (True, False)
    """
    s = os.fspath(path_or_pattern)
    if s.endswith(".tar") or (_BRACE.search(s) and ".tar" in s):
        return True
    p = Path(s)
    if not p.is_dir():
        return False
    return _read_index(p) is not None or any(p.glob("*.tar"))


def _read_index(folder: Path) -> dict[str, Any] | None:
    f = folder / INDEX_NAME
    if not f.is_file():
        return None
    try:
        index = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and index.get("format") == INDEX_FORMAT else None


def conversion_skips(source: str | os.PathLike, skips: SkipCounter) -> int:
    """Add what :func:`write_shards` skipped while converting ``source``'s shards (their ``index.json``) to ``skips``.

    Each skipped id is added under its reason with the detail prefixed ``while converting:``; an index written
    before every id was kept (only counts and examples) adds the uncounted rest as ``<index>#<reason>#<n>``, so
    the totals agree. Returns the number added; shards without an index add none.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from unimlip_kit.data import ImageTextRecord, write_shards
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (4, 4)).save(d / "a.png")
        >>> recs = [ImageTextRecord("r0", d / "a.png", "CT."), ImageTextRecord("gone", d / "b.png", "MRI.")]
        >>> _ = write_shards(recs, d / "out")
        >>> c = SkipCounter(); conversion_skips(d / "out", c), c.items()["missing_image"]["gone"][:16]
        (1, 'while converting')
    """
    folders = sorted({Path(p).parent for p in _expand(source)}) if not Path(source).is_dir() else [Path(source)]
    added = 0
    for folder in folders:
        index = _read_index(folder)
        skipped = (index or {}).get("skipped") or {}
        for reason, n in (skipped.get("by_reason") or {}).items():
            examples = (skipped.get("examples") or {}).get(reason) or []
            for item_id, detail in examples:
                skips.add(item_id, reason, f"while converting: {detail}")
            for k in range(len(examples), int(n)):
                skips.add(f"{folder / INDEX_NAME}#{reason}#{k}", reason, "while converting (id not kept in the index)")
            added += max(int(n), len(examples))
    return added


def _expand(source: str | os.PathLike) -> list[str]:
    s = os.fspath(source)
    if _BRACE.search(s):
        from webdataset.shardlists import expand_urls

        return list(expand_urls(s))
    p = Path(s)
    if p.is_dir():
        index = _read_index(p)
        if index is not None:
            return [str(p / e["name"]) for e in index["shards"]]
        found = sorted(str(x) for x in p.glob("*.tar"))
        if not found:
            raise ValueError(f"not a shard source: {p} holds no *.tar shards and no {INDEX_NAME}")
        return found
    if s.endswith(".tar"):
        return [s]
    raise ValueError(f"not a shard source: {s!r} (expected a .tar file, a folder of .tar shards or a brace pattern "
                     "such as /data/shards/roco-{000000..000009}.tar)")


def _skipped_member(name: str) -> bool:
    return ("/" not in name and name.startswith("__") and name.endswith("__")) or bool(_META.match(name))


def _count_samples(path: str) -> int:
    """Samples in a tar from its headers only (data is seeked over), grouped as webdataset groups them."""
    from webdataset.tariterators import base_plus_ext

    n, prev = 0, None
    try:
        with tarfile.open(path, "r:") as tf:
            for info in tf:
                if not info.isreg() or _skipped_member(info.name):
                    continue
                key, _ = base_plus_ext(info.name)
                if key is not None and key != prev:
                    n, prev = n + 1, key
    except (tarfile.TarError, OSError, EOFError) as err:
        warnings.warn(f"{path}: tar unreadable after {n} samples ({err}); counting {n}", stacklevel=3)
    return n


def list_shards(source: str | os.PathLike) -> list[ShardInfo]:
    """The shards of ``source`` (see :func:`is_shard_source`) with their sample counts.

    Counts come from the folder's ``index.json`` when it lists the shard with its current size, else from
    the tar headers. A shard now smaller than its index says (cut short by a failed copy or a dying disk)
    keeps its indexed count, with a warning: the loader pads it with skips, so every lost sample is counted
    and every rank still gets the same number of samples. Shards that do not exist raise
    ``FileNotFoundError`` naming them.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from unimlip_kit.data import ImageTextRecord, write_shards
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (4, 4)).save(d / "a.png")
        >>> _ = write_shards([ImageTextRecord(str(i), d / "a.png", "x") for i in range(3)], d, max_per_shard=2)
        >>> [s.samples for s in list_shards(str(d / "shard-{000000..000001}.tar"))]
        [2, 1]
    """
    require("webdataset", "shards", "reading WebDataset shards")
    paths = _expand(source)
    if not paths:
        raise ValueError(f"{os.fspath(source)!r} names no shards")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} shards do not exist (source {os.fspath(source)!r}): "
                                + ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else ""))
    indexes: dict[Path, dict[str, tuple[int, int]]] = {}
    out = []
    for path in paths:
        p = Path(path)
        if p.parent not in indexes:
            index = _read_index(p.parent) or {"shards": []}
            indexes[p.parent] = {e["name"]: (int(e["samples"]), int(e.get("bytes", -1))) for e in index["shards"]}
        samples, size = indexes[p.parent].get(p.name, (-1, -1))
        actual = p.stat().st_size
        # cut short since it was indexed: keep the count, so that every lost sample is padded in and counted
        if samples >= 0 and 0 <= actual < size:
            warnings.warn(f"{path} is {actual} bytes, its index says {size}: truncated; keeping its indexed "
                          f"{samples} samples (the unreadable ones are skipped and counted)", stacklevel=2)
        elif samples < 0 or size != actual:  # not indexed, or rewritten (larger) since: count the headers
            samples = _count_samples(path)
        out.append(ShardInfo(str(p), samples))
    return out


def read_shard_metadata(source: str | os.PathLike | Sequence[ShardInfo]) -> list[dict[str, Any]]:
    """``id``, ``caption``, ``label``, ``group``, ``modality``, ``shard`` and ``key`` of every sample, images unread.

    For what needs the captions before training (a tokenizer's vocabulary, counts): the tars are opened for
    random access, so image members are seeked over. A caption that is missing or not UTF-8 is ``""``, a bad
    ``.json`` gives the defaults (the loader skips and counts such samples when it meets them).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from unimlip_kit.data import ImageTextRecord, write_shards
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (4, 4)).save(d / "a.png")
        >>> _ = write_shards([ImageTextRecord("r0", d / "a.png", "CT head.", label=3, modality="ct")], d)
        >>> [(m["id"], m["caption"], m["label"], m["modality"]) for m in read_shard_metadata(d)]
        [('r0', 'CT head.', 3, 'ct')]
    """
    from webdataset.tariterators import base_plus_ext

    shards = list_shards(source) if isinstance(source, (str, os.PathLike)) else list(source)
    out: list[dict[str, Any]] = []

    def entry(path: str, key: str, members: dict[str, bytes]) -> dict[str, Any]:
        try:
            meta = json.loads(members["json"].decode("utf-8")) if "json" in members else {}
        except (UnicodeDecodeError, ValueError):
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
        try:
            caption = members.get("txt", b"").decode("utf-8")
        except UnicodeDecodeError:
            caption = ""
        return {"id": str(meta.get("id", f"{Path(path).name}:{key}")), "caption": caption, "label": meta.get("label", -1),
                "group": str(meta.get("group", "") or ""), "modality": str(meta.get("modality", UNKNOWN_MODALITY)),
                "shard": path, "key": key}

    for info in shards:
        n, key, members = 0, None, {}
        try:
            with tarfile.open(info.path, "r:") as tf:
                for m in tf:
                    if not m.isreg() or _skipped_member(m.name):
                        continue
                    k, ext = base_plus_ext(m.name)
                    if k is None:
                        continue
                    if k != key:
                        if key is not None:
                            out.append(entry(info.path, key, members))
                            n += 1
                        if n == info.samples:
                            key = None
                            break
                        key, members = k, {}
                    if ext.lower() in ("txt", "json") and ext.lower() not in members:
                        members[ext.lower()] = tf.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            warnings.warn(f"{info.path}: tar unreadable after {n} samples ({err})", stacklevel=2)
        if key is not None and n < info.samples:
            out.append(entry(info.path, key, members))
    return out
