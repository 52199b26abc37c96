"""Random intensity windowing: per-sample window centre and width, output in [0, 1].

A window ``(c, w)`` maps ``x`` to ``clamp((x - (c - w/2)) / w, 0, 1)``
(:func:`unimlip_kit.utils.windows.apply_window`; file decoding uses DICOM's
variant, :func:`~unimlip_kit.utils.windows.dicom_linear_window`). For CT
the input is in Hounsfield units (``value_range=(-1024, 3071)``) and ``windows``
are standard radiology windows; each sample picks one window uniformly and
jitters it: ``c' = c + u_c * centre_jitter * w`` and ``w' = w * (1 + width_jitter) ** u_w``
with ``u_c, u_w ~ U(-1, 1)``. Samples the ``p`` gate skips get the first window
without jitter, so every output is in [0, 1] whatever ``p`` is.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from kornia.augmentation.random_generator import PlainUniformGenerator

from unimlip_kit.augment.base import RangeIntensityAugmentation, per_sample
# the one table of CT windows (centre, width) in HU, and the plain linear window formula
from unimlip_kit.utils.windows import CT_WINDOWS, apply_window

__all__ = ["CT_WINDOWS", "RandomWindow"]


class RandomWindow(RangeIntensityAugmentation):
    """Random window/level (CT in HU, or any modality in its own units); output in [0, 1].

    Args:
        windows: ``(centre, width)`` pairs in the input's units; one is picked per sample.
        centre_jitter: centre shift as a fraction of the width (``u * centre_jitter * w``).
        width_jitter: width scaled by ``(1 + width_jitter) ** u``.
        value_range: the input's range, e.g. ``(-1024, 3071)`` HU; the output range is [0, 1].
        p, same_on_batch, keepdim, generator: see :class:`RangeIntensityAugmentation`.

    Example:
        >>> hu = torch.linspace(-1024, 3071, 64).reshape(1, 1, 8, 8).repeat(4, 1, 1, 1)
        >>> aug = RandomWindow(windows=[CT_WINDOWS["lung"], CT_WINDOWS["bone"]], value_range=(-1024, 3071), p=1.0, generator=0)
        >>> out = aug(hu)
        >>> bool(out.min() >= 0) and bool(out.max() <= 1), out.shape
        (True, torch.Size([4, 1, 8, 8]))
    """

    gates_rows = False  # skipped samples get the default window (a change of units), not the input

    def __init__(
        self,
        windows: Sequence[Tuple[float, float]] = (CT_WINDOWS["soft_tissue"],),
        centre_jitter: float = 0.1,
        width_jitter: float = 0.2,
        value_range: Sequence[float] = (-1024.0, 3071.0),
        *,
        p: float = 1.0,
        same_on_batch: bool = False,
        keepdim: bool = False,
        generator: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(value_range, p=p, same_on_batch=same_on_batch, keepdim=keepdim, generator=generator)
        wins = [(float(c), float(w)) for c, w in windows]
        if not wins or any(w <= 0 or not math.isfinite(c) for c, w in wins):
            raise ValueError(f"windows must be a non-empty list of (centre, width) with width > 0, got {windows!r}")
        if centre_jitter < 0 or width_jitter < 0:
            raise ValueError(f"centre_jitter and width_jitter must be >= 0, got {centre_jitter}, {width_jitter}")
        self.register_buffer("windows", torch.tensor(wins, dtype=torch.float64), persistent=False)
        self.flags.update(centre_jitter=float(centre_jitter), width_jitter=float(width_jitter))
        self._param_generator = PlainUniformGenerator(
            ((-1.0, 1.0), "centre_u", None, None), ((-1.0, 1.0), "width_u", None, None)
        )

    def generate_parameters(self, batch_shape: Tuple[int, ...]) -> Dict[str, torch.Tensor]:
        params = super().generate_parameters(batch_shape)
        n = len(self.windows)
        if self.same_on_batch:
            idx = torch.randint(0, n, (1,), device=self.device).expand(batch_shape[0])
        else:
            idx = torch.randint(0, n, (batch_shape[0],), device=self.device)
        params["window"] = idx
        return params

    def _centre_width(self, input: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any]):
        win = self.windows.to(input.device)[params["window"].to(input.device).long()]
        c0, w0 = win[:, 0], win[:, 1]
        cu = params["centre_u"].to(input.device, torch.float64)
        wu = params["width_u"].to(input.device, torch.float64)
        centre = c0 + cu * flags["centre_jitter"] * w0
        width = w0 * (1.0 + flags["width_jitter"]) ** wu
        return per_sample(centre, input), per_sample(width, input)

    def apply_transform(
        self,
        input: torch.Tensor,
        params: Dict[str, torch.Tensor],
        flags: Dict[str, Any],
        transform: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        centre, width = self._centre_width(input, params, flags)
        return apply_window(input, centre, width)

    def apply_non_transform(
        self,
        input: torch.Tensor,
        params: Dict[str, torch.Tensor],
        flags: Dict[str, Any],
        transform: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        c, w = (float(v) for v in self.windows[0])
        return apply_window(input, c, w)
