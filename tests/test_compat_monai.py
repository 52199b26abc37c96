"""The README's MONAI row as snippets: ``load_volume(path)`` in place of ``LoadImage(image_only=True)(path)``.

References: MONAI's own ``LoadImage`` (when installed) and the DICOM tags written into a synthetic series
(the truth is what we wrote). The voxel-by-voxel comparison through the affines lives in
tests/test_data_volume.py; here are the README's sentences, each as a user would run it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from nibabel.testing import data_path  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from unimlip_kit.data import load_hu, load_volume  # noqa: E402

CT_SMALL = get_testdata_file("CT_small.dcm")
NIFTI = os.path.join(data_path, "anatomical.nii")


def _series(folder: Path, z_positions, orientations=None) -> Path:
    """CT_small.dcm copied once per slice with the given z positions (and image orientations)."""
    base = pydicom.dcmread(CT_SMALL)
    folder.mkdir(parents=True)
    for n, z in enumerate(z_positions):
        ds = base.copy()
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.InstanceNumber = n + 1
        if orientations is not None:
            ds.ImageOrientationPatient = orientations[n]
        ds.save_as(folder / f"im{n}.dcm")
    return folder


def test_readme_row_attributes():
    """``.array`` (float32), ``.affine`` (RAS mm), ``.spacing``, ``.orientation``; ``load_hu`` unwindowed."""
    vol = load_volume(NIFTI)
    img = nib.load(NIFTI)
    assert vol.array.dtype == np.float32 and vol.array.shape == img.shape[::-1]
    assert vol.affine.shape == (4, 4) and vol.spacing == tuple(float(v) for v in img.header.get_zooms()[::-1])
    assert vol.orientation == "".join(nib.aff2axcodes(img.affine))[::-1]
    hu = load_hu(CT_SMALL)
    ds = pydicom.dcmread(CT_SMALL)
    want = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu, want.astype(np.float32))  # Hounsfield units, not squeezed into [0, 1]
    assert hu.min() < 0.0 or hu.max() > 1.0


def test_readme_monai_equality_for_a_nifti_file():
    """README: for a NIfTI file ``monai_array == vol.array.transpose(2, 1, 0)``."""
    monai_transforms = pytest.importorskip("monai.transforms")
    monai_array = np.asarray(monai_transforms.LoadImage(image_only=True, reader="NibabelReader")(NIFTI))
    vol = load_volume(NIFTI)
    np.testing.assert_array_equal(monai_array, vol.array.transpose(2, 1, 0))


def test_duplicated_not_parallel_or_uneven_slices_raise(tmp_path):
    """README: slices that are not parallel, not evenly spaced or duplicated raise instead of a stretched volume."""
    assert load_volume(_series(tmp_path / "even", [0.0, 2.0, 4.0])).spacing[0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="two slices share the position 2 mm"):
        load_volume(_series(tmp_path / "duplicated", [0.0, 2.0, 2.0, 4.0]))
    with pytest.raises(ValueError, match="slice spacing varies from 2 to 4 mm"):
        load_volume(_series(tmp_path / "uneven", [0.0, 2.0, 6.0]))
    tilted = [[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0.8, 0.6]]
    with pytest.raises(ValueError, match="not parallel"):
        load_volume(_series(tmp_path / "tilted", [0.0, 2.0, 4.0], tilted))
