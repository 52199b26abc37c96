"""Additive Gaussian, Rician (MRI magnitude) and multiplicative speckle (ultrasound) noise.

All three draw a per-sample ``sigma ~ U(sigma)`` (a fraction of the value
range) and a per-sample seed in ``generate_parameters``; the standard-normal
field ``(1, H, W)`` per component is drawn from that seed when the sample is
transformed, so ``_params`` replays the noise exactly while samples the ``p``
gate skips cost nothing. One field is shared by all channels: grey images stay grey.

* Gaussian: ``u + sigma * n``.
* Rician (Gudbjartsson & Patz 1995): the magnitude of a complex signal with
  Gaussian noise in both parts, ``sqrt((u + sigma * n1)^2 + (sigma * n2)^2)``.
* Speckle: ``u * (1 + sigma * n)``, multiplicative noise as in B-mode ultrasound.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
from kornia.augmentation.random_generator import PlainUniformGenerator

from unimlip_kit.augment.base import RangeIntensityAugmentation, per_sample

__all__ = ["RandomGaussianNoise", "RandomRicianNoise", "RandomSpeckleNoise"]


class _NoiseBase(RangeIntensityAugmentation):
    fields: int = 1

    def __init__(
        self,
        sigma: Tuple[float, float] = (0.0, 0.03),
        value_range: Sequence[float] = (0.0, 1.0),
        *,
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(value_range, p=p, same_on_batch=same_on_batch, keepdim=keepdim, generator=generator)
        s0, s1 = (float(s) for s in sigma)
        if not 0 <= s0 <= s1:
            raise ValueError(f"sigma must be (s0, s1) with 0 <= s0 <= s1 (fractions of the value range), got {sigma!r}")
        self._param_generator = PlainUniformGenerator(((s0, s1), "sigma", None, None))

    def generate_parameters(self, batch_shape: Tuple[int, ...]) -> Dict[str, torch.Tensor]:
        params = super().generate_parameters(batch_shape)
        params["noise_seed"] = self._field_seeds(batch_shape[0])
        return params

    def _sigma_noise(self, unit: torch.Tensor, params: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        return per_sample(params["sigma"], unit), self.noise_fields(params["noise_seed"], self.fields, unit)


class RandomGaussianNoise(_NoiseBase):
    """Additive Gaussian noise ``u + sigma * n``, sigma a fraction of the value range.

    Example:
        >>> aug = RandomGaussianNoise(sigma=(0.05, 0.05), value_range=(0, 4095), p=1.0, generator=0)
        >>> x = torch.full((2, 1, 64, 64), 2048.0)
        >>> y = aug(x)
        >>> round(float((y - x).std() / 4095), 2)
        0.05
    """

    def apply_unit(self, unit: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]) -> torch.Tensor:
        sigma, noise = self._sigma_noise(unit, params)
        if noise.shape == unit.shape:  # the field is a fresh tensor: reuse it for the output
            return noise.mul_(sigma).add_(unit)
        return torch.addcmul(unit, sigma, noise)  # one field shared by the channels (grey stays grey)


class RandomRicianNoise(_NoiseBase):
    """Rician noise for MRI magnitude images: ``sqrt((u + s n1)^2 + (s n2)^2)``.

    Example:
        >>> aug = RandomRicianNoise(sigma=(0.05, 0.05), p=1.0, generator=0)
        >>> y = aug(torch.zeros(2, 1, 32, 32))
        >>> bool((y >= 0).all()), bool(y.mean() > 0)  # noise floor in the background
        (True, True)
    """

    fields = 2

    def apply_unit(self, unit: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]) -> torch.Tensor:
        sigma, noise = self._sigma_noise(unit, params)
        real = torch.addcmul(unit, sigma, noise[:, 0:1])
        return real.hypot_(noise[:, 1:2].mul_(sigma))


class RandomSpeckleNoise(_NoiseBase):
    """Multiplicative speckle for ultrasound: ``u * (1 + sigma * n)``.

    Example:
        >>> aug = RandomSpeckleNoise(sigma=(0.2, 0.2), p=1.0, generator=0)
        >>> torch.equal(aug(torch.zeros(1, 1, 8, 8)), torch.zeros(1, 1, 8, 8))  # black stays black
        True
    """

    def apply_unit(self, unit: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]) -> torch.Tensor:
        sigma, noise = self._sigma_noise(unit, params)
        factor = noise.mul_(sigma).add_(1.0)
        return factor.mul_(unit) if noise.shape == unit.shape else unit * factor
