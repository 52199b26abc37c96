"""Brightness and contrast for grey images, in a declared value range."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
from kornia.augmentation.random_generator import PlainUniformGenerator

from unimlip_kit.augment.base import RangeIntensityAugmentation, per_sample

__all__ = ["RandomBrightnessContrast"]


class RandomBrightnessContrast(RangeIntensityAugmentation):
    """``u' = (u - m) * c + m + b`` on ``u = (x - lo) / (hi - lo)``, ``m`` the sample's mean.

    ``b ~ U(-brightness, brightness)`` (a fraction of the range) and
    ``c ~ U(contrast)`` per sample, the same on every channel, so a grey image
    stays grey (no colour jitter). The result is clamped to the value range.

    Example:
        >>> aug = RandomBrightnessContrast(brightness=0.0, contrast=(2.0, 2.0), value_range=(0, 100), p=1.0)
        >>> aug(torch.tensor([[[[40.0, 60.0]]]])).round(decimals=3)
        tensor([[[[30., 70.]]]])
    """

    def __init__(
        self,
        brightness: float = 0.1,
        contrast: Tuple[float, float] = (0.8, 1.2),
        value_range: Sequence[float] = (0.0, 1.0),
        *,
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(value_range, p=p, same_on_batch=same_on_batch, keepdim=keepdim, generator=generator)
        c0, c1 = (float(c) for c in contrast)
        if brightness < 0 or not 0 <= c0 <= c1:
            raise ValueError(f"need brightness >= 0 and contrast (c0, c1) with 0 <= c0 <= c1, got {brightness}, {contrast!r}")
        self._param_generator = PlainUniformGenerator(
            ((-float(brightness), float(brightness)), "brightness", None, None), ((c0, c1), "contrast", None, None)
        )

    def apply_unit(self, unit: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]) -> torch.Tensor:
        mean = unit.mean(dim=(1, 2, 3), keepdim=True)
        c = per_sample(params["contrast"], unit)
        # (u - m) c + m + b  ==  u c + (m (1 - c) + b), one fused pass over the image
        return torch.addcmul(mean * (1 - c) + per_sample(params["brightness"], unit), unit, c)
