"""Bad image files and bad decode options: skipped and counted, or one clear error, never a crash or a black image.

References are independent of the decoder: numpy arrays written to the file, nibabel's own data with
``np.nanmin``/``np.nanmax``, pydicom's test files.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from unimlip_kit.data import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageTextDataset,
    ImageTextRecord,
    SkipCounter,
    build_dataloader,
    dicom_linear_window,
    load_image,
    read_image_array,
    verify_records,
)
from unimlip_kit.data.window import minmax_unit


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def forged_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` pixels but holds almost no data (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# ------------------------------------------------------------------ oversized images


def test_image_above_pillows_pixel_limit_decodes_under_an_explicit_limit(tmp_path: Path, monkeypatch) -> None:
    # Pillow's global limit set below the image (as a 1-gigapixel slide is above the real one)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    a = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "big.png")  # 1200 px > 2 x 100: Pillow alone raises DecompressionBombError
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.png")
    got = read_image_array(tmp_path / "big.png", max_pixels=None)
    np.testing.assert_array_equal(got, (a / 255.0).astype(np.float32))
    np.testing.assert_array_equal(read_image_array(tmp_path / "big.png", max_pixels=1200), got)
    assert Image.MAX_IMAGE_PIXELS == 100  # Pillow's setting is restored


def test_image_above_max_pixels_is_skipped_and_counted_as_too_large(tmp_path: Path) -> None:
    Image.new("L", (30, 40), 7).save(tmp_path / "a.png")
    with pytest.raises(ImageDecodeError, match="1200 pixels is above max_pixels=1000") as err:
        load_image(tmp_path / "a.png", max_pixels=1000)
    assert err.value.reason == "image_too_large"


def test_forged_png_header_is_skipped_by_the_dataloader_not_raised(tmp_path: Path) -> None:
    forged_png(tmp_path / "bomb.png", 100_000, 100_000)  # 1e10 pixels > DEFAULT_MAX_PIXELS
    Image.new("L", (8, 8), 200).save(tmp_path / "ok.png")
    recs = [ImageTextRecord("bomb", tmp_path / "bomb.png", "CT."), ImageTextRecord("ok", tmp_path / "ok.png", "MRI.")]
    ds = ImageTextDataset(recs, image_size=8)
    run = SkipCounter()
    ids = []
    for batch in build_dataloader(ds, batch_size=2, seed=0, shuffle=False):
        run.update_from_batch(batch)
        ids += batch["ids"]
    assert ids == ["ok"]
    assert run.counts() == {"image_too_large": 1}
    assert "max_pixels" in run.items()["image_too_large"]["bomb"]
    c = SkipCounter()
    assert [r.id for r in verify_records(recs, c)] == ["ok"] and c.counts() == {"image_too_large": 1}


def test_default_pixel_limit_is_pillows_hard_limit() -> None:
    assert DEFAULT_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS


# ------------------------------------------------------------------ NaN in the data


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_nan_voxels_outside_the_mask_do_not_blacken_a_nifti_slice(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vol = rng.uniform(100.0, 900.0, (12, 10, 5)).astype(np.float32)
    vol[:3] = np.nan  # outside the "brain mask"
    f = _nifti(tmp_path / "brain.nii.gz", vol)
    from unimlip_kit.data.nifti import nifti_slice

    sl = nifti_slice(f)
    lo, hi = np.nanmin(sl), np.nanmax(sl)
    ref = np.where(np.isnan(sl), 0.0, (sl - lo) / (hi - lo)).astype(np.float32)
    got = read_image_array(f)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert got.max() == 1.0 and np.isnan(sl).any()


def test_nan_voxels_with_a_ct_window_are_filled_not_skipped(tmp_path: Path) -> None:
    vol = np.linspace(-1000, 1000, 6 * 4 * 3, dtype=np.float32).reshape(6, 4, 3)
    vol[0, 0, :] = np.nan
    f = _nifti(tmp_path / "ct.nii", vol)
    from unimlip_kit.data.nifti import nifti_slice

    sl = nifti_slice(f)
    ref = np.where(np.isnan(sl), 0.0, dicom_linear_window(np.nan_to_num(sl), 40, 400))
    np.testing.assert_allclose(read_image_array(f, window="abdomen"), ref, atol=1e-6)


def test_all_nan_volume_is_skipped_as_corrupt(tmp_path: Path) -> None:
    f = _nifti(tmp_path / "empty.nii", np.full((4, 4, 3), np.nan, dtype=np.float32))
    with pytest.raises(ImageDecodeError, match="no finite value") as err:
        read_image_array(f)
    assert err.value.reason == "corrupt_image"


def test_nan_pixels_in_a_float_tiff_keep_the_finite_range(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4) * 10.0
    a[1, 2] = np.nan
    Image.fromarray(a, mode="F").save(tmp_path / "f.tif")
    ref = np.where(np.isnan(a), 0.0, a / 110.0).astype(np.float32)
    np.testing.assert_allclose(read_image_array(tmp_path / "f.tif"), ref, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.one_of(st.floats(-1e6, 1e6), st.sampled_from([np.nan, np.inf, -np.inf])), min_size=1, max_size=30)
)
def test_minmax_and_window_never_return_nan_and_use_only_finite_values(values: list[float]) -> None:
    x = np.array(values, dtype=np.float64)
    finite = np.isfinite(x)
    w = dicom_linear_window(x, 0.0, 400.0)
    assert np.isfinite(w).all() and ((w >= 0) & (w <= 1)).all() and (w[~finite] == 0).all()
    if not finite.any():
        with pytest.raises(ValueError, match="no finite value"):
            minmax_unit(x)
        return
    y = minmax_unit(x)
    assert np.isfinite(y).all() and (y[~finite] == 0).all()
    lo, hi = x[finite].min(), x[finite].max()
    ref = (x[finite] - lo) / (hi - lo) if hi > lo else np.zeros(finite.sum())
    np.testing.assert_allclose(y[finite], ref, atol=1e-6)


# ------------------------------------------------------------------ bad options raise once


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window": "lugn"}, "unknown window preset 'lugn'"),
        ({"window": (40,)}, "window must be a preset name"),
        ({"slice_axis": 7}, "slice_axis must be 0, 1 or 2"),
        ({"slice_index": -1}, "slice_index must be None or an integer >= 0"),
        ({"max_pixels": 0}, "max_pixels must be None"),
        ({"resize": "fit"}, "resize must be one of pad, crop, stretch"),
        ({"image_size": 0}, "image_size must be None"),
        ({"channels": 2}, "channels must be 1 or 3"),
    ],
)
def test_bad_decode_option_raises_once_at_dataset_construction(tmp_path: Path, kwargs: dict, match: str) -> None:
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.float32), np.eye(4)), str(tmp_path / "a.nii"))
    recs = [ImageTextRecord("a", tmp_path / "a.nii", "MRI.")]
    with pytest.raises(ValueError, match=match):
        ImageTextDataset(recs, **kwargs)


def test_bad_decode_option_raises_from_load_image_not_a_skip(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.float32), np.eye(4)), str(tmp_path / "a.nii"))
    for kwargs in ({"window": "nope"}, {"slice_axis": 7}):
        with pytest.raises(ValueError) as err:
            load_image(tmp_path / "a.nii", **kwargs)
        assert not isinstance(err.value, ImageDecodeError)


def test_truncated_dicom_is_corrupt_not_unsupported(tmp_path: Path) -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    raw = Path(pydicom_data.get_testdata_file("CT_small.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageDecodeError) as err:
        load_image(tmp_path / "cut.dcm")
    assert err.value.reason == "corrupt_image"


def test_compressed_dicom_without_its_codec_is_unsupported(tmp_path: Path) -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    import pydicom

    f = pydicom_data.get_testdata_file("JPEG2000.dcm")
    try:
        pydicom.dcmread(f).pixel_array
        pytest.skip("a JPEG 2000 decoder is installed here")
    except (RuntimeError, NotImplementedError):
        pass
    with pytest.raises(ImageDecodeError) as err:
        load_image(f)
    assert err.value.reason == "unsupported_format"


def test_decoded_tensor_is_finite_in_unit_range_for_integer_png(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", size=None)
    assert torch.equal(x, torch.tensor([[[0.0, 1.0]]]))
