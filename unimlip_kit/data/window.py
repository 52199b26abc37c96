"""Intensity windowing of Hounsfield units (or any calibrated values) to [0, 1].

Follows the linear VOI LUT of DICOM PS3.3 C.11.2.1.2.1 with output range
[0, 1]: for centre ``c`` and width ``w >= 1``::

    y = 0                                   if x <= c - 0.5 - (w - 1) / 2
    y = 1                                   if x >  c - 0.5 + (w - 1) / 2
    y = (x - (c - 0.5)) / (w - 1) + 0.5     otherwise

Named presets are the usual radiology windows (centre, width) in HU, from the
one table in :mod:`unimlip_kit.utils.windows` (``WINDOW_PRESETS`` is
:data:`unimlip_kit.augment.CT_WINDOWS`, the same dict). This module decodes files, so it
follows the DICOM formula; the augmentation's ``RandomWindow`` uses the plain
``clamp((x - c + w/2) / w)``, which differs by at most ``0.5 / (w - 1)``.

Non-finite values (NaN outside a brain mask, a stray infinity) are *missing*:
they never enter an intensity range and come out as 0, the display minimum, so
one NaN voxel cannot turn a whole slice black or NaN. A slice with no finite
value at all raises ``ValueError`` (the decoder skips and counts it).
"""

from __future__ import annotations

import numpy as np

from unimlip_kit.utils.windows import CT_WINDOWS

__all__ = ["WINDOW_PRESETS", "apply_window", "minmax_unit", "resolve_window"]

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


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map ``values`` to [0, 1] with the DICOM linear window (float32 output).

    Example:
        >>> [round(float(v), 3) for v in apply_window(np.array([-1000.0, 40.0, 1000.0]), 40, 400)]
        [0.0, 0.501, 1.0]
    """
    c, w = resolve_window((center, width))
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    if w == 1:
        return ((x > lo) & finite).astype(np.float32)
    with np.errstate(invalid="ignore"):
        y = (x - (c - 0.5)) / (w - 1) + 0.5
        y = np.where(x <= lo, 0.0, np.where(x > hi, 1.0, y))
    return np.where(finite, np.clip(y, 0.0, 1.0), 0.0).astype(np.float32)


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
