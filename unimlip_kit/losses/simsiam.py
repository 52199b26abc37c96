"""SimSiam's symmetric negative-cosine loss (Chen & He 2021, arXiv 2011.10566), usable BYOL-style."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unimlip_kit.utils.checks import check_paired

__all__ = ["SimSiamLoss", "simsiam_loss"]


def _neg_cos(p: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    acc = torch.float64 if p.dtype == torch.float64 else torch.float32
    p, z = F.normalize(p.to(acc), dim=1, eps=eps), F.normalize(z.detach().to(acc), dim=1, eps=eps)
    return -(p * z).sum(dim=1).mean()


def simsiam_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, *, eps: float = 1e-8
) -> torch.Tensor:
    r"""SimSiam's loss with stop-gradient on the targets.

    .. math::
        \mathcal L = \tfrac12\big(-\cos(p_1, \mathrm{sg}(z_2)) - \cos(p_2, \mathrm{sg}(z_1))\big),
        \qquad \cos(p, z) = \tfrac1N\sum_i \frac{p_i\cdot z_i}{\lVert p_i\rVert\,\lVert z_i\rVert}

    ``p`` are the predictor outputs, ``z`` the projector outputs of the two
    views; no gradient ever flows into ``z1``/``z2`` (Chen & He, Alg. 1). The
    value lies in [−1, 1] (−1 at collapse-free perfect agreement). With ``z``
    from a momentum (EMA) encoder this is BYOL's objective (Grill et al. 2020,
    arXiv 2006.07733): BYOL's symmetrised ``‖p̄ − z̄‖²`` equals ``4 + 4·L``.
    Computed in float32 (float64 for float64 inputs).

    Example:
        >>> p1, p2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
        >>> z1, z2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
        >>> loss = simsiam_loss(p1, p2, z1, z2)
        >>> -1.0 <= loss.item() <= 1.0
        True
        >>> round(simsiam_loss(p1, p2, p2, p1).item(), 4)
        -1.0
        >>> loss.backward(); z1.grad is None and p1.grad is not None
        True
    """
    check_paired(p1, z2, ("p1", "z2"))
    check_paired(p2, z1, ("p2", "z1"))
    check_paired(p1, p2, ("p1", "p2"))
    return 0.5 * (_neg_cos(p1, z2, eps) + _neg_cos(p2, z1, eps))


class SimSiamLoss(nn.Module):
    """Module form of :func:`simsiam_loss`; called ``loss(p1, p2, z1, z2)``.

    Example:
        >>> x = torch.randn(3, 5)
        >>> round(float(SimSiamLoss()(x, x, x, x)), 4)
        -1.0
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return simsiam_loss(p1, p2, z1, z2, eps=self.eps)
