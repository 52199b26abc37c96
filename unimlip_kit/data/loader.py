"""DataLoader construction with the project's seeding rules and resumable, shardable sampling.

:class:`EpochSampler` is a deterministic permutation of ``range(n)`` per
``(seed, epoch)``, sharded across ranks like ``DistributedSampler``, that can
start part-way through an epoch (``set_epoch(epoch, start=k)``): a run resumed
after ``k`` samples of an epoch sees exactly the samples the uninterrupted
run would have, without decoding the skipped ones.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from unimlip_kit.data.collate import collate_image_text
from unimlip_kit.utils.seeding import derive_seed, make_generator, seed_worker

__all__ = ["EpochSampler", "StepStream", "build_dataloader"]


class EpochSampler(Sampler[int]):
    """Indices of one epoch: shuffled by ``derive_seed(seed, "epoch", epoch)``, this rank's shard, from ``start``.

    With ``world_size > 1`` the permutation is padded (``drop_last=False``,
    repeating its head) or truncated (``drop_last=True``) to a multiple of
    ``world_size`` and rank ``r`` takes positions ``r, r + W, ...``.

    Example:
        >>> s = EpochSampler(10, seed=0); s.set_epoch(1)
        >>> full = list(s); s.set_epoch(1, start=4); list(s) == full[4:]
        True
        >>> sorted(list(EpochSampler(5, shuffle=False, rank=0, world_size=2)) + list(EpochSampler(5, shuffle=False, rank=1, world_size=2)))
        [0, 0, 1, 2, 3, 4]
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.n, self.shuffle, self.seed = int(n), shuffle, int(seed)
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip this rank's first ``start`` indices."""
        self.epoch, self.start = int(epoch), int(start)

    def _shard(self) -> list[int]:
        if self.shuffle:
            g = make_generator(derive_seed(self.seed, "epoch", self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world_size > 1:
            if self.drop_last:
                order = order[: (self.n // self.world_size) * self.world_size]
            else:
                total = math.ceil(self.n / self.world_size) * self.world_size
                order = order + (order * math.ceil(total / max(self.n, 1)))[: total - self.n]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard()[self.start :])

    def __len__(self) -> int:
        if self.world_size == 1:
            per = self.n
        elif self.drop_last:
            per = self.n // self.world_size
        else:
            per = math.ceil(self.n / self.world_size)
        return max(per - self.start, 0)


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    pin_memory: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader with :class:`EpochSampler`, ``seed_worker`` and the dataset's collate.

    Call ``loader.sampler.set_epoch(epoch, start=samples_done_this_epoch)`` before each epoch.
    ``drop_last`` applies to both the rank sharding and the last short batch.

    Example:
        >>> ds = [{"image": torch.zeros(1, 2, 2), "caption": f"c{i}", "id": str(i)} for i in range(5)]
        >>> dl = build_dataloader(ds, 2, shuffle=False)
        >>> [b["ids"] for b in dl]
        [['0', '1'], ['2', '3'], ['4']]
    """
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last)
    collate = getattr(dataset, "collate_fn", None) or collate_image_text
    persistent = bool(kwargs.pop("persistent_workers", False)) and num_workers > 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=make_generator(derive_seed(seed, "dataloader", rank)),
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=persistent,
        **kwargs,
    )


class StepStream:
    """Batches of a :func:`build_dataloader` loader in an order that depends only on its seed, resumable anywhere.

    :meth:`next` returns the next batch, starting a new epoch (``sampler.set_epoch(epoch + 1)``) when one
    ends; :meth:`position` is ``{"epoch", "batches_done"}``, and ``StepStream(loader, **position)`` continues
    with exactly the batch the uninterrupted stream would have returned next (the sampler skips the
    consumed samples of the epoch without decoding them).

    Example:
        >>> ds = [{"image": torch.zeros(1, 2, 2), "caption": f"c{i}", "id": str(i)} for i in range(5)]
        >>> dl = build_dataloader(ds, 2, seed=0, drop_last=True)
        >>> s = StepStream(dl); first = [s.next()["ids"] for _ in range(3)]; s.position()
        {'epoch': 1, 'batches_done': 1}
        >>> again = StepStream(dl, epoch=0, batches_done=1)
        >>> [again.next()["ids"] for _ in range(2)] == first[1:]
        True
    """

    def __init__(self, loader: DataLoader, epoch: int = 0, batches_done: int = 0) -> None:
        if not hasattr(loader.sampler, "set_epoch"):
            raise TypeError("StepStream needs a loader whose sampler has set_epoch(epoch, start) (build_dataloader)")
        self.loader, self.epoch, self.done = loader, int(epoch), int(batches_done)
        self._it: Iterator[Any] | None = None

    def next(self) -> dict[str, Any]:
        """The next batch (a new epoch starts when one ends; an empty loader raises ``ValueError``)."""
        if len(self.loader) == 0:
            raise ValueError("StepStream over a loader with no batch")
        while True:
            if self._it is None:
                self.loader.sampler.set_epoch(self.epoch, start=self.done * self.loader.batch_size)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.done, self._it = self.epoch + 1, 0, None
                continue
            self.done += 1
            return batch

    def position(self) -> dict[str, int]:
        """``{"epoch": e, "batches_done": k}``: where a resumed stream continues."""
        return {"epoch": self.epoch, "batches_done": self.done}
