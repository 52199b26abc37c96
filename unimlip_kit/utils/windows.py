"""CT windows in one place: the table of named windows and the two window formulas.

Each table entry is the usual radiology (centre, width) in Hounsfield units.
``unimlip_kit.data.WINDOW_PRESETS`` and ``unimlip_kit.augment.CT_WINDOWS`` are
this very dict, so the two can never disagree.

Two formulas, named for what they are (they differ by at most ``1 / w``, at the DICOM window's top):

* :func:`apply_window` — the plain linear window ``clamp((x - (c - w/2)) / w, 0, 1)``:
  ``c - w/2`` maps to 0 and ``c + w/2`` to 1. Used by the augmentation
  (:class:`unimlip_kit.augment.RandomWindow`), on tensors, per-sample centre/width.
* :func:`dicom_linear_window` — DICOM's VOI LUT function ``LINEAR`` (PS3.3 C.11.2.1.2.1),
  with its ``c - 0.5`` and ``w - 1`` offsets, which treat stored values as integers.
  Used when decoding DICOM/NIfTI files (:mod:`unimlip_kit.data.window`), so a file
  looks as a DICOM viewer shows it.

At window (40, 400), 239 HU is 0.9975 under :func:`apply_window` and 1.0 under
:func:`dicom_linear_window` (its top is ``c - 0.5 + (w - 1)/2 = 239``).

Example:
    >>> CT_WINDOWS["lung"], CT_WINDOWS["brain"]
    ((-600.0, 1500.0), (40.0, 80.0))
    >>> float(apply_window(torch.tensor(239.0), 40.0, 400.0)), float(dicom_linear_window(np.array(239.0), 40, 400))
    (0.9975000023841858, 1.0)
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["CT_WINDOWS", "apply_window", "dicom_linear_window"]

#: (centre, width) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (40.0, 400.0),
    "stroke": (40.0, 40.0),
    "subdural": (75.0, 215.0),
}


def apply_window(x: torch.Tensor, centre: torch.Tensor | float, width: torch.Tensor | float) -> torch.Tensor:
    """The plain linear window ``clamp((x - (centre - width / 2)) / width, 0, 1)``; per-sample or scalar centre/width.

    Example:
        >>> apply_window(torch.tensor([-1000.0, 40.0, 1000.0]), 40.0, 400.0)
        tensor([0.0000, 0.5000, 1.0000])
    """
    return torch.sub(x, centre - width / 2).div_(width).clamp_(0.0, 1.0)  # one fresh tensor, then in place


def dicom_linear_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 VOI LUT ``LINEAR`` with output range [0, 1] (float32); NaN/inf become 0.

    For centre ``c`` and width ``w >= 1``::

        y = 0                                   if x <= c - 0.5 - (w - 1) / 2
        y = 1                                   if x >  c - 0.5 + (w - 1) / 2
        y = (x - (c - 0.5)) / (w - 1) + 0.5     otherwise

    Example:
        >>> [round(float(v), 3) for v in dicom_linear_window(np.array([-1000.0, 40.0, 1000.0, np.nan]), 40, 400)]
        [0.0, 0.501, 1.0, 0.0]
    """
    c, w = float(centre), float(width)
    if not math.isfinite(c) or not math.isfinite(w) or w < 1:
        raise ValueError(f"window must be (centre, width) with finite centre and width >= 1, got ({centre}, {width})")
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    if w == 1:
        return ((x > lo) & finite).astype(np.float32)
    with np.errstate(invalid="ignore"):
        y = (x - (c - 0.5)) / (w - 1) + 0.5
        y = np.where(x <= lo, 0.0, np.where(x > hi, 1.0, y))
    return np.where(finite, np.clip(y, 0.0, 1.0), 0.0).astype(np.float32)
