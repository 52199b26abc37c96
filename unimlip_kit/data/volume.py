"""Hounsfield units and 3-D volumes with spacing and orientation, from DICOM (files or series folders) and NIfTI.

``load_volume(path) -> Volume(array, spacing, affine, orientation, meta)``:

* ``array``: float32 ``(Z, Y, X)`` = (slice, row, column), in modality units (HU for
  CT: ``stored * RescaleSlope + RescaleIntercept``, DICOM PS3.3 C.11.1.1.2; NIfTI
  ``scl_slope``/``scl_inter`` applied), never windowed. ``array[k]`` is one 2-D
  image exactly as :func:`~unimlip_kit.data.dicom.read_dicom_hu` returns a frame.
* ``affine``: 4 x 4, float64, maps an index ``(k, j, i, 1)`` **in array order** to
  RAS+ world coordinates in mm (x grows towards the patient's Right, y Anterior,
  z Superior, as nibabel and MONAI use). DICOM's LPS patient coordinates are
  converted by negating x and y.
* ``spacing``: mm per array axis, the column norms of ``affine[:3, :3]``.
* ``orientation``: the axis codes of the array axes, e.g. ``"SPL"`` (axis 0 towards
  Superior, axis 1 Posterior, axis 2 Left), nibabel's ``aff2axcodes`` convention;
  ``""`` when the file states no orientation (a plain radiograph).

``canonical=True`` reorients (axis permutations and flips only, no resampling) to
``"SPL"``: ``array[k]`` is then an axial slice in radiological display — anterior at
the top, the patient's right on the image's left, as every 2-D reader in
:mod:`unimlip_kit.data` shows it — and ``k`` grows towards the head.

Orientation next to MONAI: MONAI's ``LoadImage`` returns the same voxels with the
spatial axes **reversed**, ``(X, Y, Z)`` = (column, row, slice) for DICOM and
nibabel's ``(i, j, k)`` for NIfTI, with a RAS affine over that order. So for a NIfTI
file ``monai_array == ours.array.transpose(2, 1, 0)`` and ``monai_affine ==
ours.affine[:, [2, 1, 0, 3]]`` (with ``canonical=False``); for a DICOM series the
same holds up to the order of the slices (ours ascend along the slice normal
``row direction x column direction``), which both affines state: compare voxels by
world position (``tests/test_data_volume.py`` does, against MONAI when installed).

DICOM series (a folder): files that are not DICOM are skipped and counted in
``meta["skipped_files"]``; several series in one folder need ``series_uid=``;
slices must share size and orientation and be evenly spaced (a missing slice is an
error naming the gap, never a silently stretched volume).

Example:
    >>> import os, nibabel.testing
    >>> vol = load_volume(os.path.join(nibabel.testing.data_path, "anatomical.nii"), canonical=False)
    >>> vol.array.shape, vol.array.dtype, vol.spacing, vol.orientation
    ((25, 41, 33), dtype('float32'), (2.0, 2.0, 2.0), 'SAL')
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from unimlip_kit.data.decode import NIFTI_SUFFIXES
from unimlip_kit.utils.optional import require

__all__ = ["Volume", "axis_codes", "load_hu", "load_volume", "reorient"]

_POS = "RAS"
_NEG = "LPI"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """A 3-D image: float32 ``array`` (Z, Y, X), RAS ``affine`` over array order, ``spacing`` (mm), axis codes.

    Example:
        >>> v = Volume(np.zeros((2, 3, 4), np.float32), np.diag([2.0, 1.0, 1.0, 1.0]))
        >>> v.spacing, v.orientation
        ((2.0, 1.0, 1.0), 'RAS')
    """

    array: np.ndarray
    affine: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> Tuple[float, float, float]:
        """Voxel size in mm along each array axis (norms of the affine's columns)."""
        return tuple(round(float(v), 6) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes of the array axes (``"SPL"``: towards Superior, Posterior, Left); ``""`` if unknown."""
        return "" if self.meta.get("orientation_unknown") else axis_codes(self.affine)


def axis_codes(affine: np.ndarray) -> str:
    """The world direction (RAS codes) each array axis of ``affine`` points to, as nibabel's ``aff2axcodes``.

    Axes are assigned greedily, the most aligned first, so an oblique volume still gets three distinct codes.

    Example:
        >>> axis_codes(np.diag([-1.0, -1.0, 1.0, 1.0]))
        'LPS'
        >>> axis_codes(np.array([[0, 0, -1, 0], [0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]]))
        'SPL'
    """
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    cols = m / np.maximum(np.linalg.norm(m, axis=0, keepdims=True), 1e-12)
    codes = [""] * 3
    free_world, free_axes = {0, 1, 2}, {0, 1, 2}
    while free_axes:
        ax, w = max(((a, w) for a in free_axes for w in free_world), key=lambda aw: abs(cols[aw[1], aw[0]]))
        codes[ax] = _POS[w] if cols[w, ax] > 0 else _NEG[w]
        free_axes.discard(ax)
        free_world.discard(w)
    return "".join(codes)


def reorient(array: np.ndarray, affine: np.ndarray, target: str = "SPL") -> Tuple[np.ndarray, np.ndarray]:
    """Permute and flip the axes of ``array`` so they point to ``target`` codes; the affine follows (no resampling).

    Example:
        >>> a = np.arange(6.0).reshape(1, 2, 3)
        >>> b, aff = reorient(a, np.eye(4), "RPI")  # axes 1 and 2 flipped
        >>> b[0].tolist(), axis_codes(aff)
        ([[5.0, 4.0, 3.0], [2.0, 1.0, 0.0]], 'RPI')
    """
    target = target.upper()
    world = {c: i for i, c in enumerate(_POS)} | {c: i for i, c in enumerate(_NEG)}
    if len(target) != 3 or any(c not in world for c in target) or len({world[c] for c in target}) != 3:
        raise ValueError(f"target must be three axis codes, one of R/L, A/P, S/I each (e.g. 'SPL'), got {target!r}")
    codes = axis_codes(affine)
    src_of_world = {world[c]: (ax, c in _POS) for ax, c in enumerate(codes)}
    perm, flips = [], []
    for c in target:
        ax, positive = src_of_world[world[c]]
        perm.append(ax)
        flips.append(positive != (c in _POS))
    out = np.transpose(array, perm)
    aff = np.asarray(affine, dtype=np.float64).copy()
    new = np.eye(4)
    new[:3, 3] = aff[:3, 3]
    for t, (ax, flip) in enumerate(zip(perm, flips)):
        col = aff[:3, ax]
        if flip:
            out = np.flip(out, axis=t)
            new[:3, 3] += col * (array.shape[ax] - 1)
            col = -col
        new[:3, t] = col
    return np.ascontiguousarray(out), new


# ---- DICOM ---------------------------------------------------------------------------------------------------------


def _floats(value: Any, n: int) -> Optional[np.ndarray]:
    if value is None:
        return None
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) else None


def _scalar(value: Any) -> Optional[float]:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _modality_units(ds: Any, pixels: np.ndarray) -> np.ndarray:
    slope, intercept = _scalar(ds.get("RescaleSlope", None)), _scalar(ds.get("RescaleIntercept", None))
    shared = ds.get("SharedFunctionalGroupsSequence", None)
    if (slope is None or intercept is None) and shared:
        pvt = shared[0].get("PixelValueTransformationSequence", None)
        if pvt:
            slope = _scalar(pvt[0].get("RescaleSlope", None)) if slope is None else slope
            intercept = _scalar(pvt[0].get("RescaleIntercept", None)) if intercept is None else intercept
    out = pixels.astype(np.float32)
    if slope is not None and slope != 1.0:
        out *= np.float32(slope)
    if intercept:
        out += np.float32(intercept)
    return out


def _geometry(ds: Any) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Tuple[float, float]]:
    """(ImagePositionPatient, ImageOrientationPatient, (row spacing, column spacing)) of a (single-frame) dataset."""
    ipp = _floats(ds.get("ImagePositionPatient", None), 3)
    iop = _floats(ds.get("ImageOrientationPatient", None), 6)
    ps = _floats(ds.get("PixelSpacing", None), 2)
    if ps is None:
        ps = _floats(ds.get("ImagerPixelSpacing", None), 2)
    shared = ds.get("SharedFunctionalGroupsSequence", None)
    if shared:
        g = shared[0]
        if iop is None and g.get("PlaneOrientationSequence", None):
            iop = _floats(g.PlaneOrientationSequence[0].get("ImageOrientationPatient", None), 6)
        if ps is None and g.get("PixelMeasuresSequence", None):
            ps = _floats(g.PixelMeasuresSequence[0].get("PixelSpacing", None), 2)
    spacing = (1.0, 1.0) if ps is None else (float(ps[0]), float(ps[1]))
    return ipp, iop, spacing


def _slice_step(ds: Any) -> float:
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        v = _scalar(ds.get(key, None))
        if v is not None and v > 0:
            return v
    return 1.0


def _affine_lps(ipp: np.ndarray, iop: np.ndarray, spacing: Tuple[float, float], slice_vec: np.ndarray) -> np.ndarray:
    """Index (k, j, i) -> LPS mm: ``IPP + k * slice_vec + j * dr * column_dir + i * dc * row_dir`` (PS3.3 C.7.6.2.1.1)."""
    row_dir, col_dir = iop[:3], iop[3:]
    aff = np.eye(4)
    aff[:3, 0] = slice_vec
    aff[:3, 1] = col_dir * spacing[0]  # moving down one row: PixelSpacing[0] along the column direction
    aff[:3, 2] = row_dir * spacing[1]  # moving right one column: PixelSpacing[1] along the row direction
    aff[:3, 3] = ipp
    return aff


def _read_dicom_file(path: Path, pydicom: Any) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    ds = pydicom.dcmread(os.fspath(path))
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise ValueError(f"{path}: only greyscale DICOM is supported (SamplesPerPixel={samples})")
    pixels = np.asarray(ds.pixel_array)
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    frames = pixels if (n_frames > 1 or pixels.ndim == 3) else pixels[None]
    ipp, iop, spacing = _geometry(ds)
    meta: Dict[str, Any] = {"source": "dicom", "path": os.fspath(path), "n_slices": int(frames.shape[0])}
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    positions: Optional[List[np.ndarray]] = None
    if per_frame and len(per_frame) == frames.shape[0]:
        got = [_floats(g.PlanePositionSequence[0].get("ImagePositionPatient", None), 3) if g.get("PlanePositionSequence", None) else None for g in per_frame]
        positions = None if any(p is None for p in got) else got  # type: ignore[assignment]
    if iop is None:
        if frames.shape[0] > 1:
            raise ValueError(f"{path}: {frames.shape[0]} frames but no ImageOrientationPatient: cannot place them in space")
        aff = np.diag([_slice_step(ds), spacing[0], spacing[1], 1.0])
        meta["orientation_unknown"] = True
        return _modality_units(ds, frames), aff, meta
    normal = np.cross(iop[:3], iop[3:])
    if positions is not None:
        order = np.argsort([float(p @ normal) for p in positions], kind="stable")
        frames, positions = frames[order], [positions[i] for i in order]
        slice_vec = _even_step(np.stack(positions), normal, str(path))
        origin = positions[0]
    else:
        slice_vec = normal * _slice_step(ds)
        origin = ipp if ipp is not None else np.zeros(3)
    aff = _LPS_TO_RAS @ _affine_lps(origin, iop, spacing, slice_vec)
    return _modality_units(ds, frames), aff, meta


def _even_step(positions: np.ndarray, normal: np.ndarray, where: str) -> np.ndarray:
    """The slice vector of sorted, evenly spaced positions; an uneven or duplicated stack is an error."""
    if len(positions) == 1:
        return normal * 1.0
    proj = positions @ normal
    gaps = np.diff(proj)
    if float(gaps.min()) <= 1e-4:
        raise ValueError(f"{where}: two slices share the position {float(proj[int(np.argmin(gaps))]):.4g} mm along the slice normal")
    med = float(np.median(gaps))
    if float(gaps.max() - gaps.min()) > 0.01 * med + 1e-3:
        raise ValueError(
            f"{where}: slice spacing varies from {float(gaps.min()):.4g} to {float(gaps.max()):.4g} mm "
            f"(missing slices?); load the slices separately or fill the gap"
        )
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def _read_dicom_series(folder: Path, series_uid: Optional[str], pydicom: Any) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    headers: Dict[str, List[Tuple[Path, Any]]] = {}
    skipped = 0
    for p in sorted(q for q in folder.iterdir() if q.is_file()):
        try:
            ds = pydicom.dcmread(os.fspath(p), stop_before_pixels=True)
        except Exception:  # not DICOM (README, DICOMDIR without image, ...): skipped and counted
            skipped += 1
            continue
        if "PixelData" not in ds and not hasattr(ds, "Rows"):
            skipped += 1
            continue
        headers.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    if not headers:
        raise ValueError(f"{folder}: no DICOM image files found ({skipped} other files skipped)")
    if series_uid is None:
        if len(headers) > 1:
            listing = ", ".join(f"{uid} ({len(v)} files)" for uid, v in sorted(headers.items()))
            raise ValueError(f"{folder} holds {len(headers)} series; pass series_uid= one of: {listing}")
        series_uid = next(iter(headers))
    if series_uid not in headers:
        raise ValueError(f"{folder}: no series {series_uid!r}; found {sorted(headers)}")
    files = headers[series_uid]
    geo = [_geometry(ds) for _, ds in files]
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in files}
    if len(shapes) > 1:
        raise ValueError(f"{folder}: slices of series {series_uid} have different sizes {sorted(shapes)}")
    if len(files) > 1:
        if any(g[0] is None or g[1] is None for g in geo):
            raise ValueError(f"{folder}: a slice of series {series_uid} has no ImagePositionPatient/ImageOrientationPatient")
        iop0 = geo[0][1]
        if any(np.abs(g[1] - iop0).max() > 1e-3 for g in geo):  # type: ignore[operator]
            raise ValueError(f"{folder}: the slices of series {series_uid} are not parallel (different ImageOrientationPatient)")
        normal = np.cross(iop0[:3], iop0[3:])  # type: ignore[index]
        order = np.argsort([float(g[0] @ normal) for g in geo], kind="stable")  # type: ignore[operator]
        files = [files[i] for i in order]
        geo = [geo[i] for i in order]
        slice_vec = _even_step(np.stack([g[0] for g in geo]), normal, f"{folder} (series {series_uid})")  # type: ignore[misc]
    slices = []
    for p, _ in files:
        arr, aff1, meta1 = _read_dicom_file(p, pydicom)
        if arr.shape[0] != 1:
            raise ValueError(f"{p}: a multi-frame file inside a series folder; load it on its own")
        slices.append(arr[0])
    meta: Dict[str, Any] = {"source": "dicom", "path": os.fspath(folder), "series_uid": series_uid,
                            "n_slices": len(slices), "skipped_files": skipped}
    if len(files) == 1:
        meta.update({k: v for k, v in meta1.items() if k == "orientation_unknown"})
        return np.stack(slices), aff1, meta
    aff = _LPS_TO_RAS @ _affine_lps(geo[0][0], geo[0][1], geo[0][2], slice_vec)  # type: ignore[arg-type]
    return np.stack(slices), aff, meta


# ---- NIfTI ---------------------------------------------------------------------------------------------------------


def _read_nifti(path: Path, volume: int) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    nib = require("nibabel", "medical", "reading NIfTI files")
    img = nib.load(os.fspath(path))
    data = np.asarray(img.get_fdata(dtype=np.float32))  # applies scl_slope / scl_inter
    if data.ndim == 4:
        if not 0 <= volume < data.shape[3]:
            raise ValueError(f"{path}: volume {volume} out of range for {data.shape[3]} volumes")
        data = data[..., volume]
    elif data.ndim == 2:
        data = data[:, :, None]
    elif data.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D, 3-D or 4-D NIfTI image, got shape {data.shape}")
    # nibabel's (i, j, k) -> our (k, j, i): reverse the axes and the affine's first three columns
    aff = np.asarray(img.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    return np.ascontiguousarray(data.transpose(2, 1, 0)), aff, {"source": "nifti", "path": os.fspath(path)}


def load_volume(
    path: str | os.PathLike,
    *,
    canonical: bool = False,
    series_uid: Optional[str] = None,
    volume: int = 0,
) -> Volume:
    """A DICOM file, DICOM series folder or NIfTI file as a float32 :class:`Volume` in modality units (HU for CT).

    Args:
        path: a ``.dcm`` file (one frame or multi-frame), a folder holding one DICOM series, or ``.nii``/``.nii.gz``.
        canonical: reorient to ``"SPL"`` (axial slices in radiological display, ``k`` towards the head);
            ``False`` keeps the file's order (DICOM: slices ascending along the normal).
        series_uid: which series of a folder holding several.
        volume: time point of a 4-D NIfTI file.

    See the module docstring for the array order, the RAS affine and MONAI's transposed convention.

    Example:
        >>> import pydicom.data
        >>> v = load_volume(pydicom.data.get_testdata_file("CT_small.dcm"))
        >>> v.array.shape, v.array.dtype, v.spacing, v.orientation
        ((1, 128, 128), dtype('float32'), (5.0, 0.661468, 0.661468), 'SPL')
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if p.is_dir():
        array, aff, meta = _read_dicom_series(p, series_uid, require("pydicom", "medical", "reading DICOM files"))
    elif p.name.lower().endswith(NIFTI_SUFFIXES):
        array, aff, meta = _read_nifti(p, volume)
    else:
        array, aff, meta = _read_dicom_file(p, require("pydicom", "medical", "reading DICOM files"))
    if canonical and not meta.get("orientation_unknown"):
        array, aff = reorient(array, aff, "SPL")
    return Volume(np.ascontiguousarray(array, dtype=np.float32), aff, meta)


def load_hu(path: str | os.PathLike, frame: Optional[int] = None, *, series_uid: Optional[str] = None) -> np.ndarray:
    """Modality units (Hounsfield units for CT), float32, never windowed.

    A single-frame DICOM file gives ``(H, W)`` (as :func:`~unimlip_kit.data.dicom.read_dicom_hu`, in float32);
    ``frame=k`` picks one frame of a multi-frame file. A DICOM series folder or a NIfTI file gives the
    ``(Z, Y, X)`` volume of :func:`load_volume` (``frame=k``: its slice ``k``).

    Example:
        >>> import pydicom.data
        >>> hu = load_hu(pydicom.data.get_testdata_file("CT_small.dcm"))
        >>> hu.shape, hu.dtype, float(hu.min()) >= -1024
        ((128, 128), dtype('float32'), True)
    """
    vol = load_volume(path, series_uid=series_uid)
    arr = vol.array
    if frame is not None:
        if not -arr.shape[0] <= int(frame) < arr.shape[0]:
            raise ValueError(f"{path}: frame {frame} out of range for {arr.shape[0]} frames/slices")
        return arr[int(frame)]
    return arr[0] if arr.shape[0] == 1 and Path(path).is_file() and not os.fspath(path).lower().endswith(NIFTI_SUFFIXES) else arr
