r"""All-gather with gradient for contrastive losses, including unequal per-rank batches.

Gradient semantics (written down because lightly shipped two bugs here,
lightly #1528 and #1977):

* Every rank gathers the embeddings of all ranks and, in the *global* mode,
  computes the same loss :math:`L` over the concatenated batch.
* Backward of the gather all-reduces (SUM) the incoming gradient over ranks
  and returns this rank's slice. Each rank's autograd graph holds the same
  :math:`L`, so rank r receives :math:`W\,\partial L/\partial x_r`.
* DDP then *averages* parameter gradients over the W ranks:
  :math:`\tfrac1W\sum_r W\,\partial L/\partial x_r\,\partial x_r/\partial\theta = dL/d\theta`,
  exactly the single-process gradient on the concatenated batch, for any
  batch sizes. A learnable logit scale is not gathered: each rank computes
  the full :math:`\partial L/\partial s`, and the average of W equal values is
  that value.
* In the *local* mode (open_clip's ``local_loss=True``) rank r only keeps its
  own rows; :func:`unimlip_kit.losses.image_text_contrastive_loss` weights
  them by :math:`n_r W / N` so DDP's average is again the global mean, also
  for unequal batch sizes (open_clip's ``arange + rank*B`` labels assume equal ones;
  here label offsets come from prefix sums of the gathered sizes).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

__all__ = ["GatheredBatch", "all_gather_with_grad", "any_rank", "get_rank", "get_world_size", "is_distributed"]


def is_distributed() -> bool:
    """Whether torch.distributed is initialised with more than one rank.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """``flag`` OR-ed over all ranks: one all-reduce (MAX) under torch.distributed, none in a single process.

    Every rank must call it at the same point, so that a decision one rank takes (skip a batch, stop on a
    NaN) is taken by all, and no rank is left waiting in a later collective.

    Example:
        >>> any_rank(True), any_rank(False)
        (True, False)
    """
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def get_rank() -> int:
    """This process's rank (0 when not distributed).

    Example:
        >>> get_rank()
        0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of ranks (1 when not distributed).

    Example:
        >>> get_world_size()
        1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GatheredBatch(NamedTuple):
    """The concatenation of all ranks' rows, the per-rank sizes and this rank's row offset.

    Example:
        >>> GatheredBatch(torch.zeros(5, 2), [2, 3], 2).offset  # rank 1 of sizes [2, 3]
        2
    """

    tensor: torch.Tensor
    sizes: list[int]
    offset: int


def _gather_sizes(x: torch.Tensor, group: object | None) -> list[int]:
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    all_n = [torch.zeros_like(n) for _ in range(dist.get_world_size(group))]
    dist.all_gather(all_n, n, group=group)
    return [int(v.item()) for v in all_n]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, sizes, offset):  # type: ignore[override]
        padded = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        ctx.slice = (offset, x.shape[0])
        ctx.group = group
        return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad = grad_out.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        offset, n = ctx.slice
        return grad[offset : offset + n], None, None, None


def all_gather_with_grad(x: torch.Tensor, group: object | None = None) -> GatheredBatch:
    """Gather ``x`` (n_r, ...) from every rank into (Σ n_r, ...), keeping the autograd graph.

    Ranks may hold different batch sizes (at least one row each). The backward all-reduces the gradient
    and returns this rank's slice (semantics in the module docstring). Outside
    an initialised process group it returns ``x`` unchanged.

    Example:
        >>> g = all_gather_with_grad(torch.ones(3, 2))  # single process: identity
        >>> g.tensor.shape, g.sizes, g.offset
        (torch.Size([3, 2]), [3], 0)
    """
    if not is_distributed():
        return GatheredBatch(x, [x.shape[0]], 0)
    sizes = _gather_sizes(x, group)
    if min(sizes) == 0:
        raise ValueError(f"every rank needs at least one pair to gather; per-rank batch sizes are {sizes}")
    offset = sum(sizes[: dist.get_rank(group)])
    return GatheredBatch(_GatherWithGrad.apply(x, group, tuple(sizes), offset), sizes, offset)
