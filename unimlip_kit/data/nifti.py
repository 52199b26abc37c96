"""NIfTI reading: one 2-D slice of a volume, displayed in radiological convention.

nibabel is optional (``pip install 'unimlip_kit[medical]'``). ``get_fdata``
applies the header's ``scl_slope``/``scl_inter``, so CT volumes come out in
HU and can be windowed like DICOM. With ``canonical=True`` (default) the
volume is first reoriented to the closest RAS+ orientation
(``nibabel.as_closest_canonical``) and an axial slice ``data[:, :, k]`` is
displayed as ``data[:, :, k].T[::-1, ::-1]``: anterior at the top and the
patient's right on the image's left — the radiological convention used by
the rest of :mod:`unimlip_kit.data` (and by the caption-aware flip).
"""

from __future__ import annotations

import os

import numpy as np

from unimlip_kit.data.window import dicom_linear_window, minmax_unit, resolve_window
from unimlip_kit.utils.optional import require

__all__ = ["nifti_slice", "nifti_to_unit"]


def nifti_slice(
    path: str | os.PathLike,
    slice_index: int | None = None,
    axis: int = 2,
    volume: int = 0,
    canonical: bool = True,
) -> np.ndarray:
    """One slice (float64, scaled values) of a 3-D or 4-D NIfTI volume.

    ``axis`` 0/1/2 is sagittal/coronal/axial after canonical reorientation;
    ``slice_index`` defaults to the middle; ``volume`` picks the time point of
    a 4-D file. With ``canonical=True`` the axial slice is in radiological
    display order (see module docstring); otherwise it is the raw array slice.

    Example:
        >>> import os, nibabel
        >>> f = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii")
        >>> nifti_slice(f).shape
        (41, 33)
    """
    nib = require("nibabel", "medical", "reading NIfTI files")
    img = nib.load(os.fspath(path))
    if canonical:
        img = nib.as_closest_canonical(img)
    data = np.asarray(img.get_fdata(dtype=np.float64))
    if data.ndim == 4:
        if not 0 <= volume < data.shape[3]:
            raise ValueError(f"{path}: volume {volume} out of range for {data.shape[3]} volumes")
        data = data[..., volume]
    elif data.ndim == 2:
        data = data[:, :, None]
    elif data.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D, 3-D or 4-D volume, got shape {data.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    k = data.shape[axis] // 2 if slice_index is None else int(slice_index)
    if not 0 <= k < data.shape[axis]:
        raise ValueError(f"{path}: slice {slice_index} out of range for {data.shape[axis]} slices on axis {axis}")
    sl = np.take(data, k, axis=axis)
    if not canonical:
        return sl
    # Remaining RAS axes (a, b): rows = b reversed (anterior/superior at the top),
    # cols = a reversed (patient right on image left; anterior on the left for sagittal).
    return np.ascontiguousarray(sl.T[::-1, ::-1])


def nifti_to_unit(
    path: str | os.PathLike,
    slice_index: int | None = None,
    axis: int = 2,
    window: str | tuple[float, float] | None = None,
    volume: int = 0,
    canonical: bool = True,
) -> np.ndarray:
    """A NIfTI slice as float32 (H, W) in [0, 1]: windowed if ``window`` is given, else min–max.

    NaN or infinite voxels (common outside a brain mask) are ignored by the
    min–max range and come out as 0 (see :func:`~unimlip_kit.data.window.minmax_unit`).

    Example:
        >>> import os, nibabel
        >>> f = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii")
        >>> x = nifti_to_unit(f); float(x.min()), float(x.max())
        (0.0, 1.0)
    """
    sl = nifti_slice(path, slice_index, axis, volume, canonical)
    win = resolve_window(window)
    if win is not None:
        return dicom_linear_window(sl, *win)
    return np.ascontiguousarray(minmax_unit(sl))
