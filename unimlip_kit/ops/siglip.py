r"""The pairwise sigmoid loss of SigLIP (Zhai et al. 2023, arXiv 2303.15343) without an N×N matrix.

For logits :math:`L_{ij} = s\,a_i\cdot b_j + \beta` and labels :math:`z_{ij} = +1`
on the positives :math:`j = (i + k) \bmod N` and :math:`-1` elsewhere, the op returns

.. math::
    S = \sum_{i,j} \log\big(1 + e^{-z_{ij} L_{ij}}\big) = \sum_{i,j} \operatorname{softplus}(-z_{ij} L_{ij})

(the loss divides it by the number of rows). Every term is independent, so
the tiled backend walks :math:`L` in tiles and sums; the positives are the
tile's (wrapped) shifted diagonal, negated before the softplus, so no
cancellation happens for confident positives. Backward recomputes each tile
and forms :math:`G_{ij} = \partial S/\partial L_{ij} = -z_{ij}\,\sigma(-z_{ij} L_{ij})`,
then :math:`\partial A = s\,G B`, :math:`\partial B = s\,G^\top A`,
:math:`\partial s = \sum_i a_i\cdot(G B)_i` and :math:`\partial\beta = \sum_{ij} G_{ij}`:
8·M·N·D FLOPs in all and O((M + N)·D + tile) memory, as the InfoNCE core
(:mod:`unimlip_kit.ops.tiled`, whose tile sizes it shares). Half-precision
inputs are computed in float32 tiles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unimlip_kit.backends import resolve_backend
from unimlip_kit.ops import tiled
from unimlip_kit.ops.reference import accumulate_dtype
from unimlip_kit.ops.tiled import positive_diagonals
from unimlip_kit.utils.checks import as_scale_tensor, check_finite, check_paired

__all__ = ["dispatch_sigmoid_pair_loss", "sigmoid_pair_loss", "sigmoid_pair_loss_reference", "sigmoid_pair_loss_tiled"]


def _negate_positives(tile: torch.Tensor, i0: int, j0: int, offset: int | None, n: int) -> None:
    if offset is not None:
        for diag, _ in positive_diagonals(tile, i0, j0, offset, n):
            diag.neg_()


class _TiledSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, bias, positive_offset, block_m, block_n):  # type: ignore[override]
        acc = accumulate_dtype(a.dtype)
        m, n = a.shape[0], b.shape[0]
        bm, bn = tiled._blocks(m, n, block_m, block_n)
        s = scale.detach().to(acc)
        beta = bias.detach().to(acc)
        b_acc = b.detach().to(acc)
        dev = a.device
        zero = torch.zeros((), dtype=acc, device=dev)
        tile = torch.empty(bm, bn, dtype=acc, device=dev)
        work = torch.empty(bm, bn, dtype=acc, device=dev)
        total = torch.zeros((), dtype=torch.float64, device=dev)
        with torch.no_grad():
            for i0 in range(0, m, bm):
                i1 = min(m, i0 + bm)
                a_s = a[i0:i1].detach().to(acc) * s
                for j0 in range(0, n, bn):
                    j1 = min(n, j0 + bn)
                    L = tile[: i1 - i0, : j1 - j0]
                    E = work[: i1 - i0, : j1 - j0]
                    torch.mm(a_s, b_acc[j0:j1].T, out=L).add_(beta)
                    _negate_positives(L, i0, j0, positive_offset, n)  # -z * L
                    torch.logaddexp(L, zero, out=E)  # softplus(-z L), exact for any magnitude
                    total += E.sum(dtype=torch.float64) if acc == torch.float64 else E.sum().double()
        ctx.save_for_backward(a, b, scale, bias)
        ctx.cfg = (positive_offset, bm, bn)
        return total.to(acc)

    @staticmethod
    def backward(ctx, g_total):  # type: ignore[override]
        a, b, scale, bias = ctx.saved_tensors
        offset, bm, bn = ctx.cfg
        acc = accumulate_dtype(a.dtype)
        m, n = a.shape[0], b.shape[0]
        dev = a.device
        s = scale.detach().to(acc)
        beta = bias.detach().to(acc)
        a_acc = a.detach().to(acc)
        b_acc = b.detach().to(acc)
        need_a, need_b, need_s, need_beta = ctx.needs_input_grad[:4]
        g_a = torch.zeros(m, a.shape[1], dtype=acc, device=dev) if (need_a or need_s) else None  # G @ B
        g_b = torch.zeros(n, b.shape[1], dtype=acc, device=dev) if need_b else None  # G^T @ A
        g_beta = torch.zeros((), dtype=torch.float64, device=dev)
        tile = torch.empty(bm, bn, dtype=acc, device=dev)
        for i0 in range(0, m, bm):
            i1 = min(m, i0 + bm)
            a_blk = a_acc[i0:i1]
            a_s = a_blk * s
            for j0 in range(0, n, bn):
                j1 = min(n, j0 + bn)
                G = tile[: i1 - i0, : j1 - j0]
                torch.mm(a_s, b_acc[j0:j1].T, out=G).add_(beta)
                _negate_positives(G, i0, j0, offset, n)
                G.sigmoid_()  # sigma(-z L) = |dS/dL|
                _negate_positives(G, i0, j0, offset, n)  # dS/dL = -z sigma(-z L)
                if g_a is not None:
                    g_a[i0:i1].addmm_(G, b_acc[j0:j1])
                if g_b is not None:
                    g_b[j0:j1].addmm_(G.T, a_blk)
                if need_beta:
                    g_beta += G.sum(dtype=torch.float64) if acc == torch.float64 else G.sum().double()
        g = g_total.to(acc)
        grad_scale = (g * torch.vdot(g_a.flatten(), a_acc.flatten())).to(scale.dtype) if need_s else None
        grad_bias = (g * g_beta.to(acc)).to(bias.dtype) if need_beta else None
        grad_a = g_a.mul_(g * s).to(a.dtype) if need_a else None
        grad_b = g_b.mul_(g * s).to(b.dtype) if need_b else None
        return grad_a, grad_b, grad_scale, grad_bias, None, None, None


def sigmoid_pair_loss_tiled(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    positive_offset: int | None = 0,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    r"""Tiled :math:`S = \sum_{ij}\operatorname{softplus}(-z_{ij}(s\,a_i\cdot b_j + \beta))`, O((M+N)·D) memory.

    ``positive_offset=None`` treats every pair as a negative (open_clip's other-rank
    chunks). Differentiable in ``a``, ``b``, ``scale`` and ``bias`` (0-dim tensors).

    Example:
        >>> a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
        >>> s, beta = torch.tensor(4.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
        >>> got = sigmoid_pair_loss_tiled(a, b, s, beta, block_m=2, block_n=3)
        >>> torch.allclose(got, sigmoid_pair_loss_reference(a, b, s, beta))
        True
    """
    return _TiledSigmoid.apply(a, b, scale, bias, positive_offset, block_m, block_n)


def sigmoid_pair_loss_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    positive_offset: int | None = 0,
) -> torch.Tensor:
    r"""The oracle: materialises :math:`L` (M×N) and sums :math:`-\log\sigma(z_{ij} L_{ij})`; autograd gives gradients.

    Example:
        >>> a = torch.eye(2, dtype=torch.float64); s = torch.tensor(1.0, dtype=torch.float64)
        >>> got = sigmoid_pair_loss_reference(a, a, s, torch.tensor(0.0, dtype=torch.float64))
        >>> expected = 2 * torch.log1p(torch.exp(torch.tensor(-1.0, dtype=torch.float64))) + 2 * torch.log(torch.tensor(2.0, dtype=torch.float64))
        >>> torch.allclose(got, expected)
        True
    """
    acc = accumulate_dtype(a.dtype)
    logits = scale.to(acc) * (a.to(acc) @ b.to(acc).T) + bias.to(acc)
    m, n = logits.shape
    z = -torch.ones(m, n, dtype=acc, device=logits.device)
    if positive_offset is not None:
        rows = torch.arange(m, device=logits.device)
        z[rows, (rows + positive_offset) % n] = 1.0
    return -F.logsigmoid(z * logits).sum()


def dispatch_sigmoid_pair_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    positive_offset: int | None,
    backend: str | None,
) -> torch.Tensor:
    """:func:`sigmoid_pair_loss` on validated inputs (0-dim ``scale`` and ``bias`` tensors).

    Example:
        >>> one = torch.tensor(1.0)
        >>> float(dispatch_sigmoid_pair_loss(torch.zeros(2, 3), torch.zeros(2, 3), one, 0 * one, 0, None))
        2.772...
    """
    _, impl = resolve_backend("sigmoid_pair_loss", backend, a.device, a.dtype)
    return impl(a, b, scale, bias, positive_offset)


def sigmoid_pair_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: float | torch.Tensor,
    logit_bias: float | torch.Tensor = 0.0,
    *,
    positive_offset: int | None = 0,
    backend: str | None = None,
) -> torch.Tensor:
    r"""SigLIP's summed pairwise sigmoid loss over :math:`L = s\,A B^\top + \beta` for A (M, D), B (N, D).

    .. math::
        S = \sum_{i=1}^{M}\sum_{j=1}^{N} \log\big(1 + e^{-z_{ij} L_{ij}}\big),\qquad
        z_{ij} = \begin{cases} +1 & j = (i + k) \bmod N \\ -1 & \text{otherwise} \end{cases}

    with :math:`k` = ``positive_offset`` (``None``: no positives, every pair a
    negative). ``logit_scale`` :math:`s > 0` and ``logit_bias`` :math:`\beta` are
    numbers or 0-dim tensors (a tensor receives its gradient). The result is
    float32 (float64 for float64 inputs). ``backend``: ``None`` (best that can
    run, ``"tiled"``) or ``"reference"`` (materialises L, explicit only).

    Example:
        >>> a, b = torch.randn(6, 4), torch.randn(6, 4)
        >>> labels = 2 * torch.eye(6) - 1
        >>> ref = -torch.nn.functional.logsigmoid(labels * (10 * a @ b.T - 10)).sum()
        >>> torch.allclose(sigmoid_pair_loss(a, b, 10.0, -10.0), ref, rtol=1e-5)
        True
    """
    check_paired(a, b, ("a", "b"), same_batch=False)
    m, n = a.shape[0], b.shape[0]
    if positive_offset is not None:
        if not 0 <= int(positive_offset) < n:
            raise ValueError(f"positive_offset must be in [0, {n}) for b of shape {tuple(b.shape)}, got {positive_offset}")
        if m > n:
            raise ValueError(f"with positives, a may not have more rows than b, got a {tuple(a.shape)} and b {tuple(b.shape)}")
        positive_offset = int(positive_offset)
    scale = as_scale_tensor(logit_scale, a)
    bias = as_bias_tensor(logit_bias, a)
    return dispatch_sigmoid_pair_loss(a, b, scale, bias, positive_offset, backend)


def as_bias_tensor(bias: float | torch.Tensor, like: torch.Tensor, name: str = "logit_bias") -> torch.Tensor:
    """A 0-dim tensor on ``like``'s device for a finite number or 0-dim tensor (keeps a tensor's graph).

    Example:
        >>> as_bias_tensor(-10.0, torch.zeros(2, 2))
        tensor(-10.)
    """
    if isinstance(bias, torch.Tensor):
        if bias.numel() != 1 or bias.ndim > 1:
            raise ValueError(f"{name} must be a number or a 0-dim tensor, got shape {tuple(bias.shape)}")
        out = bias.reshape(())
        check_finite(out.detach(), name)
        return out.to(like.device)
    value = float(bias)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {bias}")
    return torch.tensor(value, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32, device=like.device)
