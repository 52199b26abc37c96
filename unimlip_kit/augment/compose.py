"""``MedicalCompose`` (checked input, seeded children, replayable params) and ``TwoViews`` for SSL.

Data flow: ``images`` (B, C, H, W), C in {1, 3}, float in ``value_range`` or
uint8/uint16 (mapped losslessly onto ``value_range``) -> each child transform in
order (kornia contract: sample params, ``apply_transform``) -> float output in
``output_range``. ``compose._params`` is the list of every child's params;
``compose(x, params=compose._params)`` replays the whole chain (e.g. on a mask
or a second modality of the same study).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from unimlip_kit.augment._kornia_compat import commit_state
from unimlip_kit.augment.crop import ConservativeResizedCrop
from unimlip_kit.augment.geometry import SmallAffine
from unimlip_kit.augment.ranges import as_value_range, check_images, to_float
from unimlip_kit.augment.seeded import base_seed
from unimlip_kit.augment.warp import warp_affine_batched
from unimlip_kit.utils.seeding import derive_seed

__all__ = ["MedicalCompose", "TwoViews"]

_FUSABLE = (ConservativeResizedCrop, SmallAffine)


class MedicalCompose(nn.Module):
    """Apply transforms in order to a checked batch; seed them all from one seed.

    Args:
        *transforms: kornia-contract augmentations (ours or kornia's).
        value_range: the input's ``(lo, hi)``; integer input maps onto it.
        output_range: the range of the output (differs from ``value_range`` after windowing).
        out_of_range: ``"raise"`` (default) if float input leaves ``value_range``, or ``"clip"``.
        generator: ``int`` seed / ``torch.Generator`` / ``None``; child ``i`` gets
            ``derive_seed(base, i, class name)`` (see :mod:`unimlip_kit.augment.seeded`).
        fuse_geometry: run consecutive :class:`ConservativeResizedCrop` / :class:`SmallAffine`
            children as one warp with the product of their matrices (one interpolation).

    Example:
        >>> from unimlip_kit.augment import RandomGamma, SmallAffine
        >>> aug = MedicalCompose(SmallAffine(p=1.0), RandomGamma(p=1.0), generator=0)
        >>> x = torch.randint(0, 65536, (2, 1, 16, 16)).to(torch.uint16)
        >>> y = aug(x)
        >>> y.dtype, bool(y.min() >= 0) and bool(y.max() <= 1)
        (torch.float32, True)
        >>> torch.equal(aug(x, params=aug._params), y)
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
        super().__init__()
        self.fuse_geometry = bool(fuse_geometry)
        if out_of_range not in ("raise", "clip"):
            raise ValueError(f"out_of_range must be 'raise' or 'clip', got {out_of_range!r}")
        self.transforms = nn.ModuleList(transforms)
        self.value_range = as_value_range(value_range)
        self.output_range = as_value_range(output_range) if output_range is not None else self.value_range
        self.out_of_range = out_of_range
        self.channels = tuple(int(c) for c in channels)
        self._params: List[Dict[str, torch.Tensor]] = []
        if generator is not None:
            self.manual_seed(generator)

    @property
    def colour(self) -> bool:
        """Whether any child is a colour operation (needs RGB)."""
        return any(getattr(t, "colour", False) for t in self.transforms)

    def manual_seed(self, seed: int | torch.Generator | None) -> "MedicalCompose":
        """Restart every child's stream from ``seed`` (``None``: global RNG)."""
        base = base_seed(seed)
        for i, t in enumerate(self.transforms):
            if hasattr(t, "manual_seed"):
                t.manual_seed(None if base is None else derive_seed(base, i, type(t).__name__))
        return self

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Check shape/channels/dtype, convert integers, check or clip the float range."""
        check_images(images, "images", self.channels)
        if images.shape[1] == 1 and self.colour:
            names = [type(t).__name__ for t in self.transforms if getattr(t, "colour", False)]
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

    def forward(self, images: torch.Tensor, params: Optional[Sequence[Dict[str, Any]]] = None) -> torch.Tensor:
        x = self.prepare(images)
        if params is not None and len(params) != len(self.transforms):
            raise ValueError(f"params has {len(params)} entries for {len(self.transforms)} transforms")
        n = len(self.transforms)
        i = 0
        while i < n:
            j = i
            while self.fuse_geometry and j < n and isinstance(self.transforms[j], _FUSABLE):
                j += 1
            if j - i >= 2:
                x = self._fused_warp(x, range(i, j), params)
                i = j
                continue
            x = self.transforms[i](x, params=None if params is None else params[i])
            i += 1
        self._params = [t._params for t in self.transforms]
        return x

    def _fused_warp(self, x: torch.Tensor, idx: range, params: Optional[Sequence[Dict[str, Any]]]) -> torch.Tensor:
        """Consecutive matrix transforms (crop, affine) as ONE resampling: ``M = M_k ... M_1``.

        Each child samples (or is given) its own params and builds its kornia
        ``(B, 3, 3)`` matrix for the shape it would see (identity rows where its
        ``p`` gate skipped a sample); one :func:`warp_affine_batched` then applies the product.
        One interpolation instead of several: faster and less blur.
        """
        shape = tuple(x.shape)
        total: Optional[torch.Tensor] = None
        for k in idx:
            t = self.transforms[k]
            p = params[k] if params is not None else t.forward_parameters(torch.Size(shape))
            meta = torch.empty((), device=x.device, dtype=x.dtype).expand(shape)  # shape only, no storage
            m = t.generate_transformation_matrix(meta, p, t.flags).to(x.device, x.dtype)
            commit_state(t, params=p, transform_matrix=m)
            total = m if total is None else m @ total
            if isinstance(t, ConservativeResizedCrop):
                shape = shape[:2] + tuple(t._out_size(meta, t.flags))
        assert total is not None
        return warp_affine_batched(x, total, shape[-2:], mode="bilinear", padding_mode="border")

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
