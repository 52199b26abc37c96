"""Value ranges and input checks: float images carry a stated range, integers convert without loss.

Intensity transforms never assume [0, 1] (kornia #4430): each takes a
``value_range=(lo, hi)`` and works on ``(x - lo) / (hi - lo)`` internally.
Integer images (uint8, 16-bit X-ray/CT stored as uint16) map their dtype's full
range linearly onto ``value_range``; float32 holds every uint16 value exactly and
``from_float`` rounds back, so ``from_float(to_float(x), x.dtype)`` is ``x``.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

__all__ = ["INTEGER_MAX", "as_value_range", "check_images", "from_float", "to_float"]

#: Integer dtypes we accept and the value their full range ends at.
INTEGER_MAX = {torch.uint8: 255, torch.uint16: 65535}

ValueRange = Tuple[float, float]


def as_value_range(value_range: Sequence[float], name: str = "value_range") -> ValueRange:
    """Validate ``(lo, hi)`` (finite, ``lo < hi``) and return it as floats.

    Example:
        >>> as_value_range((-1024, 3071))
        (-1024.0, 3071.0)
        >>> as_value_range((1, 0))
        Traceback (most recent call last):
        ...
        ValueError: value_range must be (lo, hi) with finite lo < hi, got (1, 0)
    """
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi), got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be (lo, hi) with finite lo < hi, got {tuple(value_range)!r}")
    return lo, hi


def check_images(images: torch.Tensor, name: str = "images", channels: Sequence[int] = (1, 3)) -> None:
    """Raise unless ``images`` is a (B, C, H, W) tensor with C in ``channels`` (grey or RGB), H, W >= 1.

    An empty batch (B = 0) is valid: transforms return it unchanged.

    Example:
        >>> check_images(torch.zeros(2, 1, 4, 4))
        >>> check_images(torch.zeros(2, 4, 4, 4))
        Traceback (most recent call last):
        ...
        ValueError: images must have 1 (grey) or 3 (RGB) channels in dim 1, got shape (2, 4, 4, 4)
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be a 4-D (B, C, H, W) tensor, got ndim={images.ndim} with shape {tuple(images.shape)}")
    if images.shape[1] not in tuple(channels):
        want = " or ".join(f"{c} ({'grey' if c == 1 else 'RGB'})" for c in channels)
        raise ValueError(f"{name} must have {want} channels in dim 1, got shape {tuple(images.shape)}")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"{name} has an empty spatial dimension: shape {tuple(images.shape)} (H and W must be >= 1)")
    if images.dtype not in INTEGER_MAX and not images.is_floating_point():
        raise ValueError(
            f"{name} must be floating point, uint8 or uint16, got {images.dtype} (shape {tuple(images.shape)}); "
            "convert signed CT data to Hounsfield units as float first"
        )


def to_float(
    images: torch.Tensor, value_range: Sequence[float] = (0.0, 1.0), dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8/uint16 -> float on ``value_range`` (dtype maximum maps to ``hi``); floats pass through.

    Example:
        >>> to_float(torch.tensor([0, 255], dtype=torch.uint8))
        tensor([0., 1.])
        >>> to_float(torch.tensor([0, 65535], dtype=torch.uint16), (-1024, 3071))
        tensor([-1024.,  3071.])
    """
    lo, hi = as_value_range(value_range)
    if images.is_floating_point():
        return images
    if images.dtype not in INTEGER_MAX:
        raise ValueError(f"images must be floating point, uint8 or uint16, got {images.dtype}")
    top = INTEGER_MAX[images.dtype]
    work = torch.float64 if dtype == torch.float64 else torch.float32
    out = images.to(work) / top
    if (lo, hi) != (0.0, 1.0):
        out = out * (hi - lo) + lo
    return out.to(dtype)


def from_float(images: torch.Tensor, dtype: torch.dtype, value_range: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """Inverse of :func:`to_float`: clip to ``value_range``, scale, round to uint8/uint16.

    Example:
        >>> x = torch.arange(0, 65536, 4097).to(torch.uint16)
        >>> torch.equal(from_float(to_float(x), torch.uint16), x)
        True
    """
    lo, hi = as_value_range(value_range)
    if dtype not in INTEGER_MAX:
        raise ValueError(f"dtype must be one of {sorted(map(str, INTEGER_MAX))}, got {dtype}")
    top = INTEGER_MAX[dtype]
    unit = (images.to(torch.float64) - lo) / (hi - lo)
    return torch.round(unit.clamp(0.0, 1.0) * top).to(torch.int32).to(dtype)
