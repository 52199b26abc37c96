"""DICOM reading: stored values -> Hounsfield units (or modality units) -> window -> [0, 1].

pydicom is optional (``pip install 'unimlip_kit[medical]'``) and imported only
when a DICOM file is read. The modality LUT is the linear one of DICOM PS3.3
C.11.1.1.2: ``HU = stored * RescaleSlope + RescaleIntercept`` (slope 1 and
intercept 0 when the tags are absent, as for most MR). The window comes from
the caller (a preset name or ``(centre, width)``), else the file's first
WindowCenter/WindowWidth, else the min–max of the image. ``MONOCHROME1``
images (where high values are dark) are inverted after windowing so bone is
always bright.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from unimlip_kit.data.window import dicom_linear_window, minmax_unit, resolve_window
from unimlip_kit.utils.optional import require

__all__ = ["dicom_to_unit", "read_dicom_hu"]


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def read_dicom_hu(path: str | os.PathLike, frame: int | None = None) -> tuple[np.ndarray, Any]:
    """Read one 2-D frame of a DICOM file as float64 modality units, plus the dataset.

    ``frame`` picks a frame of a multi-frame file (default: the middle one).

    Example:
        >>> import pydicom.data
        >>> hu, ds = read_dicom_hu(pydicom.data.get_testdata_file("CT_small.dcm"))
        >>> hu.shape, float(hu.min()) >= -1024
        ((128, 128), True)
    """
    pydicom = require("pydicom", "medical", "reading DICOM files")
    ds = pydicom.dcmread(os.fspath(path))
    pixels = np.asarray(ds.pixel_array)
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise ValueError(f"{path}: only greyscale DICOM is supported (SamplesPerPixel={samples})")
    if n_frames > 1 or pixels.ndim == 3:
        k = pixels.shape[0] // 2 if frame is None else int(frame)
        if not 0 <= k < pixels.shape[0]:
            raise ValueError(f"{path}: frame {frame} out of range for {pixels.shape[0]} frames")
        pixels = pixels[k]
    slope = _first(ds.get("RescaleSlope", None))
    intercept = _first(ds.get("RescaleIntercept", None))
    hu = pixels.astype(np.float64) * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
    return hu, ds


def dicom_to_unit(
    path: str | os.PathLike,
    window: str | tuple[float, float] | None = None,
    frame: int | None = None,
) -> np.ndarray:
    """A DICOM frame as float32 (H, W) in [0, 1]: HU conversion, then windowing.

    Example:
        >>> import pydicom.data
        >>> x = dicom_to_unit(pydicom.data.get_testdata_file("CT_small.dcm"), window="abdomen")
        >>> x.dtype, 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
        (dtype('float32'), True)
    """
    hu, ds = read_dicom_hu(path, frame)
    win = resolve_window(window)
    if win is None:
        c, w = _first(ds.get("WindowCenter", None)), _first(ds.get("WindowWidth", None))
        win = (c, w) if c is not None and w is not None and w >= 1 else None
    if win is None:
        out = minmax_unit(hu)  # float pixel data may hold NaN: ignored by the range, filled with 0
    else:
        out = dicom_linear_window(hu, *win)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return out
