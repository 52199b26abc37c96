"""Base class of our intensity transforms: kornia's contract plus a stated value range and a seed.

``apply_transform(input, params, flags)`` maps the input to unit range with
``flags["value_range"] = (lo, hi)``, calls :meth:`RangeIntensityAugmentation.apply_unit`
(a pure function of the sampled ``params``), clamps to [0, 1] and maps back, so
the output stays in the declared range and parameters replay exactly
(``aug(x, params=aug._params)``). Per-sample scalars are sampled by kornia's
``PlainUniformGenerator``; whole-image noise fields are drawn in
``generate_parameters`` so they are stored and replayed too.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Sequence

import torch
from kornia.augmentation import IntensityAugmentationBase2D

from unimlip_kit.augment.ranges import as_value_range
from unimlip_kit.augment.seeded import SeededMixin

__all__ = ["RangeIntensityAugmentation", "per_sample"]


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample params ``(B,)`` or ``(B, K)`` to broadcast over ``like`` (B, C, H, W).

    Example:
        >>> per_sample(torch.ones(2), torch.zeros(2, 1, 4, 4)).shape
        torch.Size([2, 1, 1, 1])
    """
    v = values.to(device=like.device, dtype=like.dtype)
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1))) if v.ndim == 1 else v


class RangeIntensityAugmentation(SeededMixin, IntensityAugmentationBase2D):
    """kornia ``IntensityAugmentationBase2D`` working in a declared ``value_range``.

    Subclasses set ``self._param_generator`` and implement ``apply_unit(unit, params, flags)``
    on images scaled to [0, 1]. ``colour = True`` marks transforms that need RGB.

    Args:
        value_range: ``(lo, hi)`` of the input; required, never assumed.
        p: per-sample probability of applying the transform.
        same_on_batch: share one draw across the batch.
        keepdim: kornia's ``keepdim``.
        generator: ``int`` seed, ``torch.Generator`` or ``None`` (global RNG); see
            :mod:`unimlip_kit.augment.seeded`.
    """

    colour: ClassVar[bool] = False

    def __init__(
        self,
        value_range: Sequence[float],
        *,
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.flags = {"value_range": as_value_range(value_range)}
        self._init_seed(generator)

    def apply_unit(self, unit: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]) -> torch.Tensor:
        """The transform on images in [0, 1]; the result is clamped to [0, 1] by the caller."""
        raise NotImplementedError

    def apply_transform(
        self,
        input: torch.Tensor,
        params: Dict[str, torch.Tensor],
        flags: Dict[str, Any],
        transform: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        lo, hi = flags["value_range"]
        unit = input if (lo, hi) == (0.0, 1.0) else (input - lo) / (hi - lo)
        out = self.apply_unit(unit, params, flags).clamp(0.0, 1.0)
        return out if (lo, hi) == (0.0, 1.0) else out * (hi - lo) + lo

    def _field(self, shape: Sequence[int], channels: int) -> torch.Tensor:
        """A standard-normal field ``(B, channels, H, W)`` (shared across the batch if ``same_on_batch``)."""
        b, _, h, w = shape
        if self.same_on_batch:
            return torch.randn(1, channels, h, w, device=self.device, dtype=self.dtype).expand(b, channels, h, w)
        return torch.randn(b, channels, h, w, device=self.device, dtype=self.dtype)
