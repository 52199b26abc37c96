"""Conservative random resized crop: keep most of the image (scale >= 0.7 by default).

Crops and heavy zoom can remove the finding (MoCo-CXR; PMC-CLIP uses scale
0.9-1.0), so the default area fraction is ``U(0.7, 1.0)`` and the aspect ratio
stays near 1. Each sample draws ``s ~ U(scale)``, ``log r ~ U(log ratio)`` and a
position ``(t_x, t_y) ~ U(0, 1)^2``; the crop is ``w = W sqrt(s r)``,
``h = H sqrt(s / r)`` (clipped to the image), at ``x0 = t_x (W - w)``,
``y0 = t_y (H - h)``, resampled by one batched affine warp to ``size``
(default: the input size). The ``(B, 3, 3)`` matrix is kept as
``transform_matrix`` so masks, boxes and a second view can replay it.

Samples the ``p`` gate skips are only resized to ``size``; their matrix is that
resize (``identity_matrix``), and masks, boxes and keypoints of skipped samples
get it too. ``inverse`` maps every sample back onto the input grid with the
inverse matrix (zeros outside the crop), as kornia's ``RandomResizedCrop`` does;
``params["output_size"]`` tells kornia's containers the new image size.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from kornia.augmentation import GeometricAugmentationBase2D
from kornia.augmentation.random_generator import PlainUniformGenerator
from kornia.constants import Resample

from unimlip_kit.augment._kornia_compat import process_kwargs_to_params_and_flags
from unimlip_kit.augment.seeded import SeededMixin
from unimlip_kit.augment.warp import warp_affine_batched

__all__ = ["ConservativeResizedCrop"]


class ConservativeResizedCrop(SeededMixin, GeometricAugmentationBase2D):
    """Random resized crop with a conservative area ``scale`` and near-square ``ratio``.

    Args:
        size: output ``(H, W)``; ``None`` keeps the input size.
        scale: area fraction range, default ``(0.7, 1.0)``.
        ratio: aspect ratio (w/h) range, sampled log-uniformly.
        p: probability; skipped samples are only resized to ``size``.
        generator: ``int`` seed, ``torch.Generator`` or ``None`` (global RNG).

    Example:
        >>> aug = ConservativeResizedCrop(size=(32, 32), generator=0)
        >>> aug(torch.rand(4, 1, 64, 48)).shape
        torch.Size([4, 1, 32, 32])
        >>> x = torch.rand(2, 1, 16, 16)
        >>> torch.allclose(ConservativeResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))(x), x, atol=1e-5)
        True
        >>> crop = ConservativeResizedCrop(size=(8, 8), generator=0)
        >>> crop.inverse(crop(x)).shape  # back on the 16 x 16 input grid, zeros outside the crop
        torch.Size([2, 1, 16, 16])
    """

    def __init__(
        self,
        size: Optional[Tuple[int, int]] = None,
        scale: Tuple[float, float] = (0.7, 1.0),
        ratio: Tuple[float, float] = (0.9, 1.0 / 0.9),
        *,
        mode: str = "bilinear",
        p: float = 1.0,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        s0, s1 = (float(s) for s in scale)
        r0, r1 = (float(r) for r in ratio)
        if not 0 < s0 <= s1 <= 1 or not 0 < r0 <= r1:
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {scale!r}, {ratio!r}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be None or (H, W) with H, W >= 1, got {size!r}")
        # kornia's flag name, so containers resample masks with nearest (GeometricAugmentationBase2D.transform_masks)
        self.flags = {"size": None if size is None else (int(size[0]), int(size[1])), "resample": Resample.get(mode)}
        self._param_generator = PlainUniformGenerator(
            ((s0, s1), "scale", None, None),
            ((math.log(r0), math.log(r1)), "log_ratio", None, None),
            ((0.0, 1.0), "tx", None, None),
            ((0.0, 1.0), "ty", None, None),
        )
        self._init_seed(generator)

    def generate_parameters(self, batch_shape: Tuple[int, ...]) -> Dict[str, torch.Tensor]:
        params = super().generate_parameters(batch_shape)
        oh, ow = self.flags["size"] if self.flags["size"] is not None else (int(batch_shape[-2]), int(batch_shape[-1]))
        params["output_size"] = torch.tensor([[oh, ow]], dtype=torch.long).repeat(int(batch_shape[0]), 1)
        return params

    def _out_size(self, input: torch.Tensor, flags: Dict[str, Any]) -> Tuple[int, int]:
        return flags["size"] if flags["size"] is not None else (int(input.shape[-2]), int(input.shape[-1]))

    def _resize_matrix(self, input: torch.Tensor, flags: Dict[str, Any]) -> torch.Tensor:
        h, w = input.shape[-2:]
        oh, ow = self._out_size(input, flags)
        m = torch.eye(3, device=input.device, dtype=input.dtype).repeat(input.shape[0], 1, 1)
        m[:, 0, 0] = (ow - 1) / max(w - 1, 1)
        m[:, 1, 1] = (oh - 1) / max(h - 1, 1)
        return m

    def identity_matrix(self, input: torch.Tensor) -> torch.Tensor:
        return self._resize_matrix(input, self.flags)

    def compute_transformation(
        self, input: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]
    ) -> torch.Tensor:
        h, w = float(input.shape[-2]), float(input.shape[-1])
        oh, ow = self._out_size(input, flags)
        dev, dt = input.device, input.dtype
        s = params["scale"].to(dev, torch.float64)
        r = params["log_ratio"].to(dev, torch.float64).exp()
        cw = (w * torch.sqrt(s * r)).clamp(min(2.0, w), w)
        ch = (h * torch.sqrt(s / r)).clamp(min(2.0, h), h)
        x0 = params["tx"].to(dev, torch.float64) * (w - cw)
        y0 = params["ty"].to(dev, torch.float64) * (h - ch)
        m = torch.zeros(input.shape[0], 3, 3, device=dev, dtype=torch.float64)
        for row, (src, out, c, o0) in enumerate(((w, ow, cw, x0), (h, oh, ch, y0))):
            if src > 1 and out > 1:  # crop [o0, o0 + c - 1] -> [0, out - 1] (align_corners pixel centres)
                scale = (out - 1) / (c - 1)
                m[:, row, row], m[:, row, 2] = scale, -scale * o0
            else:  # a 1-pixel side (in or out): no scaling, the crop's centre goes to the output's centre
                m[:, row, row], m[:, row, 2] = 1.0, (out - 1) / 2 - (o0 + (c - 1) / 2)
        m[:, 2, 2] = 1.0
        return m.to(dt)

    def apply_transform(
        self,
        input: torch.Tensor,
        params: Dict[str, torch.Tensor],
        flags: Dict[str, Any],
        transform: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if transform is None:
            transform = self.compute_transformation(input, params, flags)
        return warp_affine_batched(
            input, transform, self._out_size(input, flags), mode=flags["resample"].name.lower(), padding_mode="border"
        )

    def apply_non_transform(
        self,
        input: torch.Tensor,
        params: Dict[str, torch.Tensor],
        flags: Dict[str, Any],
        transform: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if self._out_size(input, flags) == tuple(input.shape[-2:]):
            return input
        m = self._resize_matrix(input, flags)
        mode = flags["resample"].name.lower()
        return warp_affine_batched(input, m, self._out_size(input, flags), mode=mode, padding_mode="zeros")

    # Skipped samples are resized to ``size``: their masks, boxes and keypoints get the same resize, which is the
    # matrix kornia passes for those rows (``identity_matrix`` above).
    def apply_non_transform_mask(
        self,
        input: torch.Tensor,
        params: Dict[str, torch.Tensor],
        flags: Dict[str, Any],
        transform: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self.apply_non_transform(input, params, flags, transform)

    def transform_boxes(self, input: Any, params: Dict[str, torch.Tensor], flags: Dict[str, Any], transform: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        """Every row through its matrix (the crop, or the resize of a skipped sample): kornia's ``Boxes.transform_boxes``."""
        params, flags = process_kwargs_to_params_and_flags(self, params, flags, **kwargs)
        m = self._forward_matrix(params, flags, input.data) if transform is None else transform
        return input.clone().transform_boxes_(m.to(input.data.device, input.data.dtype))

    def transform_keypoints(self, input: Any, params: Dict[str, torch.Tensor], flags: Dict[str, Any], transform: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        """Every row through its matrix (the crop, or the resize of a skipped sample)."""
        params, flags = process_kwargs_to_params_and_flags(self, params, flags, **kwargs)
        m = self._forward_matrix(params, flags, input.data) if transform is None else transform
        return input.clone().transform_keypoints_(m.to(input.data.device, input.data.dtype))

    # ---- inverse: every row back onto the forward input's grid ----------------------------------------------------

    def _forward_matrix(self, params: Dict[str, torch.Tensor], flags: Dict[str, Any], like: torch.Tensor) -> torch.Tensor:
        shape = tuple(int(v) for v in params["forward_input_shape"].tolist())
        meta = torch.empty((), device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32).expand(shape)
        return self.generate_transformation_matrix(meta, params, flags)

    def inverse_transform(
        self,
        input: torch.Tensor,
        flags: Dict[str, Any],
        transform: Optional[torch.Tensor] = None,
        size: Optional[Tuple[int, int]] = None,
    ) -> torch.Tensor:
        if transform is None or size is None:
            raise ValueError("ConservativeResizedCrop.inverse_transform needs the inverse matrix and the input size")
        return warp_affine_batched(input, transform, size, mode=flags["resample"].name.lower(), padding_mode="zeros")

    def inverse_inputs(
        self,
        input: torch.Tensor,
        params: Dict[str, torch.Tensor],
        flags: Dict[str, Any],
        transform: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        params, flags = process_kwargs_to_params_and_flags(self, params, flags, **kwargs)
        _, _, h, w = (int(v) for v in params["forward_input_shape"].tolist())
        if input.shape[0] == 0:
            return input.reshape(*input.shape[:-2], h, w)
        if transform is None:
            transform = torch.linalg.inv(self._forward_matrix(params, flags, input).double()).to(input.dtype)
        work = input if input.is_floating_point() else input.float()
        out = self.inverse_transform(work, flags, transform.to(work.device, work.dtype), (h, w))
        return out if input.is_floating_point() else out.round().to(input.dtype)

    def inverse(self, input: torch.Tensor, params: Optional[Dict[str, torch.Tensor]] = None, **kwargs: Any) -> torch.Tensor:
        """Map a crop's output back onto its input grid: ``warp(y, M⁻¹)``, zeros outside the crop (kornia's convention)."""
        params = self._params if params is None else params
        if not params:
            raise ValueError("no parameters to invert: call the crop first or pass params=")
        return self.inverse_inputs(input, params, self.flags, None, **kwargs)

    def inverse_boxes(self, input: Any, params: Dict[str, torch.Tensor], flags: Dict[str, Any], transform: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        if transform is None:
            transform = torch.linalg.inv(self._forward_matrix(params, flags, input.data).double())
        return input.clone().transform_boxes_(transform.to(input.data.device, input.data.dtype))

    def inverse_keypoints(self, input: Any, params: Dict[str, torch.Tensor], flags: Dict[str, Any], transform: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        if transform is None:
            transform = torch.linalg.inv(self._forward_matrix(params, flags, input.data).double())
        return input.clone().transform_keypoints_(transform.to(input.data.device, input.data.dtype))
