"""Random gamma in a declared value range: ``unit ** gamma`` with log-uniform gamma per sample."""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence, Tuple

import torch
from kornia.augmentation.random_generator import PlainUniformGenerator

from unimlip_kit.augment.base import RangeIntensityAugmentation, per_sample

__all__ = ["RandomGamma"]


class RandomGamma(RangeIntensityAugmentation):
    """``y = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g`` with ``log g ~ U(log g0, log g1)`` per sample.

    Log-uniform sampling makes darkening and brightening equally likely for a
    symmetric range such as ``(0.8, 1.25)``. Grey-safe: the same ``g`` on every channel.

    Example:
        >>> aug = RandomGamma((0.5, 0.5), value_range=(0, 255), p=1.0)
        >>> aug(torch.full((1, 1, 2, 2), 63.75))[0, 0, 0, 0].round(decimals=2)
        tensor(127.5000)
    """

    def __init__(
        self,
        gamma: Tuple[float, float] = (0.8, 1.25),
        value_range: Sequence[float] = (0.0, 1.0),
        *,
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(value_range, p=p, same_on_batch=same_on_batch, keepdim=keepdim, generator=generator)
        g0, g1 = (float(g) for g in gamma)
        if not 0 < g0 <= g1:
            raise ValueError(f"gamma must be (g0, g1) with 0 < g0 <= g1, got {gamma!r}")
        self._param_generator = PlainUniformGenerator(((math.log(g0), math.log(g1)), "log_gamma", None, None))

    def apply_unit(self, unit: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]) -> torch.Tensor:
        # u ** g as exp(g log u), in place on one fresh tensor: ~4x faster than a broadcast pow on CPU (0 stays 0)
        return unit.clamp_min(0.0).log_().mul_(per_sample(params["log_gamma"], unit).exp()).exp_()
