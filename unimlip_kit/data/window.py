"""Intensity windowing of Hounsfield units (or any calibrated values) to [0, 1].

Files are windowed with DICOM's linear VOI LUT (PS3.3 C.11.2.1.2.1),
:func:`~unimlip_kit.utils.windows.dicom_linear_window`, so a file looks as a DICOM
viewer shows it. Both window formulas and the preset table live in
:mod:`unimlip_kit.utils.windows`.

Named presets are the usual radiology windows (centre, width) in HU, from the
one table in :mod:`unimlip_kit.utils.windows` (``WINDOW_PRESETS`` is
:data:`unimlip_kit.augment.CT_WINDOWS`, the same dict). The augmentation's ``RandomWindow``
uses the plain :func:`~unimlip_kit.utils.windows.apply_window`
``clamp((x - c + w/2) / w)``, which differs by at most ``1 / w`` (at the DICOM top).

Non-finite values (NaN outside a brain mask, a stray infinity) are *missing*:
they never enter an intensity range and come out as 0, the display minimum, so
one NaN voxel cannot turn a whole slice black or NaN. A slice with no finite
value at all raises ``ValueError`` (the decoder skips and counts it).
"""

from __future__ import annotations

import numpy as np

from unimlip_kit.utils.windows import CT_WINDOWS, dicom_linear_window

__all__ = ["WINDOW_PRESETS", "dicom_linear_window", "minmax_unit", "resolve_window"]

#: (centre, width) in Hounsfield units (the shared table of :mod:`unimlip_kit.utils.windows`).
WINDOW_PRESETS: dict[str, tuple[float, float]] = CT_WINDOWS


def resolve_window(window: str | tuple[float, float] | None) -> tuple[float, float] | None:
    """A preset name or an explicit ``(centre, width)`` as floats; ``None`` stays ``None``.

    Example:
        >>> resolve_window("lung")
        (-600.0, 1500.0)
        >>> resolve_window("nope")
        Traceback (most recent call last):
        ...
        ValueError: unknown window preset 'nope' (known: abdomen, bone, brain, liver, lung, mediastinum, soft_tissue, stroke, subdural)
    """
    if window is None:
        return None
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {window!r} (known: {', '.join(sorted(WINDOW_PRESETS))})")
        return WINDOW_PRESETS[window]
    try:
        c, w = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(
            f"window must be a preset name ({', '.join(sorted(WINDOW_PRESETS))}) or (centre, width), got {window!r}"
        ) from None
    if not np.isfinite(c) or not np.isfinite(w) or w < 1:
        raise ValueError(f"window must be (centre, width) with finite centre and width >= 1, got {window}")
    return c, w


def minmax_unit(values: np.ndarray) -> np.ndarray:
    """Map ``values`` linearly onto [0, 1] over their *finite* range (float32); non-finite values become 0.

    A constant image maps to 0. ``ValueError`` if no value is finite.

    Example:
        >>> minmax_unit(np.array([2.0, np.nan, 4.0, 3.0])).tolist()
        [0.0, 0.0, 1.0, 0.5]
        >>> minmax_unit(np.array([np.nan, np.inf]))
        Traceback (most recent call last):
        ...
        ValueError: no finite value to scale (2 values, all NaN or infinite)
    """
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        raise ValueError(f"no finite value to scale ({x.size} values, all NaN or infinite)")
    lo, hi = float(x[finite].min()), float(x[finite].max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        y = (x - lo) / (hi - lo)
    return np.where(finite, y, 0.0).astype(np.float32)
