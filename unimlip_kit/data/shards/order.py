"""One epoch's order, as positions only (no tar is opened): which pieces of which shards each stream of a rank reads.

:func:`_epoch_plan` permutes the shards by ``(seed, epoch)``, cuts the epoch into ``world_size`` equal
ranges and deals this rank's pieces of shards to its streams; :func:`_canonical` is the round-robin order
over the streams and :func:`_consumed` how far each stream got before a resumed epoch's ``start``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from unimlip_kit.utils.seeding import derive_seed, make_generator


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
