"""CLAHE (contrast-limited adaptive histogram equalisation, Zuiderveld 1994) blended per sample.

kornia's :func:`kornia.enhance.equalize_clahe` takes one clip limit for the
batch; we run it once on the batch and draw a per-sample strength
``a ~ U(strength)``: ``u' = u + a * (clahe(u) - u)``. ``a = 1`` is full CLAHE.
Each channel is equalised independently, so use it on grey images (or RGB
copies of grey images, whose channels stay equal). An image with fewer than
``grid + 1`` pixels along a side uses that many tiles fewer (kornia needs each tile
to hold at least two pixels); an image one pixel high or wide has no tile to
equalise and is returned unchanged.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
from kornia.augmentation.random_generator import PlainUniformGenerator
from kornia.enhance import equalize_clahe

from unimlip_kit.augment.base import RangeIntensityAugmentation, per_sample

__all__ = ["RandomCLAHE"]


class RandomCLAHE(RangeIntensityAugmentation):
    """CLAHE with clip limit ``clip_limit`` on a ``grid`` of tiles, blended with strength ``U(strength)``.

    Example:
        >>> aug = RandomCLAHE(strength=(1.0, 1.0), p=1.0)
        >>> x = torch.linspace(0.4, 0.6, 256).reshape(1, 1, 16, 16)
        >>> y = aug(x)
        >>> bool(y.max() - y.min() > x.max() - x.min())  # low contrast gets stretched
        True
    """

    def __init__(
        self,
        strength: Tuple[float, float] = (0.5, 1.0),
        clip_limit: float = 2.0,
        grid: Tuple[int, int] = (8, 8),
        value_range: Sequence[float] = (0.0, 1.0),
        *,
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(value_range, p=p, same_on_batch=same_on_batch, keepdim=keepdim, generator=generator)
        a0, a1 = (float(a) for a in strength)
        if not 0.0 <= a0 <= a1 <= 1.0 or clip_limit <= 0:
            raise ValueError(f"strength must be (a0, a1) in [0, 1] with a0 <= a1 and clip_limit > 0, got {strength!r}, {clip_limit}")
        self.flags.update(clip_limit=float(clip_limit), grid=(int(grid[0]), int(grid[1])))
        self._param_generator = PlainUniformGenerator(((a0, a1), "strength", None, None))

    def apply_unit(self, unit: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]) -> torch.Tensor:
        h, w = unit.shape[-2:]
        if h < 2 or w < 2:
            return unit.clone()
        grid = (min(flags["grid"][0], h - 1), min(flags["grid"][1], w - 1))
        eq = equalize_clahe(unit.clamp(0.0, 1.0), clip_limit=flags["clip_limit"], grid_size=grid)
        return unit + per_sample(params["strength"], unit) * (eq - unit)
