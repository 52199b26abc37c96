"""``LateralityAwareFlip``: a per-sample horizontal flip that keeps captions true.

``images, captions = flip(images, captions)`` flips each sample with
probability ``p`` (kornia ``RandomHorizontalFlip`` underneath, so the per-sample
decision is ``flip._params["batch_prob"]`` and replays onto masks or a second
view with ``flip(masks, params=flip._params)``), then for ``mode="swap"``
rewrites the caption of every flipped sample with
:func:`~unimlip_kit.augment.laterality.swap_laterality`. ``mode="allow"`` flips
without touching captions; ``mode="forbid"`` never flips (returns the inputs).

In ``mode="swap"`` a sample whose caption names a heart structure by its form
("left ventricle", "right coronary artery", see
:func:`~unimlip_kit.augment.laterality.find_asymmetric_structures`) is never
flipped: swapping those words would make the caption false, keeping them would
leave a mirrored caption half-swapped. :meth:`LateralityAwareFlip.kept_unflipped`
says which samples this rule held back in the last call.

Images may be float, uint8 or uint16 (a flip only moves pixels; integer images
come back in their own dtype, bit for bit).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from kornia.augmentation import RandomHorizontalFlip
from torch import nn

from unimlip_kit.augment.laterality import find_asymmetric_structures, swap_laterality
from unimlip_kit.augment.ranges import INTEGER_MAX
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
        >>> y, caps = flip(x, ["Dilated left ventricle, left pleural effusion"])  # heart named by form: not flipped
        >>> torch.equal(y, x), caps, flip.kept_unflipped().tolist()
        (True, ['Dilated left ventricle, left pleural effusion'], [True])
        >>> flip(torch.tensor([[[[1, 2, 3]]]], dtype=torch.uint8), ["left"])[0].tolist()
        [[[[3, 2, 1]]]]
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
        self._held = torch.zeros(0, dtype=torch.bool)

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

    def kept_unflipped(self) -> torch.Tensor:
        """Boolean ``(B,)``: samples the last call drew for a flip but kept because the caption names a heart structure."""
        return self._held

    def forward(
        self,
        images: torch.Tensor,
        captions: Optional[Sequence[str]] = None,
        params: Optional[Dict[str, torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, Optional[List[str]]]:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"images must be a 4-D (B, C, H, W) tensor, got shape {tuple(images.shape)}")
        if not images.is_floating_point() and images.dtype not in INTEGER_MAX:
            raise ValueError(f"images must be floating point, uint8 or uint16, got {images.dtype}")
        if captions is not None:
            if isinstance(captions, str):
                raise TypeError("captions must be a list of strings (one per image), got a single str")
            captions = list(captions)
            bad = [type(c).__name__ for c in captions if not isinstance(c, str)]
            if bad:
                raise TypeError(f"captions must be strings, got {', '.join(sorted(set(bad)))}")
            if len(captions) != images.shape[0]:
                raise ValueError(
                    f"captions has {len(captions)} entries but images has batch size {images.shape[0]} "
                    f"(shape {tuple(images.shape)})"
                )
        b = images.shape[0]
        params = dict(self.flip.forward_parameters(images.shape) if params is None else params)
        raw_gate = torch.atleast_1d(params["batch_prob"])
        gate = (raw_gate > 0.5).cpu()
        if gate.numel() == 1 and b != 1:
            gate = gate.expand(b)
        if gate.numel() != b:
            raise ValueError(f"params['batch_prob'] has {gate.numel()} entries for a batch of {b}")
        self._held = torch.zeros(b, dtype=torch.bool)
        if captions is not None and self.mode == "swap":
            asym = torch.tensor([bool(find_asymmetric_structures(c)) for c in captions], dtype=torch.bool)
            self._held = gate & asym
            gate = gate & ~asym
        params["batch_prob"] = gate.to(raw_gate.device, raw_gate.dtype)
        self.flip._params = params
        # The flip is applied here, not by kornia: kornia ignores a given batch_prob when p == 1 and accepts
        # float input only, while a flip only moves pixels, so any dtype is flipped exactly (uint16 via int16 bits).
        work = images.view(torch.int16) if images.dtype == torch.uint16 else images
        if bool(gate.any()):
            sel = gate.to(images.device).view(-1, 1, 1, 1)
            out = torch.where(sel, work.flip(-1), work)
            out = out.view(torch.uint16) if images.dtype == torch.uint16 else out
        else:
            out = images
        if captions is None or self.mode != "swap":
            return out, captions
        flipped = self.flipped().tolist()
        if len(flipped) == 1 and len(captions) > 1:
            flipped = flipped * len(captions)
        return out, [swap_laterality(c) if f else c for c, f in zip(captions, flipped)]
