r"""NT-Xent with a memory bank of past embeddings (MoCo, He et al. 2020, arXiv 1911.05722).

A first-in-first-out queue holds the normalised second-view embeddings of
earlier batches; each anchor's negatives are the whole queue, its positive
its own second view:

.. math::
    \ell_i = -\log \frac{e^{q_i\cdot k_i/\tau}}{e^{q_i\cdot k_i/\tau} + \sum_{m=1}^{K} e^{q_i\cdot n_m/\tau}}

The queue is read *before* this batch is added (a batch is never its own
negative) and updated after the loss, with the semantics of lightly's
``MemoryBankModule``: random unit vectors at the start, batches written at a
moving pointer, and a batch that reaches the end fills the tail and sends the
pointer back to 0 (the rest of that batch is not stored). The log-sum-exp
over the K negatives comes from the contrastive core
(:func:`unimlip_kit.ops.contrastive_lse`), so no N×K matrix is held.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unimlip_kit.distributed import all_gather_with_grad, is_distributed
from unimlip_kit.ops.contrastive import dispatch_contrastive_lse
from unimlip_kit.utils.checks import check_embeddings, check_paired, check_positive

__all__ = ["MemoryBank", "MemoryBankNTXentLoss", "memory_bank_nt_xent_loss"]


class MemoryBank(nn.Module):
    """A FIFO queue of ``size`` embeddings (the ``bank`` buffer, (size, dim)) for MoCo-style negatives.

    ``size`` is an int (the feature dimension is taken from the first batch) or a
    ``(size, dim)`` pair (allocated now); 0 disables the bank. The initial
    entries are random unit vectors drawn from torch's global RNG (as lightly
    does). ``gather_distributed=True`` enqueues the batches of all ranks (so
    every rank holds the same queue). ``bank`` and ``ptr`` are saved in the
    ``state_dict`` when ``persistent`` (exact resumption).

    Example:
        >>> bank = MemoryBank((4, 2))
        >>> before = bank.negatives()
        >>> bank.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        >>> bank.bank[:3].tolist(), int(bank.ptr)
        ([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], 3)
        >>> bank.enqueue(torch.zeros(2, 2))  # reaches the end: fills the tail, pointer back to 0
        >>> bank.bank[3].tolist(), int(bank.ptr)
        ([0.0, 0.0], 0)
    """

    bank: torch.Tensor
    ptr: torch.Tensor

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        gather_distributed: bool = False,
        persistent: bool = True,
    ) -> None:
        super().__init__()
        dims = (int(size),) if isinstance(size, int) else tuple(int(s) for s in size)
        if isinstance(size, bool) or not 1 <= len(dims) <= 2 or any(d < 0 for d in dims):
            raise ValueError(f"memory bank size must be an int >= 0 or a (size, dim) pair of ints >= 0, got {size!r}")
        if len(dims) == 2 and dims[0] > 0 and dims[1] == 0:
            raise ValueError(f"memory bank feature dimension must be > 0, got {size!r}")
        self.size = dims[0]
        self.gather_distributed = gather_distributed
        self.register_buffer("bank", torch.empty(0, dtype=torch.float32), persistent=persistent)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=persistent)
        if len(dims) == 2 and self.size > 0:
            self._allocate(dims[1], torch.float32, torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.size > 0

    @property
    def initialised(self) -> bool:
        return self.bank.ndim == 2

    @torch.no_grad()
    def _allocate(self, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.bank = F.normalize(torch.randn(self.size, dim).to(dtype=dtype, device=device), dim=-1)
        self.ptr = torch.zeros((), dtype=torch.long, device=device)

    def _check(self, x: torch.Tensor) -> None:
        check_embeddings(x, "memory bank batch")
        if not self.initialised:
            self._allocate(x.shape[1], torch.float32 if x.dtype != torch.float64 else torch.float64, x.device)
        if x.shape[1] != self.bank.shape[1]:
            raise ValueError(f"the memory bank holds dimension {self.bank.shape[1]}, got a batch of shape {tuple(x.shape)}")

    def negatives(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """A detached copy of the queue (size, dim), in ``like``'s dtype and device if given.

        Example:
            >>> MemoryBank((3, 5)).negatives().shape
            torch.Size([3, 5])
        """
        if not self.enabled:
            raise ValueError("the memory bank has size 0 (disabled)")
        if like is not None:
            self._check(like)
        if not self.initialised:
            raise ValueError("the memory bank's dimension is not known yet: pass like= or enqueue a batch first")
        out = self.bank.detach().clone()
        return out if like is None else out.to(dtype=like.dtype, device=like.device)

    @torch.no_grad()
    def enqueue(self, batch: torch.Tensor) -> None:
        """Write ``batch`` (n, dim) at the pointer (lightly's rule at the end of the queue, see the module doc).

        Example:
            >>> bank = MemoryBank(2)
            >>> bank.enqueue(torch.ones(1, 3)); bank.bank.shape, int(bank.ptr)
            (torch.Size([2, 3]), 1)
        """
        if not self.enabled:
            return
        self._check(batch)
        if self.gather_distributed and is_distributed():
            batch = all_gather_with_grad(batch.detach().contiguous()).tensor
        batch = batch.detach().to(dtype=self.bank.dtype, device=self.bank.device)
        p, n, k = int(self.ptr), batch.shape[0], self.size
        if p + n >= k:
            self.bank[p:] = batch[: k - p]
            self.ptr.zero_()
        else:
            self.bank[p : p + n] = batch
            self.ptr.fill_(p + n)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        bank = state_dict.get(prefix + "bank")
        if bank is not None and tuple(bank.shape) != tuple(self.bank.shape):  # a lazily sized bank takes the saved shape
            if bank.ndim != 2 or bank.shape[0] != self.size:
                raise ValueError(f"saved memory bank of shape {tuple(bank.shape)} does not fit size {self.size}")
            self.bank = torch.empty_like(bank, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        dim = self.bank.shape[1] if self.initialised else "lazy"
        return f"size={self.size}, dim={dim}, gather_distributed={self.gather_distributed}"


def _memory_bank_loss(
    q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, scale: torch.Tensor, backend: str | None
) -> torch.Tensor:
    """Mean over rows of ``logaddexp(pos, lse_neg) - pos`` on normalised q, k (validated; any real scale)."""
    lse_neg, _ = dispatch_contrastive_lse(q, negatives, scale, False, False, backend)
    acc = lse_neg.dtype
    pos = scale.to(acc) * torch.linalg.vecdot(q.to(acc), k.to(acc))
    return (torch.logaddexp(pos, lse_neg) - pos).mean()


def memory_bank_nt_xent_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.1,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    r"""NT-Xent of anchors ``z1`` against their positives ``z2`` and K queued ``negatives`` (MoCo's InfoNCE).

    ``z1`` and ``z2`` (N, D) are L2-normalised here; ``negatives`` (K, D) are
    used as given (a :class:`MemoryBank` stores normalised embeddings) and get
    no gradient. Formula in the module docstring.

    Example:
        >>> z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
        >>> neg = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
        >>> q, k = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
        >>> logits = torch.cat([(q * k).sum(1, keepdim=True), q @ neg.T], 1) / 0.1
        >>> ref = torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
        >>> torch.allclose(memory_bank_nt_xent_loss(z1, z2, neg, 0.1), ref, atol=1e-5)
        True
    """
    check_paired(z1, z2, ("z1", "z2"))
    check_embeddings(negatives, "negatives")
    if negatives.shape[1] != z1.shape[1]:
        raise ValueError(f"negatives must have dimension D={z1.shape[1]}, got shape {tuple(negatives.shape)}")
    t = check_positive(temperature, "temperature")
    q, k = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    scale = torch.tensor(1.0 / t, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32, device=q.device)
    return _memory_bank_loss(q, k, negatives.detach().to(device=q.device, dtype=q.dtype), scale, backend)


class MemoryBankNTXentLoss(nn.Module):
    """NT-Xent with a :class:`MemoryBank` of past second views; called ``loss(z1, z2)``.

    The negatives are the queue as it was before this call; afterwards the
    normalised ``z2`` is enqueued — only when ``z1`` requires a gradient
    (training), so evaluating the loss leaves the queue unchanged (lightly's
    rule). ``gather_distributed`` enqueues all ranks' ``z2``.

    Example:
        >>> loss_fn = MemoryBankNTXentLoss(8, temperature=0.2)
        >>> z1 = torch.randn(4, 3, requires_grad=True)
        >>> loss = loss_fn(z1, torch.randn(4, 3)); loss.backward()
        >>> loss_fn.memory_bank.bank.shape, int(loss_fn.memory_bank.ptr)
        (torch.Size([8, 3]), 4)
    """

    def __init__(
        self,
        memory_bank_size: int | Sequence[int],
        temperature: float = 0.1,
        *,
        gather_distributed: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.memory_bank = MemoryBank(memory_bank_size, gather_distributed=gather_distributed)
        if not self.memory_bank.enabled:
            raise ValueError("memory_bank_size must be > 0 (use NTXentLoss for in-batch negatives)")
        self.temperature = check_positive(temperature, "temperature")
        self.backend = backend

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        check_paired(z1, z2, ("z1", "z2"))
        negatives = self.memory_bank.negatives(like=z1)
        loss = memory_bank_nt_xent_loss(z1, z2, negatives, self.temperature, backend=self.backend)
        if z1.requires_grad:
            self.memory_bank.enqueue(F.normalize(z2.detach(), dim=1))
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
