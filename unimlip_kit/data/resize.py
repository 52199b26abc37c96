"""Resize a (C, H, W) image tensor to the model's input size: pad, crop or stretch.

The default, ``"pad"`` (letterbox), keeps the whole image: a centre crop can
cut a peripheral finding out of a radiograph, and stretching changes the
aspect of anatomy. Resampling is bilinear with anti-aliasing (a triangle
filter: non-negative weights, so values stay in the input's range).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["RESIZE_MODES", "resize_image"]

RESIZE_MODES = ("pad", "crop", "stretch")


def _target(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def resize_image(
    image: torch.Tensor,
    size: int | tuple[int, int],
    mode: Literal["pad", "crop", "stretch"] = "pad",
    fill: float = 0.0,
) -> torch.Tensor:
    """Resize ``image`` (C, H, W) to ``size`` (an int for square, or (H, W)).

    * ``"pad"``: scale by ``min(Ht/H, Wt/W)`` then pad symmetrically with ``fill``;
    * ``"crop"``: scale by ``max(Ht/H, Wt/W)`` then centre-crop;
    * ``"stretch"``: scale each axis independently.

    Example:
        >>> x = torch.ones(1, 20, 40)
        >>> y = resize_image(x, 16, "pad"); y.shape, float(y[0, 0, 0]), float(y[0, 8, 8])
        (torch.Size([1, 16, 16]), 0.0, 1.0)
        >>> resize_image(x, (8, 8), "crop").shape
        torch.Size([1, 8, 8])
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    th, tw = _target(size)
    _, h, w = image.shape
    if (h, w) == (th, tw):
        return image
    if mode == "stretch":
        nh, nw = th, tw
    else:
        scale = min(th / h, tw / w) if mode == "pad" else max(th / h, tw / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if mode == "pad":
            nh, nw = min(nh, th), min(nw, tw)
        else:
            nh, nw = max(nh, th), max(nw, tw)
    x = image
    if (nh, nw) != (h, w):
        x = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        x = x.clamp(float(image.min()), float(image.max()))
    if mode == "pad":
        top, left = (th - nh) // 2, (tw - nw) // 2
        x = F.pad(x, (left, tw - nw - left, top, th - nh - top), value=fill)
    elif mode == "crop":
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[:, top : top + th, left : left + tw]
    return x.contiguous()
