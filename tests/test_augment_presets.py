"""Modality presets, the two-view wrapper and the preview command."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimlip_kit.augment import PRESET_MODALITIES, PRESET_RANGES, STRENGTHS, TwoViews, preset
from unimlip_kit.augment.preview import load_image, main
from unimlip_kit.augment.samples import sample_image

GREY = [m for m in PRESET_MODALITIES if m != "pathology"]


def _batch(modality: str, b: int = 3, size: int = 32) -> torch.Tensor:
    return sample_image(modality, size, seed=1)[None].repeat(b, 1, 1, 1)


@pytest.mark.parametrize("modality", PRESET_MODALITIES)
def test_every_strength_keeps_shape_dtype_and_output_range(modality):
    x = _batch(modality)
    lo, hi = PRESET_RANGES[modality][1]
    for strength in STRENGTHS:
        aug = preset(modality, strength, generator=0)
        y = aug(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert float(y.min()) >= lo - 1e-6 and float(y.max()) <= hi + 1e-6
        assert torch.equal(aug(x, params=aug._params), y)
        assert torch.equal(preset(modality, strength, generator=0)(x), y)


def test_crop_size_option():
    assert preset("xray", size=(24, 20), generator=0)(_batch("xray")).shape == (3, 1, 24, 20)


@pytest.mark.parametrize("modality", GREY)
def test_grey_presets_have_no_colour_ops_and_keep_grey_grey(modality):
    aug = preset(modality, "strong", generator=0)
    assert not aug.colour
    rgb_grey = _batch(modality).repeat(1, 3, 1, 1)  # an RGB copy of a grey image
    y = aug(rgb_grey)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])


def test_pathology_needs_rgb_and_bad_names_raise():
    assert preset("pathology").colour
    with pytest.raises(ValueError, match="3 \\(RGB\\)"):
        preset("pathology")(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="strength"):
        preset("xray", "extreme")
    with pytest.raises(ValueError, match="value_range"):
        preset("xray", value_range=(0, 255))


def test_ct_clips_scanner_padding_and_accepts_uint16():
    hu = _batch("ct")
    hu[:, :, :2] = -3024.0  # outside the field of view
    y = preset("ct", generator=0)(hu)
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    x16 = torch.randint(0, 65536, (2, 1, 16, 16)).to(torch.uint16)
    assert preset("xray", generator=0)(x16).dtype == torch.float32


def test_two_views_are_independent_and_replay():
    two = TwoViews(preset("xray", "medium", generator=0))
    x = _batch("xray", b=4)
    a, b = two(x)
    assert a.shape == b.shape == x.shape and not torch.equal(a, b)
    a2, b2 = two(x, params=two._params)
    assert torch.equal(a, a2) and torch.equal(b, b2)


def test_preview_writes_the_out_path_with_the_original_first(tmp_path, capsys):
    paths = main(["--modality", "ct", "--out", str(tmp_path / "p.png"), "--n", "3", "--size", "32", "--cols", "4",
                  "--strengths", "light", "strong"])
    assert paths == [tmp_path / "p.png"] and sorted(f.name for f in tmp_path.iterdir()) == ["p.png"]
    from PIL import Image

    with Image.open(paths[0]) as im:
        assert im.mode == "RGB" and im.size[0] == 4 * (32 + 4) + 4
        sheet = np.asarray(im)
    # block 1 = title band, label band, then the original tile in the soft-tissue window (40, 400) as drawn
    img = sample_image("ct", 32, 0)
    expected = (((img - (40 - 200)) / 400).clamp(0, 1) * 255).round().to(torch.uint8)[0].numpy()
    tile = sheet[14 + 4 + 12: 14 + 4 + 12 + 32, 4:36, 0]
    np.testing.assert_array_equal(tile, expected)
    band = sheet[14 + 4: 14 + 4 + 12, 4:36]
    assert (band[..., 0].astype(int) - band[..., 1] > 100).any()  # the red "original" label


def test_preview_reads_png16_and_dicom(tmp_path):
    from PIL import Image

    arr = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x16.png")
    img = load_image(tmp_path / "x16.png", "xray")
    np.testing.assert_allclose(img[0].numpy(), arr / 65535.0, atol=1e-7)
    main(["--image", str(tmp_path / "x16.png"), "--out", str(tmp_path / "o.png"), "--n", "2", "--size", "32", "--strengths", "medium"])
    assert (tmp_path / "o.png").exists() and not (tmp_path / "o_medium.png").exists()

    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 16, 16, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 16, 16, 15
    ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 0, 1, -1024
    raw = (np.arange(256).reshape(16, 16) * 10).astype(np.uint16)
    ds.PixelData = raw.tobytes()
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    hu = load_image(tmp_path / "ct.dcm", "ct")
    np.testing.assert_allclose(hu[0].numpy(), raw - 1024.0)
