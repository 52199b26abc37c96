"""Unsupervised SimCSE (Gao et al. 2021, arXiv 2104.08821), Uni-Mlip's text self-supervision term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unimlip_kit.distributed import all_gather_with_grad, is_distributed
from unimlip_kit.losses.infonce import _info_nce
from unimlip_kit.utils.checks import check_paired, check_positive

__all__ = ["SimCSELoss", "simcse_loss"]


def simcse_loss(
    h1: torch.Tensor,
    h2: torch.Tensor,
    temperature: float = 0.05,
    *,
    symmetric: bool = False,
    gather_distributed: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    r"""SimCSE's InfoNCE between two dropout views of the same sentences.

    .. math::
        \mathcal L = \frac1N\sum_i -\log\frac{e^{\cos(h_{1i}, h_{2i})/\tau}}{\sum_j e^{\cos(h_{1i}, h_{2j})/\tau}}

    The paper's objective is one-directional (view 1 → view 2); ``symmetric=True``
    averages it with the 2 → 1 direction. Under ``torch.distributed`` both views
    are gathered from all ranks.

    Example:
        >>> h = torch.randn(6, 16)
        >>> bool(simcse_loss(h, h + 0.01 * torch.randn(6, 16)) < simcse_loss(h, torch.randn(6, 16)))
        True
    """
    check_paired(h1, h2, ("h1", "h2"))
    t = check_positive(temperature, "temperature")
    if gather_distributed and is_distributed():
        h1, h2 = all_gather_with_grad(h1).tensor, all_gather_with_grad(h2).tensor
    a, b = F.normalize(h1, dim=1), F.normalize(h2, dim=1)
    scale = torch.tensor(1.0 / t, dtype=torch.float64 if a.dtype == torch.float64 else torch.float32, device=a.device)
    return _info_nce(a, b, scale, 0, False, symmetric, 0.0, backend).loss


class SimCSELoss(nn.Module):
    """Module form of :func:`simcse_loss`; called ``loss(h1, h2)``.

    Example:
        >>> SimCSELoss(temperature=0.05, symmetric=True)(torch.randn(3, 4), torch.randn(3, 4)).shape
        torch.Size([])
    """

    def __init__(
        self,
        temperature: float = 0.05,
        symmetric: bool = False,
        *,
        gather_distributed: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, "temperature")
        self.symmetric = symmetric
        self.gather_distributed = gather_distributed
        self.backend = backend

    def forward(self, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        return simcse_loss(
            h1,
            h2,
            self.temperature,
            symmetric=self.symmetric,
            gather_distributed=self.gather_distributed,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, symmetric={self.symmetric}"
