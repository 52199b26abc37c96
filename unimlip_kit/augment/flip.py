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

Images may be float, uint8, uint16 or bool masks (a flip only moves pixels; integer
images come back in their own dtype, bit for bit).

Inside kornia containers: ``LateralityAwareFlip`` is a kornia ``ImageSequential``,
so ``kornia.augmentation.AugmentationSequential(flip, ..., data_keys=["input",
"mask", "bbox_xyxy", "keypoints"])`` flips the masks, boxes and keypoints of
exactly the samples whose image it flips (kornia's ``RandomHorizontalFlip``
matrix), ``params=`` replays and ``inverse`` flips them back. A container has no
caption key, so with ``mode="swap"`` the captions go in first and come out
after::

    flip.bind_captions(captions)          # the held-back rule sees them
    images, masks = aug(images, masks)
    captions = flip.swapped_captions()    # left/right swapped where flipped

A container call in ``mode="swap"`` without bound captions raises, so captions
never silently disagree with the images; ``mode="allow"`` needs no captions.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from kornia.augmentation import ImageSequential, RandomHorizontalFlip
from kornia.augmentation.container.params import ParamItem

from unimlip_kit.augment._kornia_compat import commit_state, plain_sequential_call
from unimlip_kit.augment.laterality import find_asymmetric_structures, swap_laterality
from unimlip_kit.augment.ranges import INTEGER_MAX
from unimlip_kit.augment.seeded import SeededMixin

__all__ = ["LateralityAwareFlip"]

_MODES = ("swap", "forbid", "allow")


class _SeededHorizontalFlip(SeededMixin, RandomHorizontalFlip):
    def __init__(self, p: float, generator: int | torch.Generator | None) -> None:
        super().__init__(p=p)
        self._init_seed(generator)


