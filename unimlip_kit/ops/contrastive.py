"""The public functional op under every contrastive loss: row/column log-sum-exp of scaled similarities.

Layering (see docs/ARCHITECTURE.md): kernels (``unimlip_kit.kernels``, Triton)
and the pure-PyTorch tiled autograd Function (``ops.tiled``) implement it;
this module validates inputs and dispatches through :mod:`unimlip_kit.backends`;
the losses in :mod:`unimlip_kit.losses` assemble InfoNCE from it.
"""

from __future__ import annotations

import torch

from unimlip_kit.backends import resolve_backend
from unimlip_kit.utils.checks import as_scale_tensor, check_paired

__all__ = ["contrastive_lse", "dispatch_contrastive_lse", "dispatch_contrastive_lse_with_positives"]


def contrastive_lse(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: float | torch.Tensor,
    *,
    exclude_diagonal: bool = False,
    need_cols: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Row and column log-sum-exp of :math:`L = s\,A B^\top` for A (M, D), B (N, D).

    .. math::
        \mathrm{row}_i = \log \sum_{j} e^{L_{ij}}, \qquad
        \mathrm{col}_j = \log \sum_{i} e^{L_{ij}}

    (``exclude_diagonal`` drops :math:`i=j`; ``need_cols=False`` skips the
    columns). Differentiable in A, B and a tensor ``logit_scale``. Results are
    float32 (float64 for float64 inputs). ``backend``: ``None`` (best that can
    run), ``"tiled"``, ``"triton"`` or ``"reference"`` (materialises L).

    Example:
        >>> a = torch.randn(6, 4); b = torch.randn(6, 4)
        >>> rows, cols = contrastive_lse(a, b, 10.0)
        >>> rows.shape, cols.shape
        (torch.Size([6]), torch.Size([6]))
        >>> torch.allclose(rows, torch.logsumexp(10 * a @ b.T, 1), atol=1e-4)
        True
    """
    check_paired(a, b, ("a", "b"), same_batch=False)
    if exclude_diagonal and a.shape[0] != b.shape[0]:
        raise ValueError(f"exclude_diagonal needs a square problem, got a {tuple(a.shape)} and b {tuple(b.shape)}")
    scale = as_scale_tensor(logit_scale, a)
    return dispatch_contrastive_lse(a, b, scale, exclude_diagonal, need_cols, backend)


def dispatch_contrastive_lse(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    exclude_diagonal: bool,
    need_cols: bool,
    backend: str | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`contrastive_lse` without input validation, for callers that validated already.

    Example:
        >>> rows, cols = dispatch_contrastive_lse(torch.eye(2), torch.eye(2), torch.tensor(1.0), False, False, None)
        >>> cols is None
        True
    """
    _, impl = resolve_backend("contrastive_lse", backend, a.device, a.dtype)
    return impl(a, b, scale, exclude_diagonal, need_cols)


def dispatch_contrastive_lse_with_positives(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    exclude_diagonal: bool,
    need_cols: bool,
    positive_offset: int,
    backend: str | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    r"""Row/column LSE and the positive logits :math:`s\,a_i\cdot b_{(i+k) mod N}` (validated inputs).

    The tiled backend fuses the positives into its tiles (no extra N×D
    gradient buffers); other backends get them from a row-wise dot product.

    Example:
        >>> a = torch.eye(3)
        >>> rows, cols, pos = dispatch_contrastive_lse_with_positives(a, a, torch.tensor(2.0), False, True, 0, None)
        >>> pos
        tensor([2., 2., 2.])
    """
    name, impl = resolve_backend("contrastive_lse", backend, a.device, a.dtype)
    if name == "tiled":
        from unimlip_kit.ops.tiled import contrastive_lse_tiled_with_positives

        return contrastive_lse_tiled_with_positives(a, b, scale, exclude_diagonal, need_cols, positive_offset)
    from unimlip_kit.ops.tiled import positive_rows

    rows, cols = impl(a, b, scale, exclude_diagonal, need_cols)
    acc = rows.dtype
    pos = scale.to(acc) * torch.linalg.vecdot(a.to(acc), positive_rows(b.to(acc), a.shape[0], positive_offset))
    return rows, cols, pos
