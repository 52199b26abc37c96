"""HED stain jitter for RGB H&E pathology images (Tellez et al. 2018, arXiv 1808.05896).

Colour deconvolution (Ruifrok & Johnston 2001): optical density
``OD = -log(max(I, eps))`` per RGB channel is ``OD = s @ M`` with ``M`` the
row-normalised haematoxylin, eosin and DAB absorbance vectors, so stain
concentrations are ``s = OD @ M^-1``. Each sample draws ``alpha ~ U(1 - a, 1 + a)``
and ``beta ~ U(-b, b)`` per stain; ``s' = alpha * s + beta`` and
``I' = exp(-s' @ M)``. Batched: one ``einsum`` per direction.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from unimlip_kit.augment.base import RangeIntensityAugmentation

__all__ = ["RGB_FROM_HED", "RandomHEDJitter"]

_OD = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
#: Row-normalised absorbance vectors of haematoxylin, eosin and DAB (Ruifrok & Johnston 2001).
RGB_FROM_HED = _OD / _OD.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_EPS = 1e-6


class RandomHEDJitter(RangeIntensityAugmentation):
    """Per-sample stain concentration scale ``alpha`` and shift ``beta`` in HED space; RGB only.

    Example:
        >>> x = torch.rand(4, 3, 8, 8) * 0.8 + 0.1
        >>> same = RandomHEDJitter(alpha=0.0, beta=0.0, p=1.0)(x)
        >>> torch.allclose(same, x, atol=1e-5)
        True
        >>> RandomHEDJitter(p=1.0)(torch.rand(1, 1, 8, 8))
        Traceback (most recent call last):
        ...
        ValueError: RandomHEDJitter is a colour operation and needs RGB images (C=3), got shape (1, 1, 8, 8)
    """

    colour = True

    def __init__(
        self,
        alpha: float = 0.05,
        beta: float = 0.05,
        value_range: Sequence[float] = (0.0, 1.0),
        *,
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(value_range, p=p, same_on_batch=same_on_batch, keepdim=keepdim, generator=generator)
        if not 0 <= alpha < 1 or beta < 0:
            raise ValueError(f"need 0 <= alpha < 1 and beta >= 0, got alpha={alpha}, beta={beta}")
        self.flags.update(alpha=float(alpha), beta=float(beta))

    def generate_parameters(self, batch_shape: Tuple[int, ...]) -> Dict[str, torch.Tensor]:
        n = 1 if self.same_on_batch else batch_shape[0]
        u = torch.rand(n, 2, 3, device=self.device, dtype=self.dtype) * 2 - 1
        u = u.expand(batch_shape[0], 2, 3)
        return {"alpha": 1.0 + u[:, 0] * self.flags["alpha"], "beta": u[:, 1] * self.flags["beta"]}

    def apply_transform(
        self,
        input: torch.Tensor,
        params: Dict[str, torch.Tensor],
        flags: Dict[str, Any],
        transform: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if input.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__} is a colour operation and needs RGB images (C=3), got shape {tuple(input.shape)}"
            )
        return super().apply_transform(input, params, flags, transform)

    def apply_unit(self, unit: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]) -> torch.Tensor:
        # od' = M^T (alpha * (M_inv^T od) + beta) is affine in od: fold it into one 3x3 matrix and offset per sample
        m = RGB_FROM_HED.to(unit.device, torch.float64)
        m_inv = _HED_FROM_RGB.to(unit.device, torch.float64)
        alpha = params["alpha"].to(unit.device, torch.float64)
        beta = params["beta"].to(unit.device, torch.float64)
        a = (m.T[None] * alpha[:, None, :]) @ m_inv.T  # (B, 3, 3): M^T diag(alpha) M_inv^T
        c = (beta @ m)[:, :, None]  # (B, 3, 1): M^T beta
        b, ch, h, w = unit.shape
        od = unit.clamp_min(_EPS).log_().neg_().reshape(b, ch, h * w)
        od2 = torch.baddbmm(c.to(unit.dtype), a.to(unit.dtype), od)
        return od2.neg_().exp_().reshape(b, ch, h, w)
