"""The project's one seeding convention.

* Every random public function takes ``generator: torch.Generator | None``;
  ``None`` draws from torch's global generator, a generator makes the call
  reproducible without touching global state.
* Runs call :func:`seed_everything` once with the run's seed.
* Anything that needs its own stream (a DataLoader worker, a sample, a rank)
  derives a seed with :func:`derive_seed` from the run seed and names, so
  streams never collide across workers or ranks (MONAI #398, #1068) and the
  same names always give the same stream.
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch

__all__ = ["derive_seed", "make_generator", "seed_everything", "seed_worker"]


def derive_seed(base_seed: int, *keys: object) -> int:
    """A stable 63-bit seed from a base seed and any printable keys (BLAKE2b).

    Example:
        >>> derive_seed(0, "worker", 1) == derive_seed(0, "worker", 1)
        True
        >>> derive_seed(0, "worker", 1) != derive_seed(0, "worker", 2)
        True
    """
    h = hashlib.blake2b(repr((int(base_seed),) + tuple(keys)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator | None:
    """A ``torch.Generator`` seeded with ``seed`` on ``device``, or ``None`` for ``seed=None``.

    Example:
        >>> g = make_generator(3)
        >>> a = torch.rand(2, generator=g); b = torch.rand(2, generator=make_generator(3))
        >>> torch.equal(a, b)
        True
    """
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and all CUDA devices).

    With ``deterministic=True`` also asks torch for deterministic algorithms
    (warn-only, so ops without one still run).

    Example:
        >>> seed_everything(0); x = torch.rand(1)
        >>> seed_everything(0); torch.equal(x, torch.rand(1))
        True
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=seed_worker)``: reseed ``random``/NumPy from torch's per-worker seed.

    torch already gives each worker ``base_seed + worker_id``; this propagates
    it to the libraries torch does not seed.

    Example:
        >>> seed_worker(0)  # outside a worker it just reseeds from torch's initial seed
    """
    s = torch.initial_seed() % (2**32)
    random.seed(s)
    np.random.seed(s)
