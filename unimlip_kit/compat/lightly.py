r"""lightly's ``NTXentLoss`` with lightly's name, arguments and semantics, computed by unimlip_kit's core.

Switch with one import::

    # from lightly.loss import NTXentLoss
    from unimlip_kit.compat.lightly import NTXentLoss

``NTXentLoss(temperature=0.5, memory_bank_size=0, gather_distributed=False)``,
called ``loss(out0, out1)``:

* ``memory_bank_size=0`` — SimCLR (Chen et al. 2020): both views are anchors,
  the positive is the other view, every other embedding of the batch a
  negative. With ``gather_distributed`` the negatives come from all ranks
  (gathered with gradient) and each rank averages over its own anchors, as
  lightly does (DDP's average is then the global loss, for equal batches).
* ``memory_bank_size=K`` or ``(K, dim)`` — MoCo (He et al. 2020): the anchors are
  ``out0``, the positives ``out1`` and the negatives a queue of earlier ``out1``
  (:class:`unimlip_kit.losses.MemoryBank`: random unit vectors at first, read
  before and updated after the loss, only when ``out0`` requires a gradient;
  with ``gather_distributed`` all ranks' ``out1`` are enqueued). An int K takes
  the feature dimension from the first batch.

As in lightly the temperature may be negative (only ``|t| < 1e-8`` is
rejected) and the bank is not part of the ``state_dict``. The logits are
never materialised (O(N·D) memory for the in-batch form, O(N·D + K·D) with a
bank). ``backend`` (keyword only) selects the contrastive core's backend.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import distributed as torch_dist
from torch import nn

from unimlip_kit.distributed import all_gather_with_grad, is_distributed
from unimlip_kit.losses.infonce import _info_nce
from unimlip_kit.losses.memory_bank import MemoryBank, _memory_bank_loss
from unimlip_kit.utils.checks import check_paired

__all__ = ["NTXentLoss"]


class NTXentLoss(nn.Module):
    """lightly's contrastive cross-entropy (SimCLR's NT-Xent, or MoCo's with a memory bank).

    Example:
        >>> loss_fn = NTXentLoss(temperature=0.5)
        >>> out0, out1 = torch.randn(4, 8), torch.randn(4, 8)
        >>> z = torch.nn.functional.normalize(torch.cat([out0, out1]), dim=1)
        >>> sim = (z @ z.T / 0.5).fill_diagonal_(float("-inf"))
        >>> ref = torch.nn.functional.cross_entropy(sim, torch.arange(8).roll(4))
        >>> torch.allclose(loss_fn(out0, out1), ref, atol=1e-5)
        True
        >>> moco = NTXentLoss(memory_bank_size=(16, 8))
        >>> _ = moco(out0.requires_grad_(), out1); int(moco.memory_bank.ptr)
        4
    """

    def __init__(
        self,
        temperature: float = 0.5,
        memory_bank_size: int | Sequence[int] = 0,
        gather_distributed: bool = False,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.memory_bank = MemoryBank(memory_bank_size, gather_distributed=gather_distributed, persistent=False)
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed
        self.backend = backend
        self.eps = 1e-8
        if abs(self.temperature) < self.eps:
            raise ValueError(f"Illegal temperature: abs({temperature}) < 1e-8")
        if gather_distributed and not torch_dist.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available. Please set "
                "gather_distributed=False or install a torch version with distributed support."
            )

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        return torch.tensor(1.0 / self.temperature, dtype=dtype, device=like.device)

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        check_paired(out0, out1, ("out0", "out1"))
        z0, z1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        scale = self._scale(z0)
        if self.memory_bank.enabled:
            negatives = self.memory_bank.negatives(like=z1)
            loss = _memory_bank_loss(z0, z1, negatives, scale, self.backend)
            if out0.requires_grad:
                self.memory_bank.enqueue(z1.detach())
            return loss
        n = z0.shape[0]
        if not (self.gather_distributed and is_distributed()):
            z = torch.cat([z0, z1], dim=0)
            return _info_nce(z, z, scale, n, True, False, 0.0, self.backend).loss
        # This rank's 2n anchors against all ranks' 2N views; each anchor's own embedding is excluded.
        g0, g1 = all_gather_with_grad(z0), all_gather_with_grad(z1)
        big_n, off = g0.tensor.shape[0], g0.offset
        views = torch.cat([g0.tensor, g1.tensor], dim=0)
        # Roll the columns so the anchor's own embedding lies on the main diagonal and its positive N further.
        cols0 = torch.roll(views, -off, dims=0)
        cols1 = torch.roll(views, -(big_n + off), dims=0)
        l0 = _info_nce(z0, cols0, scale, big_n, True, False, 0.0, self.backend).loss
        l1 = _info_nce(z1, cols1, scale, big_n, True, False, 0.0, self.backend).loss
        return (l0 + l1) / 2
