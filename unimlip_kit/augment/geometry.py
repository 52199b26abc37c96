"""Small affine and gentle elastic deformation: kornia's transforms with conservative defaults and a seed.

Medical images tolerate only small geometric changes (a tilted chest X-ray is
still plausible; a 45-degree one is not). Padding defaults to ``"border"`` so it
does not depend on the value range (zero would be water in HU, not air).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from kornia.augmentation import RandomAffine, RandomElasticTransform

from unimlip_kit.augment.seeded import SeededMixin

__all__ = ["GentleElastic", "SmallAffine"]


class SmallAffine(SeededMixin, RandomAffine):
    """kornia ``RandomAffine`` with rotation ``±degrees``, translation ``translate`` and ``scale`` kept small.

    Example:
        >>> aug = SmallAffine(degrees=5.0, p=1.0, generator=0)
        >>> aug(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self,
        degrees: float = 10.0,
        translate: Optional[Tuple[float, float]] = (0.05, 0.05),
        scale: Optional[Tuple[float, float]] = (0.95, 1.05),
        shear: Optional[float] = None,
        *,
        padding_mode: str = "border",
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(
            degrees=degrees, translate=translate, scale=scale, shear=shear, padding_mode=padding_mode,
            p=p, same_on_batch=same_on_batch, keepdim=keepdim,
        )
        self._init_seed(generator)


class GentleElastic(SeededMixin, RandomElasticTransform):
    """kornia ``RandomElasticTransform`` (smoothed random displacement field) with a small ``alpha``.

    Example:
        >>> aug = GentleElastic(p=1.0, generator=0)
        >>> x = torch.rand(1, 1, 32, 32)
        >>> torch.equal(aug(x), aug(x, params=aug._params))
        True
    """

    def __init__(
        self,
        alpha: float = 0.5,
        sigma: float = 16.0,
        *,
        padding_mode: str = "border",
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        k = 2 * int(2 * sigma) + 1
        super().__init__(
            kernel_size=(k, k), sigma=(float(sigma), float(sigma)), alpha=(float(alpha), float(alpha)),
            padding_mode=padding_mode, p=p, same_on_batch=same_on_batch, keepdim=keepdim,
        )
        self._init_seed(generator)