def _flip_rows(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Flip the last axis of the rows where ``gate``; any dtype, exact (uint16 through its int16 bits)."""
    if not bool(gate.any()):
        return x
    work = x.view(torch.int16) if x.dtype == torch.uint16 else x
    sel = gate.to(x.device).view(-1, *([1] * (x.ndim - 1)))
    out = torch.where(sel, work.flip(-1), work)
    return out.view(torch.uint16) if x.dtype == torch.uint16 else out


class LateralityAwareFlip(ImageSequential):
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
        >>> import kornia.augmentation as K
        >>> aug = K.AugmentationSequential(flip, data_keys=["input", "mask"])
        >>> _ = flip.bind_captions(["left effusion"])
        >>> img, mask = aug(x, x.clone())
        >>> torch.equal(img, mask), img[0, 0, 0].tolist(), flip.swapped_captions()
        (True, [2.0, 1.0, 0.0], ['right effusion'])
    """

    def __init__(self, p: float = 0.5, mode: str = "swap", *, generator: int | torch.Generator | None = None) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        super().__init__(_SeededHorizontalFlip(p=0.0 if mode == "forbid" else float(p), generator=generator))
        plain_sequential_call(self)
        self.mode = mode
        self.p = float(p)
        self._held = torch.zeros(0, dtype=torch.bool)
        self._bound: Optional[List[str]] = None
        self._captions_out: Optional[List[str]] = None

    @property
    def flip(self) -> _SeededHorizontalFlip:
        """The kornia ``RandomHorizontalFlip`` that draws the per-sample decision."""
        return self[0]

    @property
    def _params(self) -> Dict[str, torch.Tensor]:  # type: ignore[override]
        """The last draw: kornia's ``RandomHorizontalFlip`` params (``batch_prob`` after the held-back rule)."""
        return self[0]._params if len(self) else {}

    @_params.setter
    def _params(self, value: Any) -> None:  # kornia's containers reset it; the draw lives on the child
        pass

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

    # ---- captions ----------------------------------------------------------------------------------------------

    @staticmethod
    def _check_captions(captions: Any, batch: Optional[int]) -> List[str]:
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings (one per image), got a single str")
        captions = list(captions)
        bad = [type(c).__name__ for c in captions if not isinstance(c, str)]
        if bad:
            raise TypeError(f"captions must be strings, got {', '.join(sorted(set(bad)))}")
        if batch is not None and len(captions) != batch:
            raise ValueError(f"captions has {len(captions)} entries but images has batch size {batch}")
        return captions

    def bind_captions(self, captions: Sequence[str]) -> "LateralityAwareFlip":
        """Give the captions of the next call made by a kornia container (which has no caption key).

        The next parameter draw holds back heart/liver captions as a direct call does and
        stores the swapped captions for :meth:`swapped_captions`. One binding serves one call.
        """
        self._bound = self._check_captions(captions, None)
        self._captions_out = None
        return self

    def swapped_captions(self) -> List[str]:
        """The captions bound for the last container call, left/right swapped in the samples it flipped."""
        if self._captions_out is None:
            raise RuntimeError("no captions: call flip.bind_captions(captions) before the container call")
        return list(self._captions_out)

    def _gate(self, params: Dict[str, torch.Tensor], b: int, captions: Optional[List[str]]) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """Apply the held-back rule to a draw; return the params to store and the final CPU gate."""
        params = dict(params)
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
        return params, gate

    def _swap(self, captions: List[str], gate: torch.Tensor) -> List[str]:
        return [swap_laterality(c) if bool(f) else c for c, f in zip(captions, gate.tolist())]

    # ---- direct call -------------------------------------------------------------------------------------------

    def forward(  # type: ignore[override]
        self,
        images: torch.Tensor,
        captions: Optional[Sequence[str]] = None,
        params: Optional[Dict[str, torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, Optional[List[str]]]:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"images must be a 4-D (B, C, H, W) tensor, got shape {tuple(images.shape)}")
        if not images.is_floating_point() and images.dtype not in INTEGER_MAX and images.dtype != torch.bool:
            raise ValueError(f"images must be floating point, uint8 or uint16 (or a bool mask), got {images.dtype}")
        if isinstance(params, (list, tuple)) and len(params) == 1 and isinstance(params[0], ParamItem):
            params = params[0].data  # a container's draw for this flip
        b = images.shape[0]
        if captions is not None:
            captions = self._check_captions(captions, b)
        draw = self.flip.forward_parameters(images.shape) if params is None else params
        stored, gate = self._gate(draw, b, captions)
        commit_state(self.flip, params=stored)
        # The flip is applied here, not by kornia: kornia ignores a given batch_prob when p == 1 and accepts
        # float input only, while a flip only moves pixels, so any dtype is flipped exactly (uint16 via int16 bits).
        out = _flip_rows(images, gate)
        if captions is None or self.mode != "swap":
            return out, captions
        return out, self._swap(captions, gate)

    def inverse(self, input: torch.Tensor, params: Optional[Any] = None, extra_args: Optional[Dict[str, Any]] = None) -> torch.Tensor:  # type: ignore[override]
        """Flip back the samples the last call (or ``params``) flipped: a flip is its own inverse."""
        return self.inverse_inputs(input, self._as_items(params), extra_args)

    # ---- inside kornia containers ------------------------------------------------------------------------------

    def _as_items(self, params: Optional[Any]) -> List[ParamItem]:
        name = next(iter(self._modules))
        if params is None:
            if not self.flip._params:
                raise ValueError("no parameters: call the flip first or pass params=")
            return [ParamItem(name, self.flip._params)]
        if isinstance(params, dict):
            return [ParamItem(name, params)]
        return [ParamItem(name, params[0].data if isinstance(params[0], ParamItem) else params[0])]

    def forward_parameters(self, batch_shape: torch.Size) -> List[ParamItem]:  # type: ignore[override]
        """A container's draw: the flip decision after the held-back rule on the bound captions."""
        b = int(batch_shape[0])
        captions = self._bound
        if self.mode == "swap" and captions is None:
            raise RuntimeError(
                "LateralityAwareFlip(mode='swap') inside a kornia container cannot see the captions, so the flipped "
                "images would disagree with them: call flip.bind_captions(captions) before the container call and read "
                "flip.swapped_captions() after it, or use mode='allow' when the captions carry no laterality"
            )
        if captions is not None and len(captions) != b:
            raise ValueError(f"bound captions has {len(captions)} entries but the batch has {b} images")
        stored, gate = self._gate(self.flip.forward_parameters(batch_shape), b, captions)
        commit_state(self.flip, params=stored)
        self._bound = None
        self._captions_out = None if captions is None else (self._swap(captions, gate) if self.mode == "swap" else captions)
        return [ParamItem(next(iter(self._modules)), stored)]

    def _gate_of(self, params: List[ParamItem], batch: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        data = params[0].data if isinstance(params[0], ParamItem) else params[0]
        gate = torch.atleast_1d(data["batch_prob"] > 0.5).cpu()
        if gate.numel() == 1 and batch != 1:
            gate = gate.expand(batch)
        if gate.numel() != batch:
            raise ValueError(f"params['batch_prob'] has {gate.numel()} entries for a batch of {batch}")
        return gate, data

    def _matrix(self, data: Dict[str, torch.Tensor], gate: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """kornia's ``RandomHorizontalFlip`` matrix ``x -> (W - 1) - x`` on flipped rows, identity elsewhere."""
        w = float(data["forward_input_shape"][-1])
        m = torch.eye(3, device=like.device, dtype=like.dtype).repeat(gate.numel(), 1, 1)
        rows = gate.to(like.device)
        m[rows, 0, 0] = -1.0
        m[rows, 0, 2] = w - 1.0
        return m

    def transform_inputs(self, input: torch.Tensor, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> torch.Tensor:  # type: ignore[override]
        gate, data = self._gate_of(params, input.shape[0])
        commit_state(self.flip, params=data)
        return _flip_rows(input, gate)

    def transform_masks(self, input: torch.Tensor, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> torch.Tensor:  # type: ignore[override]
        gate, _ = self._gate_of(params, input.shape[0])
        return _flip_rows(input, gate)

    def transform_boxes(self, input: Any, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> Any:  # type: ignore[override]
        gate, data = self._gate_of(params, input.data.shape[0])
        return input.clone().transform_boxes_(self._matrix(data, gate, input.data))

    def transform_keypoints(self, input: Any, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> Any:  # type: ignore[override]
        gate, data = self._gate_of(params, input.data.shape[0])
        return input.clone().transform_keypoints_(self._matrix(data, gate, input.data))

    # a flip is an involution: the inverse of each data key is the same operation with the same gate
    def inverse_inputs(self, input: torch.Tensor, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> torch.Tensor:  # type: ignore[override]
        gate, _ = self._gate_of(params, input.shape[0])
        return _flip_rows(input, gate)

    def inverse_masks(self, input: torch.Tensor, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> torch.Tensor:  # type: ignore[override]
        return self.transform_masks(input, params, extra_args)

    def inverse_boxes(self, input: Any, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> Any:  # type: ignore[override]
        return self.transform_boxes(input, params, extra_args)

    def inverse_keypoints(self, input: Any, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> Any:  # type: ignore[override]
        return self.transform_keypoints(input, params, extra_args)
