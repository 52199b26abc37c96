"""WebDataset tar shards: written from any reader's records, streamed back as the folder reader's batches.

**Layout** (the WebDataset convention: the members of one sample share a key, the name before the first dot)::

    <out>/<prefix>-000000.tar    000000000.jpg  000000000.txt  000000000.json  000000001.png ...
    <out>/index.json             {"format": "unimlip_kit-shards", "shards": [{"name", "samples", "bytes"}], ...}

The image keeps its bytes and format (``jpg``, ``png``, ``tiff``, ``bmp``, ``dcm``, ``nii``/``nii.gz``);
``key.txt`` is the caption in UTF-8; ``key.json`` holds ``id``, ``label``, ``group``, ``modality``,
``meta`` and ``image_key`` (the source path, which the collate uses to group duplicates as the folder
reader does). Keys are running numbers, not ids, because ids may contain dots or slashes. Writing uses
only the standard library's :mod:`tarfile` (members with mtime 0, uid/gid 0: the same records give
byte-identical shards); ``index.json`` stores the sample counts, so opening a thousand shards reads no
tar. Shards without an index (written elsewhere) are counted once from their tar headers.

**Reading** (:func:`open_shards` -> :class:`ShardLoader`) parses tars with the ``webdataset`` library
(``tar_file_expander`` + ``group_by_keys``) and shuffles inside a shard with its seeded ``shuffle``
buffer; decoding is :func:`~unimlip_kit.data.load_image` itself (the member is written to a temporary
file in ``/dev/shm`` and decoded by path), so pixels are bit-identical to :class:`ImageTextDataset` on
the same files, and batches come from the same :class:`ImageTextCollate` (same keys). The order of an
epoch depends only on ``(seed, epoch)``, the shard list, ``world_size`` and ``streams``:

1. the shards are permuted by ``derive_seed(seed, "shards", epoch)``;
2. each shard's samples pass a ``shuffle_buffer``-sample buffer seeded by
   ``derive_seed(seed, "buffer", epoch, shard index)``, per shard, so no shard's order depends on another;
3. the resulting sequence of ``N`` samples is cut into ``world_size`` contiguous ranges of
   ``N // world_size``; rank ``r`` reads range ``r`` (every rank the same number of samples, so DDP
   ranks take the same number of steps; a shard on a boundary is read by both ranks, each keeping its
   part; the ``N mod world_size`` samples left over wait for another epoch's order);
4. the rank's pieces of shards are dealt to ``streams`` streams (piece ``k`` to stream ``k mod streams``),
   and samples interleave round-robin: one from every stream that still has one, in stream order;
5. batches are ``batch_size`` consecutive samples of that sequence; the epoch's last one may be shorter.

**Workers**: DataLoader worker ``p`` of ``n`` reads streams ``p, p + n, ...`` (each shard is opened by one
worker of one rank) and sends back ``(position, sample)``; the main process restores the order of step 4,
so the batches do not depend on ``num_workers`` (``num_workers > streams`` leaves workers idle).

**Exact resume** mirrors :class:`EpochSampler`: ``loader.set_epoch(epoch, start=k)`` (also as
``loader.sampler.set_epoch``) starts the epoch after this rank's first ``k`` samples: whole pieces are
skipped by their counts, the partly read piece is read through without decoding. ``webdataset``'s own
pipeline cannot do this: its default shuffle buffer seeds from the pid and the clock, DataLoader workers
interleave in the loader's scheduling order, and it has no notion of "sample ``k`` of epoch ``e``"; its
``with_epoch``/``slice`` restart counts from the beginning of each worker's stream.

**Bad data** is skipped and counted with the folder readers' reasons, carried in ``batch["skipped"]``
and merged into ``loader.skips``: ``missing_image`` (no image member), ``empty_caption`` (no ``.txt``
or only whitespace), ``corrupt_image`` / ``unsupported_format`` / ``image_too_large`` (the decoder's),
``bad_row`` (``.json`` not an object, a caption that is not UTF-8, a label that is no class index, a
sample lost to a truncated or unreadable shard: the shard's indexed count is padded with such skips, so
positions never shift). A shard with more samples than its index is read up to the index (a warning).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import numbers
import os
import random
import re
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from unimlip_kit.data.collate import ImageTextCollate
from unimlip_kit.data.dataset import ImageTextDataset, SkippedSample
from unimlip_kit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, image_format, load_image
from unimlip_kit.data.records import UNKNOWN_MODALITY, ImageTextRecord
from unimlip_kit.data.skips import SkipCounter
from unimlip_kit.utils.io import save_json
from unimlip_kit.utils.optional import require
from unimlip_kit.utils.seeding import derive_seed, make_generator, seed_worker

__all__ = ["INDEX_NAME", "ShardInfo", "ShardLoader", "conversion_skips", "is_shard_source", "list_shards", "open_shards",
           "read_shard_metadata", "write_shards"]

#: Name of the index a folder of shards carries (sample counts; written by :func:`write_shards`).
INDEX_NAME = "index.json"
INDEX_FORMAT = "unimlip_kit-shards"
#: Member extensions read as the image of a sample (first match in this order).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "tiff", "tif", "bmp", "dcm", "dicom", "nii", "nii.gz")
_EXT_OF_SUFFIX = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp",
                  ".dcm": "dcm", ".dicom": "dcm", ".nii": "nii"}
_BRACE = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator skips these members


class ShardInfo(NamedTuple):
    """One tar shard and its number of samples.

    Example:
        >>> ShardInfo("/data/roco-000000.tar", 1000).samples
        1000
    """

    path: str
    samples: int


# ----------------------------------------------------------------------------- writing


def _image_ext(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return "nii.gz"
    ext = _EXT_OF_SUFFIX.get(path.suffix.lower())
    if ext is None and not path.suffix and image_format(path) == "dicom":  # suffix-less DICOM (magic bytes)
        ext = "dcm"
    return ext


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    records: Iterable[ImageTextRecord],
    out_dir: str | os.PathLike,
    *,
    max_per_shard: int = 1000,
    prefix: str = "shard",
    skips: SkipCounter | None = None,
    progress: bool = False,
    overwrite: bool = False,
    source: str = "",
) -> list[ShardInfo]:
    """Write ``records`` to ``<out_dir>/<prefix>-000000.tar, ...`` (WebDataset layout) and ``index.json``.

    At most ``max_per_shard`` samples per shard, in record order. A record whose image cannot be read
    is skipped and counted (``missing_image``; ``unsupported_format`` for a suffix no decoder knows);
    decode failures are found when reading (or up front with :func:`verify_records`). Each shard is
    written under a temporary name and renamed, the index last; ``overwrite=False`` refuses a folder
    that already has shards with this prefix.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (8, 8), 50).save(d / "a.png")
        >>> recs = [ImageTextRecord(f"r{i}", d / "a.png", f"caption {i}") for i in range(5)]
        >>> recs.append(ImageTextRecord("gone", d / "missing.png", "x"))
        >>> c = SkipCounter()
        >>> [(Path(s.path).name, s.samples) for s in write_shards(recs, d / "out", max_per_shard=2, skips=c)]
        [('shard-000000.tar', 2), ('shard-000001.tar', 2), ('shard-000002.tar', 1)]
        >>> c.counts()
        {'missing_image': 1}
    """
    if isinstance(max_per_shard, bool) or not isinstance(max_per_shard, int) or max_per_shard < 1:
        raise ValueError(f"max_per_shard must be an integer >= 1, got {max_per_shard!r}")
    if not prefix or not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise ValueError(f"prefix must be a non-empty file name of letters, digits, '_', '-', '.', got {prefix!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob(f"{prefix}-*.tar"))
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds {len(old)} shards named {prefix}-*.tar; pass overwrite=True "
                              "(--overwrite) or another prefix/folder")
    for p in old:
        p.unlink()
    skips = skips if skips is not None else SkipCounter()
    from tqdm.auto import tqdm

    written: list[ShardInfo] = []
    tar: tarfile.TarFile | None = None
    tmp = final = None
    count = key = 0

    def close() -> None:
        nonlocal tar
        if tar is not None:
            tar.close()
            os.replace(tmp, final)
            written.append(ShardInfo(str(final), count))
            tar = None

    try:
        for rec in tqdm(records, desc=f"shards {prefix}", unit="pair", disable=not progress, dynamic_ncols=True):
            path = Path(rec.image_path)
            ext = _image_ext(path)
            if ext is None:
                skips.add(rec.id, "unsupported_format", f"{path}: no decoder for suffix {path.suffix!r} in shards")
                continue
            try:
                data = path.read_bytes()
            except OSError as err:
                skips.add(rec.id, "missing_image", f"{path}: {err.strerror or err}")
                continue
            if tar is None or count == max_per_shard:
                close()
                final = out / f"{prefix}-{len(written):06d}.tar"
                tmp = out / f".{final.name}.tmp"
                tar, count = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT), 0
            meta = {"id": rec.id, "label": int(rec.label), "group": rec.group, "modality": rec.modality,
                    "meta": rec.meta, "image_key": str(rec.image_path)}
            name = f"{key:09d}"
            _member(tar, f"{name}.{ext}", data)
            _member(tar, f"{name}.txt", rec.caption.encode("utf-8"))
            _member(tar, f"{name}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8"))
            count += 1
            key += 1
        close()
    finally:
        if tar is not None:  # an exception mid-shard: leave no half-written shard behind
            tar.close()
            Path(tmp).unlink(missing_ok=True)
    save_json(out / INDEX_NAME, {
        "format": INDEX_FORMAT, "version": 1, "samples": sum(s.samples for s in written),
        "shards": [{"name": Path(s.path).name, "samples": s.samples, "bytes": Path(s.path).stat().st_size} for s in written],
        "source": source, "skipped": skips.to_dict(max_examples=None),  # every id: a run on the shards counts them
    })
    return written


# ----------------------------------------------------------------------------- finding shards


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


# ----------------------------------------------------------------------------- one epoch's order


@dataclass(frozen=True)
class _Plan:
    length: int  # samples of this rank in the epoch
    dropped: int  # samples of the epoch in no rank's range
    streams: tuple[tuple[tuple[int, int, int], ...], ...]  # per stream: (shard index, start, stop) pieces
    lengths: tuple[int, ...]


def _epoch_plan(counts: Sequence[int], epoch: int, *, seed: int, shuffle: bool, rank: int, world_size: int,
                streams: int) -> _Plan:
    if shuffle:
        order = torch.randperm(len(counts), generator=make_generator(derive_seed(seed, "shards", epoch))).tolist()
    else:
        order = list(range(len(counts)))
    total = sum(counts)
    per = total // world_size
    lo, hi = rank * per, (rank + 1) * per
    pieces, pos = [], 0
    for i in order:
        a, b = pos, pos + counts[i]
        s, t = max(a, lo), min(b, hi)
        if s < t:
            pieces.append((i, s - a, t - a))
        pos = b
    per_stream = tuple(tuple(pieces[v::streams]) for v in range(streams))
    lengths = tuple(sum(t - s for _, s, t in p) for p in per_stream)
    return _Plan(per, total - per * world_size, per_stream, lengths)


def _round_of(lengths: Sequence[int], start: int) -> tuple[int, int]:
    """Largest round ``t`` whose first position ``sum(min(L, t))`` is <= ``start``, and that position."""
    lo, hi = 0, max(lengths, default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= start:
            lo = mid
        else:
            hi = mid - 1
    return lo, sum(min(n, lo) for n in lengths)


def _consumed(lengths: Sequence[int], start: int) -> list[int]:
    """Samples each stream has given in the round-robin order before position ``start``."""
    t, pos = _round_of(lengths, start)
    done = [min(n, t) for n in lengths]
    for v, n in enumerate(lengths):
        if n > t and pos < start:
            done[v] += 1
            pos += 1
    return done


def _canonical(lengths: Sequence[int], start: int) -> Iterator[tuple[int, int]]:
    """``(position, stream)`` of the round-robin order over streams of ``lengths``, from ``start``."""
    total = sum(lengths)
    t, pos = _round_of(lengths, start)
    while pos < total:
        for v, n in enumerate(lengths):
            if n > t:
                if pos >= start:
                    yield pos, v
                pos += 1
        t += 1


# ----------------------------------------------------------------------------- reading and decoding


def _open_shard(path: str) -> Any:
    return open(path, "rb")


def _raw_samples(path: str, count: int) -> Iterator[dict[str, Any]]:
    """Exactly ``count`` grouped samples of one shard (webdataset's parser); a truncated shard is padded."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    errors: list[BaseException] = []

    def stop(exn: BaseException) -> bool:  # a tar error: the stream position is lost, stop here
        errors.append(exn)
        return False

    def keep_first(exn: BaseException) -> bool:  # a duplicate member: keep the first one
        return True

    n = 0
    try:
        with _open_shard(path) as fh:
            files = tar_file_expander([{"url": path, "stream": fh}], handler=stop)
            for sample in group_by_keys(files, handler=keep_first):
                if n == count:
                    warnings.warn(f"{path} has more samples than its index says ({count}); reading {count}", stacklevel=2)
                    break
                yield sample
                n += 1
    except OSError as err:
        errors.append(err)
    why = f"{type(errors[0]).__name__}: {errors[0]}" if errors else "the shard ends early"
    for k in range(n, count):
        yield {"__key__": f"#{k}", "__url__": path, "__error__": f"{path}: sample {k} of {count} unreadable ({why})"}


def _scratch_dir() -> str:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def _decode(raw: dict[str, Any], decoder: ImageTextDataset) -> dict[str, Any] | SkippedSample:
    """One grouped tar sample -> the dict :class:`ImageTextDataset` returns, or the skip it would count."""
    where = f"{Path(raw['__url__']).name}:{raw['__key__']}"
    if "__error__" in raw:
        return SkippedSample(where, "bad_row", raw["__error__"])
    meta: Any = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            return SkippedSample(where, "bad_row", f"{where}.json: {err}")
        if not isinstance(meta, dict):
            return SkippedSample(where, "bad_row", f"{where}.json is not an object")
    sid = str(meta.get("id", where))
    label = meta.get("label", -1)
    if isinstance(label, bool) or not isinstance(label, int) or label < -1:
        return SkippedSample(sid, "bad_row", f"{where}.json: label {label!r} is not a class index (or -1)")
    if "txt" not in raw:
        return SkippedSample(sid, "empty_caption", f"{where}: no .txt member")
    try:
        caption = raw["txt"].decode("utf-8")
    except UnicodeDecodeError as err:
        return SkippedSample(sid, "bad_row", f"{where}.txt is not UTF-8 ({err})")
    if not caption.strip():
        return SkippedSample(sid, "empty_caption", f"{where}.txt is empty")
    ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
    if ext is None:
        return SkippedSample(sid, "missing_image", f"{where}: no image member ({', '.join(IMAGE_EXTENSIONS)})")
    data = raw[ext]
    with tempfile.NamedTemporaryFile(suffix="." + ext, dir=_scratch_dir()) as fh:
        fh.write(data)
        fh.flush()
        try:
            image = load_image(fh.name, size=decoder.image_size, channels=decoder.channels, resize=decoder.resize,
                               window=decoder.window, slice_index=decoder.slice_index, slice_axis=decoder.slice_axis,
                               max_pixels=decoder.max_pixels)
        except ImageDecodeError as err:
            return SkippedSample(sid, err.reason, str(err).replace(fh.name, f"{where}.{ext}"))
    if decoder.transform is not None:
        image = decoder.transform(image)
    return {
        "image": image,
        "caption": caption,
        "id": sid,
        "label": label,
        "group": str(meta.get("group", "") or ""),
        "image_key": str(meta.get("image_key") or "sha1:" + hashlib.sha1(data).hexdigest()),
        "modality": str(meta.get("modality", UNKNOWN_MODALITY)),
    }


def _identity(x: Any) -> Any:
    return x


class _EpochSamples(IterableDataset):
    """One epoch of this rank from ``start``: yields lists of ``(position, sample)``; worker p reads streams p::n."""

    def __init__(self, shards: Sequence[ShardInfo], plan: _Plan, start: int, decoder: ImageTextDataset, *,
                 seed: int, epoch: int, shuffle_buffer: int, chunk: int) -> None:
        self.shards, self.plan, self.start, self.decoder = list(shards), plan, start, decoder
        self.seed, self.epoch, self.shuffle_buffer, self.chunk = seed, epoch, shuffle_buffer, chunk

    def _shard(self, i: int) -> Iterator[dict[str, Any]]:
        raw = _raw_samples(self.shards[i].path, self.shards[i].samples)
        if self.shuffle_buffer > 1:
            from webdataset.filters import shuffle

            rng = random.Random(derive_seed(self.seed, "buffer", self.epoch, i))
            raw = shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(raw)
        return raw

    def _stream(self, v: int, skip: int) -> Iterator[dict[str, Any]]:
        for i, a, b in self.plan.streams[v]:
            if skip >= b - a:
                skip -= b - a
                continue
            yield from itertools.islice(self._shard(i), a + skip, b)  # skipped samples are parsed, not decoded
            skip = 0

    def __iter__(self) -> Iterator[list[tuple[int, Any]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        lengths = self.plan.lengths
        done = _consumed(lengths, self.start)
        mine = {v: self._stream(v, done[v]) for v in range(len(lengths)) if v % workers == worker}
        out: list[tuple[int, Any]] = []
        for pos, v in _canonical(lengths, self.start):
            if v in mine:
                out.append((pos, _decode(next(mine[v]), self.decoder)))
                if len(out) == self.chunk:
                    yield out
                    out = []
        if out:
            yield out


class ShardLoader:
    """Batches from tar shards with :class:`EpochSampler`'s contract: ``set_epoch(epoch, start)``, ``len``, ``batch_size``.

    Built by :func:`open_shards` (see the module docstring for the order). ``sampler`` is the loader
    itself, so code written for :func:`build_dataloader` (``loader.sampler.set_epoch(e, start=k)``, then
    ``iter(loader)``) runs unchanged; ``start`` counts this rank's samples of the epoch (``batches done *
    batch_size``). Skips are carried in ``batch["skipped"]`` and also merged into ``skips``.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (4, 4)).save(d / "a.png")
        >>> _ = write_shards([ImageTextRecord(f"r{i}", d / "a.png", f"c {i}") for i in range(7)], d, max_per_shard=3)
        >>> loader = open_shards(d, batch_size=3, image_size=8, seed=0)
        >>> loader.set_epoch(1); full = [b["ids"] for b in loader]
        >>> len(loader), [len(ids) for ids in full]
        (3, [3, 3, 1])
        >>> loader.set_epoch(1, start=3); [b["ids"] for b in loader] == full[1:]
        True
    """

    def __init__(self, shards: Sequence[ShardInfo], batch_size: int, decoder: ImageTextDataset, *, shuffle: bool,
                 seed: int, rank: int, world_size: int, num_workers: int, streams: int, shuffle_buffer: int,
                 drop_last: bool, skips: SkipCounter, chunk: int = 16) -> None:
        self.shards, self.batch_size, self.decoder = list(shards), batch_size, decoder
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.num_workers, self.streams, self.shuffle_buffer = num_workers, streams, shuffle_buffer
        self.drop_last, self.skips, self.chunk = drop_last, skips, chunk
        self.epoch, self.start = 0, 0
        self._counts = [s.samples for s in self.shards]
        self._cached: tuple[int, _Plan] | None = None

    @property
    def sampler(self) -> "ShardLoader":
        """The loader itself (``loader.sampler.set_epoch`` as with :func:`build_dataloader`)."""
        return self

    @property
    def collate_fn(self) -> ImageTextCollate:
        """The folder reader's collate, with this loader's image shape."""
        return self.decoder.collate_fn

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip this rank's first ``start`` samples of it."""
        if int(start) < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.epoch, self.start = int(epoch), int(start)

    def _plan(self, epoch: int) -> _Plan:
        if self._cached is None or self._cached[0] != epoch:  # len() is asked every step (StepStream)
            self._cached = (epoch, _epoch_plan(self._counts, epoch, seed=self.seed, shuffle=self.shuffle,
                                               rank=self.rank, world_size=self.world_size, streams=self.streams))
        return self._cached[1]

    def describe_epoch(self, epoch: int | None = None) -> dict[str, Any]:
        """This rank's part of an epoch: samples, samples no rank gets, and each stream's pieces of shards.

        Example:
            >>> loader = ShardLoader([ShardInfo("a.tar", 5), ShardInfo("b.tar", 4)], 2, ImageTextDataset([]),
            ...     shuffle=False, seed=0, rank=1, world_size=2, num_workers=0, streams=2, shuffle_buffer=0,
            ...     drop_last=False, skips=SkipCounter())
            >>> loader.describe_epoch(0)
            {'epoch': 0, 'samples': 4, 'dropped': 1, 'streams': [[['a.tar', 4, 5]], [['b.tar', 0, 3]]]}
        """
        e = self.epoch if epoch is None else int(epoch)
        plan = self._plan(e)
        return {"epoch": e, "samples": plan.length, "dropped": plan.dropped,
                "streams": [[[self.shards[i].path, a, b] for i, a, b in pieces] for pieces in plan.streams]}

    def samples_per_epoch(self, epoch: int | None = None) -> int:
        """Samples this rank reads in ``epoch`` (the same on every rank)."""
        return self._plan(self.epoch if epoch is None else int(epoch)).length

    def __len__(self) -> int:
        left = max(self.samples_per_epoch() - self.start, 0)
        return left // self.batch_size if self.drop_last else math.ceil(left / self.batch_size)

    def _chunks(self, plan: _Plan) -> Iterator[list[tuple[int, Any]]]:
        data = _EpochSamples(self.shards, plan, self.start, self.decoder, seed=self.seed, epoch=self.epoch,
                             shuffle_buffer=self.shuffle_buffer if self.shuffle else 0, chunk=self.chunk)
        if self.num_workers == 0:
            return iter(data)
        return iter(DataLoader(data, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                               worker_init_fn=seed_worker,
                               generator=make_generator(derive_seed(self.seed, "shard-loader", self.rank, self.epoch, self.start))))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan = self._plan(self.epoch)
        collate = self.collate_fn
        pending: dict[int, Any] = {}
        nxt, batch = self.start, []
        for chunk in self._chunks(plan) if self.start < plan.length else ():
            for pos, sample in chunk:
                pending[pos] = sample
            while nxt in pending:  # the main process restores the round-robin order across workers
                batch.append(pending.pop(nxt))
                nxt += 1
                if len(batch) == self.batch_size:
                    out = collate(batch)
                    self.skips.update_from_batch(out)
                    yield out
                    batch = []
        if pending or nxt < max(plan.length, self.start):
            raise RuntimeError(f"shard stream of epoch {self.epoch} stopped at sample {nxt} of {plan.length} "
                               f"({len(pending)} out of order): a worker ended early")
        if batch and not self.drop_last:
            out = collate(batch)
            self.skips.update_from_batch(out)
            yield out

    def __repr__(self) -> str:
        return (f"ShardLoader({len(self.shards)} shards, batch_size={self.batch_size}, rank={self.rank}/"
                f"{self.world_size}, epoch={self.epoch}, start={self.start})")


def open_shards(
    source: str | os.PathLike | Sequence[ShardInfo],
    batch_size: int,
    *,
    image_size: int | tuple[int, int] | None = 96,
    channels: int = 1,
    resize: Literal["pad", "crop", "stretch"] = "pad",
    window: str | tuple[float, float] | None = None,
    slice_index: int | None = None,
    slice_axis: int = 2,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    streams: int = 8,
    shuffle_buffer: int = 256,
    drop_last: bool = False,
    skips: SkipCounter | None = None,
) -> ShardLoader:
    """A resumable, rank- and worker-split :class:`ShardLoader` over tar shards (``webdataset`` parsing).

    Args:
        source: a folder of shards, a ``.tar`` file, a brace pattern
            (``/data/shards/roco-{000000..000009}.tar``) or :func:`list_shards`'s result.
        batch_size: samples per batch (the last of an epoch may be shorter unless ``drop_last``).
        image_size, channels, resize, window, slice_index, slice_axis, max_pixels, transform: decoding, as
            :class:`ImageTextDataset` (validated the same way).
        shuffle: permute shards per epoch and shuffle inside each (``False``: shard and file order).
        seed, rank, world_size: the order depends on ``(seed, epoch)``; rank ``r`` of ``world_size`` reads
            the ``r``-th equal range of it.
        num_workers: DataLoader worker processes (each reads whole streams; does not change the batches).
        streams: shards read side by side per rank; changes the order, so keep it across a resume.
        shuffle_buffer: samples held per open shard for the in-shard shuffle (memory: ``streams`` x this x
            sample size); ``0`` or ``1`` keeps tar order.
        skips: counter receiving every skipped sample (default: a new one, ``loader.skips``).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (6, 6), 255).save(d / "a.png")
        >>> _ = write_shards([ImageTextRecord(f"r{i}", d / "a.png", "MRI.", label=1) for i in range(4)], d / "s")
        >>> b = next(iter(open_shards(d / "s", batch_size=4, image_size=8, shuffle=False)))
        >>> b["images"].shape, b["ids"], b["labels"].tolist(), b["group_ids"].tolist()
        (torch.Size([4, 1, 8, 8]), ['r0', 'r1', 'r2', 'r3'], [1, 1, 1, 1], [0, 0, 0, 0])
    """
    require("webdataset", "shards", "reading WebDataset shards")
    for name, v, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("streams", streams, 1),
                         ("num_workers", num_workers, 0), ("shuffle_buffer", shuffle_buffer, 0), ("seed", seed, None)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (low is not None and v < low):
            raise ValueError(f"{name} must be an integer{f' >= {low}' if low is not None else ''}, got {v!r}")
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank!r}, world_size={world_size}")
    batch_size, world_size, streams, num_workers, shuffle_buffer, seed, rank = (
        int(v) for v in (batch_size, world_size, streams, num_workers, shuffle_buffer, seed, rank))
    decoder = ImageTextDataset([], image_size=image_size, channels=channels, resize=resize, window=window,
                               slice_index=slice_index, slice_axis=slice_axis, max_pixels=max_pixels, transform=transform)
    if isinstance(source, (str, os.PathLike)):
        shards = list_shards(source)
    else:
        shards = [ShardInfo(str(s.path), int(s.samples)) for s in source]
    total = sum(s.samples for s in shards)
    if total < world_size:
        raise ValueError(f"{len(shards)} shards hold {total} samples: too few for {world_size} ranks")
    return ShardLoader(shards, batch_size, decoder, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                       num_workers=num_workers, streams=streams, shuffle_buffer=shuffle_buffer, drop_last=drop_last,
                       skips=skips if skips is not None else SkipCounter())
