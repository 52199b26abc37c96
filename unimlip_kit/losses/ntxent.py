"""NT-Xent (SimCLR, Chen et al. 2020, arXiv 2002.05709), Uni-Mlip's image self-supervision term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unimlip_kit.distributed import all_gather_with_grad, is_distributed
from unimlip_kit.losses.infonce import _info_nce
from unimlip_kit.utils.checks import check_paired, check_positive

__all__ = ["NTXentLoss", "nt_xent_loss"]


def nt_xent_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    *,
    gather_distributed: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    r"""SimCLR's normalised temperature-scaled cross-entropy over two views.

    With :math:`z = \mathrm{normalize}([z_1; z_2])` (2N rows) and
    :math:`\mathrm{sim}_{ij} = z_i\cdot z_j/\tau`, anchor i's positive is its
    other view :math:`p(i) = (i+N) \bmod 2N`; its 2N−2 negatives are every
    other row except itself:

    .. math::
        \mathcal L = \frac1{2N}\sum_{i=1}^{2N} -\log
        \frac{e^{\mathrm{sim}_{i,p(i)}}}{\sum_{j\ne i} e^{\mathrm{sim}_{ij}}}

    Under ``torch.distributed`` the views of all ranks are gathered (global
    negatives). ``backend`` as in :func:`unimlip_kit.ops.contrastive_lse`.

    Example:
        >>> z1 = torch.randn(4, 8); z2 = z1 + 0.01 * torch.randn(4, 8)
        >>> bool(nt_xent_loss(z1, z2, 0.1) < nt_xent_loss(z1, torch.randn(4, 8), 0.1))
        True
    """
    check_paired(z1, z2, ("z1", "z2"))
    t = check_positive(temperature, "temperature")
    if gather_distributed and is_distributed():
        z1, z2 = all_gather_with_grad(z1).tensor, all_gather_with_grad(z2).tensor
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    scale = torch.tensor(1.0 / t, dtype=torch.float64 if z.dtype == torch.float64 else torch.float32, device=z.device)
    return _info_nce(z, z, scale, n, True, False, 0.0, backend).loss


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss`; called ``loss(z1, z2)``.

    Example:
        >>> NTXentLoss(temperature=0.5)(torch.randn(3, 4), torch.randn(3, 4)).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.1, *, gather_distributed: bool = True, backend: str | None = None) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, "temperature")
        self.gather_distributed = gather_distributed
        self.backend = backend

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(
            z1, z2, self.temperature, gather_distributed=self.gather_distributed, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
