"""Per-instance, reproducible random streams for kornia-based augmentations.

kornia samples augmentation parameters from torch's *global* generators and has
no per-instance generator (kornia #4427). Our transforms take
``generator: int | torch.Generator | None``:

* ``None`` — parameters come from torch's global RNG, exactly as in kornia, so
  :func:`unimlip_kit.utils.seed_everything` governs them and DataLoader workers
  differ because torch seeds each worker differently.
* an ``int`` seed or a ``torch.Generator`` (from which one 63-bit base seed is
  drawn at construction) — call ``k`` of the transform samples its parameters
  with torch's RNG temporarily re-seeded to
  ``derive_seed(base, "call", k, *stream_keys)`` inside
  :func:`torch.random.fork_rng`; the global RNG state is restored afterwards, so
  a seeded transform never perturbs (or is perturbed by) anything else.
  Inside a DataLoader worker the worker id and the worker's torch seed
  (``get_worker_info().seed``, drawn afresh from the main process's RNG for every
  epoch's iterator) are mixed in, and under ``torch.distributed`` the rank, so
  copies of one seeded transform never repeat a stream across workers, ranks or
  epochs (MONAI #398, #1068), while ``seed_everything(seed)`` still makes a run
  reproducible. ``manual_seed(s)`` restarts the stream.

Replaying the last draw (``aug(x, params=aug._params)``) samples nothing and
does not advance the stream.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Tuple

import torch

from unimlip_kit.utils.seeding import derive_seed

__all__ = ["SeededMixin", "base_seed", "forked_rng"]


def base_seed(generator: int | torch.Generator | None) -> int | None:
    """The base seed of a stream: the int itself, one draw from a Generator, or ``None``.

    Example:
        >>> base_seed(7), base_seed(None)
        (7, None)
        >>> g = torch.Generator().manual_seed(0)
        >>> base_seed(g) == base_seed(torch.Generator().manual_seed(0))
        True
    """
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be an int seed, a torch.Generator or None, got {type(generator).__name__}")
    return int(generator)


def _stream_keys() -> Tuple[object, ...]:
    info = torch.utils.data.get_worker_info()
    keys: Tuple[object, ...] = ()
    if info is not None:
        # info.seed = the DataLoader's per-iterator base seed + worker id: differs per epoch, reproducible
        keys += ("worker", int(info.id), int(getattr(info, "seed", 0)))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        keys += ("rank", int(torch.distributed.get_rank()))
    return keys


@contextlib.contextmanager
def forked_rng(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block with torch's RNG for ``device`` (and the CPU) seeded to ``seed``, then restore it.

    Example:
        >>> before = torch.get_rng_state()
        >>> with forked_rng(3):
        ...     a = torch.rand(2)
        >>> with forked_rng(3):
        ...     b = torch.rand(2)
        >>> torch.equal(a, b), torch.equal(before, torch.get_rng_state())
        (True, True)
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.default_generator.manual_seed(seed)
            torch.cuda.default_generators[index].manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield


class SeededMixin:
    """Mixin placed *before* a kornia augmentation base: seeds ``forward_parameters`` per call.

    Subclasses call ``self._init_seed(generator)`` in ``__init__``. See the module
    docstring for the exact stream definition.

    Example:
        >>> from unimlip_kit.augment import RandomGamma
        >>> aug = RandomGamma(p=1.0, generator=0)
        >>> x = torch.rand(2, 1, 8, 8)
        >>> y1 = aug(x); _ = aug.manual_seed(0); y2 = aug(x)
        >>> torch.equal(y1, y2)
        True
    """

    _seed: int | None = None
    _calls: int = 0

    def _init_seed(self, generator: int | torch.Generator | None) -> None:
        self._seed = base_seed(generator)
        self._calls = 0

    def manual_seed(self, seed: int | torch.Generator | None) -> "SeededMixin":
        """Restart this transform's stream from ``seed`` (``None``: use torch's global RNG)."""
        self._init_seed(seed)
        return self

    def forward_parameters(self, batch_shape: Tuple[int, ...]) -> Dict[str, Any]:
        if self._seed is None:
            return super().forward_parameters(batch_shape)  # type: ignore[misc]
        seed = derive_seed(self._seed, "call", self._calls, *_stream_keys())
        self._calls += 1
        with forked_rng(seed, getattr(self, "device", "cpu")):
            return super().forward_parameters(batch_shape)  # type: ignore[misc]
