"""``LateralityAwareFlip``: a per-sample horizontal flip that keeps captions true.

``images, captions = flip(images, captions)`` flips each sample with
probability ``p`` (kornia ``RandomHorizontalFlip`` underneath, so the per-sample
decision is ``flip._params["batch_prob"]`` and replays onto masks or a second
view with ``flip(masks, params=flip._params)``), then for ``mode="swap"``
rewrites the caption of every flipped sample with
:func:`~unimlip_kit.augment.laterality.swap_laterality`. ``mode="allow"`` flips
without touching captions; ``mode="forbid"`` never flips (returns the inputs).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from kornia.augmentation import RandomHorizontalFlip
from torch import nn

from unimlip_kit.augment.laterality import swap_laterality
from unimlip_kit.augment.seeded import SeededMixin

__all__ = ["LateralityAwareFlip"]

_MODES = ("swap", "forbid", "allow")


class _SeededHorizontalFlip(SeededMixin, RandomHorizontalFlip):
    def __init__(self, p: float, generator: int | torch.Generator | None) -> None:
        super().__init__(p=p)
        self._init_seed(generator)


class LateralityAwareFlip(nn.Module):
    """Flip images horizontally per sample and swap left/right in the flipped samples' captions.

    Args:
        p: per-sample flip probability.
        mode: ``"swap"`` (flip and fix captions), ``"forbid"`` (never flip) or ``"allow"`` (flip, captions untouched).
        generator: ``int`` seed, ``torch.Generator`` or ``None`` (global RNG); see :mod:`unimlip_kit.augment.seeded`.

    Example:
        >>> flip = LateralityAwareFlip(p=1.0)
        >>> x = torch.arange(6.0).reshape(1, 1, 2, 3)
        >>> y, caps = flip(x, ["Left lower lobe opacity, bright spot"])
        >>> y[0, 0, 0].tolist(), caps
        ([2.0, 1.0, 0.0], ['Right lower lobe opacity, bright spot'])
        >>> LateralityAwareFlip(mode="forbid")(x, ["left"])[1]
        ['left']
    """

    def __init__(self, p: float = 0.5, mode: str = "swap", *, generator: int | torch.Generator | None = None) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.mode = mode
        self.p = float(p)
        self.flip = _SeededHorizontalFlip(p=0.0 if mode == "forbid" else self.p, generator=generator)

    @property
    def _params(self) -> Dict[str, torch.Tensor]:
        return self.flip._params

    def manual_seed(self, seed: int | torch.Generator | None) -> "LateralityAwareFlip":
        """Restart the flip's random stream."""
        self.flip.manual_seed(seed)
        return self

    def flipped(self) -> torch.Tensor:
        """Boolean ``(B,)``: which samples the last call flipped."""
        return torch.atleast_1d(self.flip._params["batch_prob"] > 0.5)

    def forward(
        self,
        images: torch.Tensor,
        captions: Optional[Sequence[str]] = None,
        params: Optional[Dict[str, torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, Optional[List[str]]]:
        if captions is not None:
            if isinstance(captions, str):
                raise TypeError("captions must be a list of strings (one per image), got a single str")
            captions = list(captions)
            if len(captions) != images.shape[0]:
                raise ValueError(
                    f"captions has {len(captions)} entries but images has batch size {images.shape[0]} "
                    f"(shape {tuple(images.shape)})"
                )
        out = self.flip(images, params=params)
        if captions is None or self.mode != "swap":
            return out, captions
        flipped = self.flipped().tolist()
        if len(flipped) == 1 and len(captions) > 1:
            flipped = flipped * len(captions)
        return out, [swap_laterality(c) if f else c for c, f in zip(captions, flipped)]
