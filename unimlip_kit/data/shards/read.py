"""Reading shards: :func:`open_shards` -> :class:`ShardLoader`, batches in one epoch's order.

Tar parsing and grouping by key with ``webdataset`` (a truncated shard padded to its count with skips),
the seeded in-shard shuffle buffer, decoding through :func:`~unimlip_kit.data.load_image` from a scratch
file, DataLoader workers reading whole streams, and the main process restoring the order.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import unimlip_kit.data.shards as _package  # for _open_shard, read at call time (the package is partly imported here)
from unimlip_kit.data.collate import ImageTextCollate
from unimlip_kit.data.dataset import ImageTextDataset, SkippedSample
from unimlip_kit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image
from unimlip_kit.data.records import UNKNOWN_MODALITY
from unimlip_kit.data.shards.find import list_shards
from unimlip_kit.data.shards.layout import IMAGE_EXTENSIONS, ShardInfo
from unimlip_kit.data.shards.order import _canonical, _consumed, _epoch_plan, _Plan
from unimlip_kit.data.skips import SkipCounter
from unimlip_kit.utils.optional import require
from unimlip_kit.utils.seeding import derive_seed, make_generator, seed_worker


def _open_shard(path: str) -> Any:
    """The shard's bytes. Called as ``unimlip_kit.data.shards._open_shard``, so that a test replacing it there
    (``monkeypatch.setattr(shards, "_open_shard", ...)``) reaches the reader and its forked workers."""
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
        with _package._open_shard(path) as fh:
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

    Built by :func:`open_shards` (the order: :mod:`unimlip_kit.data.shards`). ``sampler`` is the loader
    itself, so code written for :func:`build_dataloader` (``loader.sampler.set_epoch(e, start=k)``, then
    ``iter(loader)``) runs unchanged; ``start`` counts this rank's samples of the epoch (``batches done *
    batch_size``). Skips are carried in ``batch["skipped"]`` and also merged into ``skips``.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from unimlip_kit.data import ImageTextRecord, write_shards
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
        >>> from unimlip_kit.data import ImageTextRecord, write_shards
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
