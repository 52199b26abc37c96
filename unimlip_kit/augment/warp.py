"""One batched affine resampling whose sampling grid is a single separable broadcast sum.

Same contract as ``kornia.geometry.transform.warp_affine(..., align_corners=True)``
(``M`` maps source pixel coordinates to destination pixel coordinates), but the
sampling grid comes neither from ``torch.nn.functional.affine_grid`` (a
``(B, H*W, 3) @ (B, 3, 2)`` batched matmul) nor from kornia's six full-size
multiply-adds and a stack: both cost several times the ``grid_sample`` itself on CPU at 224 x 224. An affine grid is
separable, ``g(y, x) = theta[:, 0] x + (theta[:, 1] y + theta[:, 2])``, so it is one
broadcast sum of a per-column and a per-row term, written once.

With pixel-to-normalised maps ``N_s`` (source) and ``N_d`` (destination),
``x_n = 2 x / (W - 1) - 1``, the grid samples the source at
``theta = N_s M^{-1} N_d^{-1}`` applied to each normalised destination point.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["warp_affine_batched"]


def _pix_to_norm(h: int, w: int, device: torch.device) -> torch.Tensor:
    """``(3, 3)`` float64 map from pixel coordinates to [-1, 1] (align_corners=True)."""
    n = torch.eye(3, dtype=torch.float64, device=device)
    n[0, 0], n[0, 2] = 2.0 / max(w - 1, 1), -1.0
    n[1, 1], n[1, 2] = 2.0 / max(h - 1, 1), -1.0
    return n


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, h, w), align_corners=True)`` as one separable broadcast sum."""
    xs = torch.linspace(-1.0, 1.0, w, device=theta.device, dtype=theta.dtype) if w > 1 else theta.new_zeros(1)
    ys = torch.linspace(-1.0, 1.0, h, device=theta.device, dtype=theta.dtype) if h > 1 else theta.new_zeros(1)
    col = theta[:, :, 0, None] * xs  # (B, 2, W)
    row = theta[:, :, 1, None] * ys + theta[:, :, 2, None]  # (B, 2, H)
    return col.transpose(1, 2)[:, None, :, :] + row.transpose(1, 2)[:, :, None, :]  # (B, H, W, 2)


def warp_affine_batched(
    images: torch.Tensor,
    matrix: torch.Tensor,
    dsize: Tuple[int, int],
    *,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Warp ``images`` (B, C, H, W) by per-sample affine ``matrix`` ((B, 2, 3) or (B, 3, 3), source->destination pixels).

    Matches ``kornia.geometry.transform.warp_affine(images, matrix[:, :2], dsize, align_corners=True)``
    to float rounding; the 3x3 algebra runs in float64.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> shift = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])  # move content one pixel right
        >>> [round(v, 4) for v in warp_affine_batched(x, shift, (4, 4))[0, 0, 0].tolist()]
        [0.0, 0.0, 1.0, 2.0]
        >>> warp_affine_batched(x, torch.eye(3)[None, :2], (4, 4), mode="cubic")
        Traceback (most recent call last):
        ...
        ValueError: mode must be 'bilinear', 'nearest' or 'bicubic', got 'cubic'
    """
    if mode not in ("bilinear", "nearest", "bicubic"):
        raise ValueError(f"mode must be 'bilinear', 'nearest' or 'bicubic', got {mode!r}")
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if matrix.ndim != 3 or matrix.shape[0] != b or tuple(matrix.shape[1:]) not in ((2, 3), (3, 3)):
        raise ValueError(f"matrix must be ({b}, 2, 3) or ({b}, 3, 3), got shape {tuple(matrix.shape)}")
    oh, ow = int(dsize[0]), int(dsize[1])
    m = torch.zeros(b, 3, 3, dtype=torch.float64, device=images.device)
    m[:, :2] = matrix[:, :2].to(images.device, torch.float64)
    m[:, 2, 2] = 1.0
    theta = _pix_to_norm(h, w, images.device) @ torch.linalg.inv(m) @ torch.linalg.inv(_pix_to_norm(oh, ow, images.device))
    grid = _affine_grid(theta[:, :2].to(images.dtype), oh, ow)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
