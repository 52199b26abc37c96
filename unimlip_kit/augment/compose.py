"""``MedicalCompose`` (checked input, seeded children, replayable params) and ``TwoViews`` for SSL.

Data flow: ``images`` (B, C, H, W), C in {1, 3}, float in ``value_range`` or
uint8/uint16 (mapped losslessly onto ``value_range``) -> each child transform in
order (kornia contract: sample params, ``apply_transform``) -> float output in
``output_range``. ``compose._params`` is kornia's list of ``ParamItem(name,
child params)``; ``compose(x, params=compose._params)`` replays the whole chain.

``MedicalCompose`` *is* a kornia ``ImageSequential``, so inside
``kornia.augmentation.AugmentationSequential(..., data_keys=["input", "mask",
"bbox_xyxy", "keypoints"])`` kornia hands it every data key: the image runs
through the chain exactly as in a direct call (checks, fused geometry, intensity
ops), masks through the same geometry (nearest neighbour, one resampling with
the same fused matrix), boxes and keypoints through each geometric child's
matrix, and intensity children leave them alone. ``inverse`` undoes the
geometry (intensity changes stay applied, as in kornia). A child that masks,
boxes or an inverse cannot follow (a plain ``nn.Module``, a non-affine warp for
boxes/keypoints and inverses) raises ``NotImplementedError`` naming it instead
of returning misaligned data.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from kornia.augmentation import (
    GeometricAugmentationBase2D,
    ImageSequential,
    IntensityAugmentationBase2D,
    RigidAffineAugmentationBase2D,
)
from kornia.augmentation.container.base import ImageSequentialBase
from kornia.augmentation.container.params import ParamItem
from kornia.constants import Resample
from torch import nn

from unimlip_kit.augment._kornia_compat import commit_state, next_batch_shape, plain_sequential_call
from unimlip_kit.augment.crop import ConservativeResizedCrop
from unimlip_kit.augment.geometry import SmallAffine
from unimlip_kit.augment.ranges import as_value_range, check_images, to_float
from unimlip_kit.augment.seeded import base_seed
from unimlip_kit.augment.warp import warp_affine_batched
from unimlip_kit.utils.seeding import derive_seed

__all__ = ["MedicalCompose", "TwoViews"]


def _mode_name(value: Any) -> str:
    return value.name.lower() if hasattr(value, "name") else str(value).lower()


def _fusable(t: nn.Module) -> bool:
    """Crop and affine children that resample bilinearly with border padding (so one warp equals the chain)."""
    if isinstance(t, ConservativeResizedCrop):
        return _mode_name(t.flags["resample"]) == "bilinear"
    if isinstance(t, SmallAffine):
        return _mode_name(t.flags.get("resample", "bilinear")) == "bilinear" and _mode_name(
            t.flags.get("padding_mode", "zeros")
        ) == "border"
    return False


def _is_affine(t: nn.Module) -> bool:
    """A kornia augmentation whose geometry is a (B, 3, 3) matrix (boxes, keypoints and inverses follow it)."""
    return isinstance(t, RigidAffineAugmentationBase2D) and not isinstance(t, IntensityAugmentationBase2D)


class MedicalCompose(ImageSequential):
    """Apply transforms in order to a checked batch; seed them all from one seed; a kornia ``ImageSequential``.

    Args:
        *transforms: kornia-contract augmentations (ours or kornia's).
        value_range: the input's ``(lo, hi)``; integer input maps onto it.
        output_range: the range of the output (differs from ``value_range`` after windowing).
        out_of_range: ``"raise"`` (default) if float input leaves ``value_range``, or ``"clip"``.
        generator: ``int`` seed / ``torch.Generator`` / ``None``; child ``i`` gets
            ``derive_seed(base, i, class name)`` (see :mod:`unimlip_kit.augment.seeded`).
        fuse_geometry: run consecutive :class:`ConservativeResizedCrop` / :class:`SmallAffine`
            children (bilinear, border padding) as one warp with the product of their matrices
            (one interpolation); masks get the same single warp with nearest neighbour.

    Inside ``kornia.augmentation.AugmentationSequential`` masks, boxes and keypoints follow
    the geometry, ``params=`` replays and ``inverse`` inverts (see the module docstring).

    Example:
        >>> from unimlip_kit.augment import RandomGamma, SmallAffine
        >>> aug = MedicalCompose(SmallAffine(p=1.0), RandomGamma(p=1.0), generator=0)
        >>> x = torch.randint(0, 65536, (2, 1, 16, 16)).to(torch.uint16)
        >>> y = aug(x)
        >>> y.dtype, bool(y.min() >= 0) and bool(y.max() <= 1)
        (torch.float32, True)
        >>> torch.equal(aug(x, params=aug._params), y)
        True
        >>> import kornia.augmentation as K
        >>> box = K.AugmentationSequential(MedicalCompose(SmallAffine(p=1.0), generator=0), data_keys=["input", "mask"])
        >>> img = torch.zeros(1, 1, 16, 16); img[..., 4:9, 5:12] = 1.0
        >>> out, mask = box(img, img.clone())
        >>> torch.equal(mask, (out > 0.5).float()) or float((mask != (out > 0.5).float()).float().mean()) < 0.05
        True
        >>> aug(torch.rand(2, 2, 16, 16))
        Traceback (most recent call last):
        ...
        ValueError: images must have 1 (grey) or 3 (RGB) channels in dim 1, got shape (2, 2, 16, 16)
    """

    def __init__(
        self,
        *transforms: nn.Module,
        value_range: Sequence[float] = (0.0, 1.0),
        output_range: Optional[Sequence[float]] = None,
        out_of_range: str = "raise",
        channels: Sequence[int] = (1, 3),
        generator: int | torch.Generator | None = None,
        fuse_geometry: bool = True,
    ) -> None:
        bad = [type(t).__name__ for t in transforms if not isinstance(t, nn.Module)]
        if bad:
            raise TypeError(f"MedicalCompose takes nn.Module transforms, got {', '.join(bad)}")
        super().__init__(*transforms)
        plain_sequential_call(self)
        self.fuse_geometry = bool(fuse_geometry)
        if out_of_range not in ("raise", "clip"):
            raise ValueError(f"out_of_range must be 'raise' or 'clip', got {out_of_range!r}")
        self.value_range = as_value_range(value_range)
        self.output_range = as_value_range(output_range) if output_range is not None else self.value_range
        self.out_of_range = out_of_range
        self.channels = tuple(int(c) for c in channels)
        self._params: Optional[List[ParamItem]] = None
        if generator is not None:
            self.manual_seed(generator)

    @property
    def transforms(self) -> List[nn.Module]:
        """The children, in order."""
        return list(self.children())

    @property
    def colour(self) -> bool:
        """Whether any child is a colour operation (needs RGB)."""
        return any(getattr(t, "colour", False) for t in self.children())

    def manual_seed(self, seed: int | torch.Generator | None) -> "MedicalCompose":
        """Restart every child's stream from ``seed`` (``None``: global RNG)."""
        base = base_seed(seed)
        for i, t in enumerate(self.children()):
            if hasattr(t, "manual_seed"):
                t.manual_seed(None if base is None else derive_seed(base, i, type(t).__name__))
        return self

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Check shape/channels/dtype, convert integers, check or clip the float range."""
        check_images(images, "images", self.channels)
        if images.shape[1] == 1 and self.colour:
            names = [type(t).__name__ for t in self.children() if getattr(t, "colour", False)]
            raise ValueError(f"grey images (C=1, shape {tuple(images.shape)}) cannot go through colour operations {names}")
        lo, hi = self.value_range
        if not images.is_floating_point():
            return to_float(images, self.value_range)
        if images.numel():
            # NaN compares false with every bound, so it would pass the range check below and spread through
            # every transform (or fail inside CLAHE): reject it here, naming the problem and the fix.
            nonfinite = ~torch.isfinite(images)
            if bool(nonfinite.any()):
                rows = nonfinite.flatten(1).any(1).nonzero().flatten().tolist()
                raise ValueError(
                    f"images contain {int(nonfinite.sum())} NaN or infinite values (samples {rows[:8]}"
                    f"{' ...' if len(rows) > 8 else ''}; shape {tuple(images.shape)}); "
                    f"replace them first, e.g. torch.nan_to_num(images, nan={lo:g})"
                )
            mn, mx = torch.aminmax(images)
            tol = 1e-4 * (hi - lo)
            if float(mn) < lo - tol or float(mx) > hi + tol:
                if self.out_of_range == "raise":
                    raise ValueError(
                        f"images have values in [{float(mn):.4g}, {float(mx):.4g}] outside value_range ({lo:g}, {hi:g}) "
                        f"(shape {tuple(images.shape)}); pass the right value_range or out_of_range='clip'"
                    )
                return images.clamp(lo, hi)
        return images

    # ---- parameters --------------------------------------------------------------------------------------------

    def forward_parameters(self, batch_shape: torch.Size) -> List[ParamItem]:
        """One ``ParamItem`` per child, each sampled for the shape that child will see (after a resizing crop)."""
        shape = torch.Size(batch_shape)
        out: List[ParamItem] = []
        for name, t in self.named_children():
            if isinstance(t, ImageSequentialBase) or hasattr(t, "forward_parameters"):
                item = ParamItem(name, t.forward_parameters(shape))
            else:
                item = ParamItem(name, None)
            if isinstance(t, ConservativeResizedCrop):
                shape = torch.Size(tuple(shape[:-2]) + tuple(t._out_size(torch.empty(()).expand(shape), t.flags)))
            else:
                shape = next_batch_shape(item, shape, t)
            out.append(item)
        return out

    def _items(self, params: Sequence[Any]) -> List[ParamItem]:
        """``params`` as ``ParamItem`` named after the children (accepts kornia's items or a plain list of dicts)."""
        if isinstance(params, (dict, str, bytes)) or not hasattr(params, "__len__"):
            raise ValueError(f"params must be a list with one entry per transform (such as compose._params), got {type(params).__name__}")
        names = [n for n, _ in self.named_children()]
        if len(params) != len(names):
            raise ValueError(f"params has {len(params)} entries for {len(names)} transforms")
        return [ParamItem(n, p.data if isinstance(p, ParamItem) else p) for n, p in zip(names, params)]

    def _segments(self, items: List[ParamItem]) -> List[Tuple[bool, List[ParamItem]]]:
        """Runs of children: ``(True, items)`` for a fused crop/affine run of two or more, ``(False, [item])`` else."""
        out: List[Tuple[bool, List[ParamItem]]] = []
        i, n = 0, len(items)
        while i < n:
            j = i
            while self.fuse_geometry and j < n and _fusable(self.get_submodule(items[j].name)):
                j += 1
            if j - i >= 2:
                out.append((True, items[i:j]))
                i = j
            else:
                out.append((False, [items[i]]))
                i += 1
        return out

    def _fused_matrix(self, items: List[ParamItem], shape: Tuple[int, ...], like: torch.Tensor, commit: bool) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """``M = M_k ... M_1`` of a fused run (each child's kornia matrix for the shape it sees) and the output size."""
        total: Optional[torch.Tensor] = None
        for item in items:
            t = self.get_submodule(item.name)
            meta = torch.empty((), device=like.device, dtype=like.dtype).expand(shape)  # shape only, no storage
            m = t.generate_transformation_matrix(meta, item.data, t.flags).to(like.device, like.dtype)
            if commit:
                commit_state(t, params=item.data, transform_matrix=m)
            total = m if total is None else m @ total
            if isinstance(t, ConservativeResizedCrop):
                shape = tuple(shape[:2]) + tuple(t._out_size(meta, t.flags))
        assert total is not None
        return total, (int(shape[-2]), int(shape[-1]))

    # ---- images ------------------------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, params: Optional[Sequence[Any]] = None) -> torch.Tensor:
        x = self.prepare(images)
        items = self.forward_parameters(x.shape) if params is None else self._items(params)
        out = self._run_inputs(x, items, None)
        self._params = items
        return out

    def transform_inputs(self, input: torch.Tensor, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        """The image path inside a kornia container: the same checks and chain as a direct call."""
        items = self._items(params)
        out = self._run_inputs(self.prepare(input), items, extra_args)
        self._params = items
        return out

    def _run_inputs(self, x: torch.Tensor, items: List[ParamItem], extra_args: Optional[Dict[str, Any]]) -> torch.Tensor:
        for fused, run in self._segments(items):
            if fused:
                m, size = self._fused_matrix(run, tuple(x.shape), x, commit=True)
                x = warp_affine_batched(x, m, size, mode="bilinear", padding_mode="border")
            else:
                x = super().transform_inputs(x, run, extra_args or {})
        return x

    # ---- masks, boxes, keypoints --------------------------------------------------------------------------------

    def _check_followable(self, items: List[ParamItem], what: str, need_matrix: bool) -> None:
        for item in items:
            t = self.get_submodule(item.name)
            if isinstance(t, (IntensityAugmentationBase2D, ImageSequentialBase)):
                continue
            if not hasattr(t, "forward_parameters"):
                raise NotImplementedError(
                    f"{what} cannot follow {item.name} ({type(t).__name__}): it is a plain nn.Module, so kornia cannot "
                    f"tell whether it moves pixels; make it a kornia augmentation or apply it outside the container"
                )
            if need_matrix and not _is_affine(t):
                raise NotImplementedError(
                    f"{what} cannot follow {item.name} ({type(t).__name__}): it is not an affine (matrix) transform, "
                    f"so kornia would return them unchanged and misaligned; drop it from this pipeline for {what}"
                )

    def transform_masks(self, input: torch.Tensor, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        """Masks through the geometry: a fused run is ONE nearest-neighbour warp with the image's matrix."""
        items = self._items(params)
        self._check_followable(items, "masks", need_matrix=False)
        extra_args = dict(extra_args or {})
        mode = _mode_name(extra_args.get("resample", Resample.NEAREST))
        x = input
        for fused, run in self._segments(items):
            if fused:
                shape = tuple(run[0].data["forward_input_shape"].tolist())
                shape = (x.shape[0], x.shape[1], *shape[-2:])
                m, size = self._fused_matrix(run, shape, x if x.is_floating_point() else x.float(), commit=False)
                work = x if x.is_floating_point() else x.float()
                out = warp_affine_batched(work, m, size, mode=mode, padding_mode="border")
                x = out if x.is_floating_point() else out.round().to(x.dtype)
            else:
                x = super().transform_masks(x, run, extra_args)
        return x

    def transform_boxes(self, input: Any, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> Any:
        """Boxes through every geometric child's matrix (kornia's own box handling, child by child)."""
        items = self._items(params)
        self._check_followable(items, "boxes", need_matrix=True)
        return super().transform_boxes(input, items, extra_args or {})

    def transform_keypoints(self, input: Any, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> Any:
        """Keypoints through every geometric child's matrix (kornia's own keypoint handling, child by child)."""
        items = self._items(params)
        self._check_followable(items, "keypoints", need_matrix=True)
        return super().transform_keypoints(input, items, extra_args or {})

    # ---- inverse -----------------------------------------------------------------------------------------------

    def inverse(self, input: torch.Tensor, params: Optional[Sequence[Any]] = None, extra_args: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        """Undo the geometry of the last call (or of ``params``); intensity changes stay applied, as in kornia."""
        if params is None:
            if self._params is None:
                raise ValueError("no parameters to invert: call the pipeline first or pass params=")
            params = self._params
        return self.inverse_inputs(input, self._items(params), extra_args)

    def _inverse(self, x: torch.Tensor, items: List[ParamItem], mode: str, kornia_step: Any, what: str) -> torch.Tensor:
        self._check_followable(items, what, need_matrix=True)
        for fused, run in reversed(self._segments(items)):
            if fused:
                src = tuple(run[0].data["forward_input_shape"].tolist())
                work = x if x.is_floating_point() else x.float()
                m, _ = self._fused_matrix(run, (x.shape[0], x.shape[1], *src[-2:]), work, commit=False)
                out = warp_affine_batched(work, torch.linalg.inv(m.double()).to(work.dtype), (int(src[-2]), int(src[-1])), mode=mode, padding_mode="zeros")
                x = out if x.is_floating_point() else out.round().to(x.dtype)
            else:
                x = kornia_step(x, run)
        return x

    def inverse_inputs(self, input: torch.Tensor, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        """Images back through the inverse geometry (a fused run: one bilinear warp by ``M⁻¹``)."""
        return self._inverse(input, self._items(params), "bilinear", lambda x, run: super(MedicalCompose, self).inverse_inputs(x, run, extra_args or {}), "an inverse")

    def inverse_masks(self, input: torch.Tensor, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        """Masks back through the inverse geometry (nearest neighbour)."""
        extra_args = dict(extra_args or {})
        mode = _mode_name(extra_args.get("resample", Resample.NEAREST))
        return self._inverse(input, self._items(params), mode, lambda x, run: super(MedicalCompose, self).inverse_masks(x, run, extra_args), "an inverse of masks")

    def inverse_boxes(self, input: Any, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> Any:
        items = self._items(params)
        self._check_followable(items, "an inverse of boxes", need_matrix=True)
        return super().inverse_boxes(input, items, extra_args or {})

    def inverse_keypoints(self, input: Any, params: List[ParamItem], extra_args: Optional[Dict[str, Any]] = None) -> Any:
        items = self._items(params)
        self._check_followable(items, "an inverse of keypoints", need_matrix=True)
        return super().inverse_keypoints(input, items, extra_args or {})

    def extra_repr(self) -> str:
        return f"value_range={self.value_range}, output_range={self.output_range}"


class TwoViews(nn.Module):
    """Two independently augmented views of one batch, for image SSL (NT-Xent, SimSiam).

    ``view2`` defaults to ``view`` itself: the two calls draw fresh parameters,
    so the views differ. ``two._params`` holds both draws for replay.

    Example:
        >>> from unimlip_kit.augment import preset
        >>> two = TwoViews(preset("xray", "medium", generator=0))
        >>> v1, v2 = two(torch.rand(4, 1, 32, 32))
        >>> v1.shape == v2.shape, torch.equal(v1, v2)
        (True, False)
    """

    def __init__(self, view: nn.Module, view2: Optional[nn.Module] = None) -> None:
        super().__init__()
        for name, v in (("view", view), ("view2", view2)):
            if v is not None and not callable(v):
                raise TypeError(f"{name} must be a callable augmentation (e.g. preset(...)), got {type(v).__name__}")
        self.view1 = view
        self.view2 = view2
        self._params: Tuple[Any, Any] = (None, None)

    def forward(self, images: torch.Tensor, params: Optional[Tuple[Any, Any]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if params is not None and (isinstance(params, (str, bytes, dict)) or not hasattr(params, "__len__") or len(params) != 2):
            got = f"{type(params).__name__} of length {len(params)}" if hasattr(params, "__len__") else type(params).__name__
            raise ValueError(f"params must be a pair (view1 params, view2 params) such as two._params, got a {got}")
        second = self.view2 if self.view2 is not None else self.view1
        a = self.view1(images, params=None if params is None else params[0])
        pa = self.view1._params
        b = second(images, params=None if params is None else params[1])
        self._params = (pa, second._params)
        return a, b
