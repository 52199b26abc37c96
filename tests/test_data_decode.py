"""Image decoding against independent references: exact 16-bit PNG, pydicom HU, nibabel slices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from unimlip_kit.data import ImageDecodeError, dicom_linear_window, load_image, read_image_array, resize_image


@settings(max_examples=8, deadline=None)
@given(h=st.integers(1, 17), w=st.integers(1, 17), seed=st.integers(0, 2**16))
def test_png16_round_trip_exact(tmp_path_factory: pytest.TempPathFactory, h: int, w: int, seed: int) -> None:
    a = np.random.default_rng(seed).integers(0, 65536, size=(h, w), dtype=np.uint16)
    a.flat[0], a.flat[-1] = 0, 65535
    p = tmp_path_factory.mktemp("png16") / "x.png"
    Image.fromarray(a).save(p)
    got = load_image(p, size=None)
    assert got.shape == (1, h, w) and got.dtype == torch.float32
    # float32(k / 65535) for every k is distinct, so equality here means no value was lost
    np.testing.assert_array_equal(got[0].numpy(), (a.astype(np.float64) / 65535).astype(np.float32))
    assert np.unique(got.numpy()).size == np.unique(a).size


def test_png8_and_rgb_to_grey(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    ref = (rgb.astype(np.float64) / 255) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(read_image_array(tmp_path / "c.png"), ref, atol=1e-6)
    np.testing.assert_allclose(read_image_array(tmp_path / "c.png", channels=3), rgb / 255.0, atol=1e-7)
    grey = rgb[..., 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    x3 = load_image(tmp_path / "g.png", size=None, channels=3)
    assert x3.shape == (3, 9, 7) and torch.equal(x3[0], x3[2])
    np.testing.assert_array_equal(x3[1].numpy(), (grey / 255.0).astype(np.float32))


def test_decode_errors_carry_reasons(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageDecodeError) as err:
        load_image(tmp_path / "bad.png")
    assert err.value.reason == "corrupt_image"
    with pytest.raises(ImageDecodeError) as err:
        load_image(tmp_path / "nope.jpg")
    assert err.value.reason == "missing_image"
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(ImageDecodeError) as err:
        load_image(tmp_path / "bad.dcm")
    assert err.value.reason == "corrupt_image"


def test_resize_modes() -> None:
    x = torch.rand(1, 30, 60)
    pad = resize_image(x, 20, "pad")
    assert pad.shape == (1, 20, 20)
    assert float(pad[:, :5].abs().max()) == 0 and float(pad[:, -5:].abs().max()) == 0
    assert resize_image(x, (10, 10), "crop").shape == (1, 10, 10)
    assert resize_image(x, (7, 11), "stretch").shape == (1, 7, 11)
    assert resize_image(x, (30, 60)) is x
    # a constant image stays constant (no overshoot), values stay within the input range
    c = torch.full((1, 13, 29), 0.7)
    torch.testing.assert_close(resize_image(c, 16, "crop"), torch.full((1, 16, 16), 0.7))
    y = resize_image(x, 23, "stretch")
    assert float(y.min()) >= float(x.min()) and float(y.max()) <= float(x.max())
    with pytest.raises(ValueError, match="resize mode"):
        resize_image(x, 8, "zoom")  # type: ignore[arg-type]


def _window_ref(x: np.ndarray, c: float, w: float) -> np.ndarray:
    # DICOM PS3.3 C.11.2.1.2.1 with y in [0, 1], element by element in float64
    out = np.empty_like(x, dtype=np.float64)
    for i, v in enumerate(x.ravel()):
        if v <= c - 0.5 - (w - 1) / 2:
            out.flat[i] = 0.0
        elif v > c - 0.5 + (w - 1) / 2:
            out.flat[i] = 1.0
        else:
            out.flat[i] = (v - (c - 0.5)) / (w - 1) + 0.5
    return out


def test_window_matches_dicom_formula() -> None:
    x = np.linspace(-1200, 1500, 301)
    for c, w in [(40, 400), (-600, 1500), (40, 80), (0, 2)]:
        np.testing.assert_allclose(dicom_linear_window(x, c, w), _window_ref(x, c, w), atol=1e-6)


pydicom = pytest.importorskip("pydicom")


def test_dicom_hounsfield_against_pydicom() -> None:
    from unimlip_kit.data.dicom import read_dicom_hu

    path = pydicom.data.get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    ref = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    hu, _ = read_dicom_hu(path)
    np.testing.assert_array_equal(hu, ref)
    assert float(ds.RescaleIntercept) == -1024  # the file really exercises the intercept
    got = load_image(path, size=None, window="abdomen")
    np.testing.assert_allclose(got[0].numpy(), _window_ref(ref, 40, 400), atol=1e-6)
    assert got.shape == (1, 128, 128)


def test_dicom_uses_file_window_then_minmax() -> None:
    path = pydicom.data.get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    ref = ds.pixel_array.astype(np.float64)  # no rescale tags on this MR file
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    np.testing.assert_allclose(read_image_array(path), _window_ref(ref, c, w), atol=1e-6)
    ct = pydicom.data.get_testdata_file("CT_small.dcm")  # has no window tags -> min-max of HU
    hu = pydicom.dcmread(ct).pixel_array.astype(np.float64) - 1024
    np.testing.assert_allclose(read_image_array(ct), (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)


nibabel = pytest.importorskip("nibabel")
_NIB_DATA = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data"


@pytest.mark.parametrize("name,axis,index", [("anatomical.nii", 2, None), ("anatomical.nii", 1, 7), ("example4d.nii.gz", 2, 5)])
def test_nifti_slice_against_nibabel(name: str, axis: int, index: int | None) -> None:
    path = _NIB_DATA / name
    img = nibabel.as_closest_canonical(nibabel.load(path))
    vol = img.get_fdata()
    vol = vol[..., 0] if vol.ndim == 4 else vol
    k = vol.shape[axis] // 2 if index is None else index
    sl = np.take(vol, k, axis=axis)
    disp = sl.T[::-1, ::-1]  # radiological display: patient right on image left, anterior/superior up
    ref = (disp - disp.min()) / (disp.max() - disp.min())
    got = load_image(path, size=None, slice_index=index, slice_axis=axis)
    np.testing.assert_allclose(got[0].numpy(), ref, atol=1e-6)


def test_nifti_raw_orientation_and_scaling() -> None:
    from unimlip_kit.data.nifti import nifti_slice

    path = _NIB_DATA / "functional.nii"  # scl_slope/scl_inter != (1, 0)
    raw = nibabel.load(path)
    ref = raw.dataobj.get_unscaled()[:, :, 1, 3].astype(np.float64) * raw.dataobj.slope + raw.dataobj.inter
    np.testing.assert_allclose(nifti_slice(path, 1, volume=3, canonical=False), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        nifti_slice(path, 99)


def test_window_presets_agree_with_augment() -> None:
    augment = pytest.importorskip("unimlip_kit.augment")
    from unimlip_kit.data import WINDOW_PRESETS

    assert augment.CT_WINDOWS is WINDOW_PRESETS  # one table, not two kept in sync
