r"""The InfoNCE core shared by ITC, NT-Xent and SimCSE (van den Oord et al. 2018, arXiv 1807.03748).

All three are cross-entropies over a scaled similarity matrix
:math:`L = s\,A B^\top` whose positives sit on a shifted diagonal. The
log-sum-exp part comes from :func:`unimlip_kit.ops.contrastive_lse` (tiled,
Triton or reference backend); the positive logits and the label-smoothing
term are O(N·D) and computed here with plain autograd.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from unimlip_kit.ops.contrastive import dispatch_contrastive_lse_with_positives
from unimlip_kit.utils.checks import as_scale_tensor, check_paired

__all__ = ["ContrastiveOutput", "info_nce"]
# _info_nce: the same on validated inputs, used by the losses so validation runs once per call


class ContrastiveOutput(NamedTuple):
    """A contrastive loss and its two directional terms (``col_loss`` is ``None`` if one-directional).

    Example:
        >>> out = info_nce(torch.eye(3), torch.eye(3), 5.0)
        >>> bool(torch.isclose(out.loss, (out.row_loss + out.col_loss) / 2))
        True
    """

    loss: torch.Tensor
    row_loss: torch.Tensor
    col_loss: torch.Tensor | None


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: float | torch.Tensor,
    *,
    positive_offset: int = 0,
    exclude_diagonal: bool = False,
    symmetric: bool = True,
    label_smoothing: float = 0.0,
    backend: str | None = None,
) -> ContrastiveOutput:
    r"""InfoNCE over :math:`L = s\,A B^\top` with positives :math:`(i,\ (i+k) \bmod N)`.

    Row direction (A → B), averaged over the M rows:

    .. math::
        \ell^{r}_i = \log\sum_{j} e^{L_{ij}} - L_{i,p(i)}

    and with label smoothing :math:`\varepsilon` (as ``F.cross_entropy``):
    :math:`(1-\varepsilon)\,\ell^r_i + \varepsilon\,(\log\sum_j e^{L_{ij}} - \tfrac1C\sum_j L_{ij})`.
    ``symmetric=True`` (square only) also averages the column direction and
    returns the mean of both. ``exclude_diagonal`` removes :math:`j = i` from
    the candidates (NT-Xent). Embeddings are used as given.

    Example:
        >>> a, b = torch.randn(4, 3), torch.randn(4, 3)
        >>> out = info_nce(a, b, 2.0)
        >>> ref = (torch.nn.functional.cross_entropy(2 * a @ b.T, torch.arange(4))
        ...        + torch.nn.functional.cross_entropy(2 * b @ a.T, torch.arange(4))) / 2
        >>> torch.allclose(out.loss, ref, atol=1e-5)
        True
    """
    check_paired(a, b, ("a", "b"), same_batch=symmetric or exclude_diagonal)
    return _info_nce(a, b, as_scale_tensor(logit_scale, a), positive_offset, exclude_diagonal, symmetric,
                     label_smoothing, backend)


def _info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    positive_offset: int,
    exclude_diagonal: bool,
    symmetric: bool,
    label_smoothing: float,
    backend: str | None,
) -> ContrastiveOutput:
    """:func:`info_nce` on validated inputs (``scale`` already a 0-dim tensor)."""
    m, n = a.shape[0], b.shape[0]
    if not 0 <= positive_offset < n:
        raise ValueError(f"positive_offset must be in [0, {n}) for b of shape {tuple(b.shape)}, got {positive_offset}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if exclude_diagonal and positive_offset == 0:
        raise ValueError("exclude_diagonal with positive_offset=0 would remove every positive")
    rows, cols, pos_logit = dispatch_contrastive_lse_with_positives(
        a, b, scale, exclude_diagonal, symmetric, positive_offset, backend
    )
    acc = rows.dtype
    s = scale.to(acc)
    a_acc, b_acc = a.to(acc), b.to(acc)
    n_classes = n - (1 if exclude_diagonal else 0)
    if label_smoothing > 0 and n_classes < 1:
        raise ValueError("label smoothing needs at least one candidate per row")

    def _smooth(lse: torch.Tensor, pos_l: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        terms = lse - pos_l
        if label_smoothing > 0:
            total = x @ y.sum(dim=0)
            if exclude_diagonal:
                total = total - (x * y).sum(dim=1)
            mean_logit = s * total / n_classes
            terms = (1 - label_smoothing) * terms + label_smoothing * (lse - mean_logit)
        return terms

    row_loss = _smooth(rows, pos_logit, a_acc, b_acc).mean()
    if not symmetric:
        return ContrastiveOutput(row_loss, row_loss, None)
    col_pos = torch.roll(pos_logit, positive_offset) if positive_offset else pos_logit
    col_loss = _smooth(cols, col_pos, b_acc, a_acc).mean()
    return ContrastiveOutput((row_loss + col_loss) / 2, row_loss, col_loss)
