"""Hounsfield units and volumes with spacing and orientation, on the files pydicom and nibabel ship.

References: pydicom's own modality LUT (``pydicom.pixels.apply_modality_lut``), nibabel's own array and
affine, the DICOM tags written into a synthetic series (the truth is what we wrote), and MONAI's
``LoadImage`` when MONAI is installed (compared voxel by voxel through the two affines).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from nibabel.testing import data_path  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from unimlip_kit.data import Volume, axis_codes, load_hu, load_volume, reorient  # noqa: E402
from unimlip_kit.data.dicom import read_dicom_hu  # noqa: E402

CT_SMALL = get_testdata_file("CT_small.dcm")
MR_SMALL = get_testdata_file("MR_small.dcm")
DICOMDIR_TESTS = Path(CT_SMALL).parent / "dicomdirtests"
CT_SERIES = DICOMDIR_TESTS / "98892001" / "CT5N"  # 5 axial CT slices, 2.5 mm apart
NIFTI = [os.path.join(data_path, f) for f in ("anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz")]


def _modality_lut(path: str) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return np.asarray(pydicom.pixels.apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


@pytest.mark.parametrize("path", [CT_SMALL, MR_SMALL])
def test_load_hu_equals_pydicoms_modality_lut_in_float32(path: str) -> None:
    hu = load_hu(path)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, _modality_lut(path).astype(np.float32))
    np.testing.assert_array_equal(hu, read_dicom_hu(path)[0].astype(np.float32))  # the 2-D reader's frame


def test_single_dicom_file_volume_geometry_from_its_tags() -> None:
    ds = pydicom.dcmread(CT_SMALL)
    vol = load_volume(CT_SMALL)
    assert vol.array.shape == (1, ds.Rows, ds.Columns) and vol.array.dtype == np.float32
    row_dir = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
    col_dir = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    for j, i in [(0, 0), (5, 17), (127, 3)]:
        lps = ipp + i * dc * row_dir + j * dr * col_dir  # DICOM PS3.3 C.7.6.2.1.1
        ras = vol.affine @ np.array([0.0, j, i, 1.0])
        np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), atol=1e-9)
    assert vol.spacing == (float(ds.SliceThickness), round(dr, 6), round(dc, 6))
    assert vol.orientation == "SPL"


def test_real_ct_series_folder_sorted_along_the_normal_with_its_spacing() -> None:
    files = sorted(CT_SERIES.iterdir())
    vol = load_volume(CT_SERIES)
    z = sorted(float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in files)
    assert vol.array.shape == (len(files), 16, 16) and vol.meta["n_slices"] == len(files)
    assert vol.spacing[0] == pytest.approx(2.5) and vol.orientation == "SPL"
    by_z = {float(pydicom.dcmread(f).ImagePositionPatient[2]): _modality_lut(str(f)) for f in files}
    for k, zk in enumerate(z):  # slice k sits at the k-th lowest z, and holds that file's HU
        np.testing.assert_array_equal(vol.array[k], by_z[zk].astype(np.float32))
        assert (vol.affine @ np.array([k, 0, 0, 1.0]))[2] == pytest.approx(zk)
    np.testing.assert_array_equal(load_hu(CT_SERIES), vol.array)


def _write_series(tmp: Path, z_positions, instance_order=None) -> Path:
    base = pydicom.dcmread(CT_SMALL)
    tmp.mkdir(parents=True, exist_ok=True)
    order = instance_order or list(range(len(z_positions)))
    for n, k in enumerate(order):
        ds = base.copy()
        ds.ImagePositionPatient = [-158.135803, -179.035797, float(z_positions[k])]
        ds.InstanceNumber = n + 1
        arr = ds.pixel_array.copy()
        arr[0, 0] = k  # tag the slice in its pixels
        ds.PixelData = arr.tobytes()
        ds.save_as(tmp / f"im{n:03d}.dcm")
    (tmp / "README.txt").write_text("not DICOM")
    return tmp


def test_shuffled_series_is_sorted_and_other_files_are_skipped_and_counted(tmp_path: Path) -> None:
    folder = _write_series(tmp_path / "s", [-10.0, -6.0, -2.0, 2.0], instance_order=[2, 0, 3, 1])
    vol = load_volume(folder)
    slope = float(pydicom.dcmread(CT_SMALL).RescaleSlope)
    intercept = float(pydicom.dcmread(CT_SMALL).RescaleIntercept)
    assert [float(v) for v in vol.array[:, 0, 0]] == [k * slope + intercept for k in range(4)]
    assert vol.spacing[0] == pytest.approx(4.0) and vol.meta["skipped_files"] == 1
    assert (vol.affine @ np.array([3, 0, 0, 1.0]))[2] == pytest.approx(2.0)


def test_uneven_or_mixed_series_are_clear_errors(tmp_path: Path) -> None:
    gap = _write_series(tmp_path / "gap", [0.0, 2.0, 4.0, 10.0])
    with pytest.raises(ValueError, match="slice spacing varies from 2 to 6 mm"):
        load_volume(gap)
    with pytest.raises(ValueError, match="not parallel"):
        load_volume(DICOMDIR_TESTS / "98892003" / "MR700")  # a radial localizer: every slice turned
    mixed = tmp_path / "mixed"
    shutil.copytree(CT_SERIES, mixed)
    shutil.copy(MR_SMALL, mixed / "mr.dcm")
    with pytest.raises(ValueError, match="holds 2 series; pass series_uid="):
        load_volume(mixed)
    uid = str(pydicom.dcmread(next(CT_SERIES.iterdir())).SeriesInstanceUID)
    assert load_volume(mixed, series_uid=uid).array.shape == (5, 16, 16)
    with pytest.raises(FileNotFoundError):
        load_volume(tmp_path / "nothing.dcm")


@pytest.mark.parametrize("path", NIFTI)
def test_nifti_volume_is_nibabels_array_with_axes_reversed(path: str) -> None:
    img = nib.load(path)
    vol = load_volume(path, canonical=False)
    data = img.get_fdata()
    data = data[..., 0] if data.ndim == 4 else data
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, data.transpose(2, 1, 0).astype(np.float32), rtol=0, atol=0)
    np.testing.assert_allclose(vol.affine[:, [2, 1, 0, 3]], img.affine, atol=1e-6)
    assert vol.orientation == "".join(reversed(nib.aff2axcodes(img.affine)))


@pytest.mark.parametrize("path", NIFTI + [str(CT_SERIES)])
def test_canonical_is_radiological_display_order_and_keeps_world_positions(path: str) -> None:
    raw = load_volume(path, canonical=False)
    can = load_volume(path, canonical=True)
    assert can.orientation == "SPL"
    assert sorted(can.array.shape) == sorted(raw.array.shape)
    # every voxel keeps its world position: map canonical indices through both affines
    k, j, i = (np.array(v) for v in zip(*[(0, 0, 0), tuple(s - 1 for s in can.array.shape), (1, 2, 3)]))
    idx = np.stack([k, j, i, np.ones_like(k)]).astype(np.float64)
    raw_idx = np.rint(np.linalg.inv(raw.affine) @ can.affine @ idx).astype(int)
    for n in range(idx.shape[1]):
        assert can.array[tuple(idx[:3, n].astype(int))] == raw.array[tuple(raw_idx[:3, n])]
    # display: the 2-D reader shows the middle axial slice of the same NIfTI identically
    if path.endswith("anatomical.nii"):
        from unimlip_kit.data.nifti import nifti_slice

        np.testing.assert_array_equal(can.array[can.array.shape[0] // 2], nifti_slice(path).astype(np.float32))


def test_axis_codes_and_reorient_match_nibabel() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        perm = rng.permutation(3)
        aff = np.eye(4)
        aff[:3, :3] = np.eye(3)[:, perm] * rng.choice([-1.0, 1.0], 3) * rng.uniform(0.5, 3, 3)
        aff[:3, :3] += rng.normal(0, 0.05, (3, 3))  # slightly oblique
        assert axis_codes(aff) == "".join(nib.aff2axcodes(aff))
        arr = rng.normal(size=(3, 4, 5))
        out, new = reorient(arr, aff, "SPL")
        assert axis_codes(new) == "SPL"
        world = aff @ np.array([1.0, 2.0, 3.0, 1.0])
        idx = np.rint(np.linalg.inv(new) @ world).astype(int)
        assert out[tuple(idx[:3])] == arr[1, 2, 3]
    with pytest.raises(ValueError, match="three axis codes"):
        reorient(np.zeros((1, 1, 1)), np.eye(4), "SSL")


def test_volume_without_orientation_and_frame_selection() -> None:
    dx = next(f for f in sorted((DICOMDIR_TESTS / "77654033" / "CR1").iterdir()))
    vol = load_volume(dx)
    assert vol.orientation == "" and vol.array.shape[0] == 1
    assert load_hu(dx).shape == vol.array.shape[1:]
    assert load_hu(CT_SERIES, frame=2).shape == (16, 16)
    with pytest.raises(ValueError, match="out of range"):
        load_hu(CT_SERIES, frame=9)
    assert isinstance(vol, Volume)


def _monai_load(path: str):
    monai_transforms = pytest.importorskip("monai.transforms")
    reader = "NibabelReader" if path.endswith((".nii", ".nii.gz")) else "PydicomReader"
    out = monai_transforms.LoadImage(image_only=True, reader=reader)(path)
    return np.asarray(out), np.asarray(out.affine, dtype=np.float64)


@pytest.mark.parametrize("path", [NIFTI[0], str(CT_SERIES)])
def test_against_monai_loadimage_voxel_by_voxel(path: str) -> None:
    """MONAI's arrays are ours with the spatial axes reversed; both affines place every voxel identically."""
    m_arr, m_aff = _monai_load(path)
    vol = load_volume(path, canonical=False)
    assert m_arr.shape == vol.array.shape[::-1]
    # our index -> world -> MONAI index must be a signed permutation with integer offsets
    t = np.linalg.inv(m_aff) @ vol.affine
    np.testing.assert_allclose(t, np.rint(t), atol=1e-4)
    t = np.rint(t).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in vol.array.shape], indexing="ij"), 0).reshape(3, -1)
    mi = t[:3, :3] @ grid + t[:3, 3:4]
    np.testing.assert_allclose(m_arr[tuple(mi)], vol.array[tuple(grid)], rtol=1e-6, atol=1e-4)
    if path.endswith(".nii"):
        np.testing.assert_array_equal(m_arr, vol.array.transpose(2, 1, 0))
        np.testing.assert_allclose(m_aff, vol.affine[:, [2, 1, 0, 3]], atol=1e-6)
