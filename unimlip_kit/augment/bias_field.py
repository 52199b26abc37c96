"""Smooth multiplicative bias field (MRI intensity inhomogeneity).

Following the polynomial model used by TorchIO's RandomBiasField (Sudre et al.
2017): ``log f(x, y) = sum_{i + j <= order} c_ij P_i(x) P_j(y)`` over Legendre
polynomials on ``x, y in [-1, 1]``, with ``c_ij ~ U(-coefficients, coefficients)``
per sample; the image becomes ``u * f``. The coefficients are the stored params;
the basis is computed once per image size.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Sequence, Tuple

import torch

from unimlip_kit.augment.base import RangeIntensityAugmentation

__all__ = ["RandomBiasField", "legendre_basis"]


def _legendre(t: torch.Tensor, n: int) -> torch.Tensor:
    polys = [torch.ones_like(t), t]
    for k in range(1, n):
        polys.append(((2 * k + 1) * t * polys[k] - k * polys[k - 1]) / (k + 1))
    return torch.stack(polys[: n + 1])


@functools.lru_cache(maxsize=16)
def legendre_basis(height: int, width: int, order: int) -> torch.Tensor:
    """``(K, H, W)`` products ``P_i(y) P_j(x)`` for ``i + j <= order`` (float64, CPU, cached).

    Example:
        >>> legendre_basis(4, 5, 2).shape  # 1 + 2 + 3 terms
        torch.Size([6, 4, 5])
    """
    py = _legendre(torch.linspace(-1, 1, height, dtype=torch.float64), order)
    px = _legendre(torch.linspace(-1, 1, width, dtype=torch.float64), order)
    terms = [py[i][:, None] * px[j][None, :] for i in range(order + 1) for j in range(order + 1 - i)]
    return torch.stack(terms)


class RandomBiasField(RangeIntensityAugmentation):
    """Multiply by ``exp`` of a random low-order polynomial: a smooth bias field per sample.

    Example:
        >>> aug = RandomBiasField(coefficients=0.3, order=3, p=1.0, generator=0)
        >>> y = aug(torch.full((2, 1, 16, 16), 0.5))
        >>> y.shape, bool((y != 0.5).any())
        (torch.Size([2, 1, 16, 16]), True)
    """

    def __init__(
        self,
        coefficients: float = 0.3,
        order: int = 3,
        value_range: Sequence[float] = (0.0, 1.0),
        *,
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(value_range, p=p, same_on_batch=same_on_batch, keepdim=keepdim, generator=generator)
        if coefficients < 0 or int(order) < 0:
            raise ValueError(f"coefficients must be >= 0 and order >= 0, got {coefficients}, {order}")
        self.flags.update(coefficients=float(coefficients), order=int(order))

    def generate_parameters(self, batch_shape: Tuple[int, ...]) -> Dict[str, torch.Tensor]:
        k = (self.flags["order"] + 1) * (self.flags["order"] + 2) // 2
        n = 1 if self.same_on_batch else batch_shape[0]
        c = (torch.rand(n, k, device=self.device, dtype=self.dtype) * 2 - 1) * self.flags["coefficients"]
        return {"coefficients": c.expand(batch_shape[0], k)}

    def apply_unit(self, unit: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]) -> torch.Tensor:
        basis = legendre_basis(unit.shape[-2], unit.shape[-1], flags["order"]).to(unit.device, unit.dtype)
        coef = params["coefficients"].to(unit.device, unit.dtype)
        field = torch.einsum("bk,khw->bhw", coef, basis).exp().unsqueeze(1)
        return unit * field
