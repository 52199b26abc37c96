"""One home for CT windows: the plain linear window and DICOM's LINEAR VOI LUT, each checked against its formula.

References: the formulas written out per element in float64 (plain: c - w/2 -> 0, c + w/2 -> 1;
DICOM PS3.3 C.11.2.1.2.1 with its c - 0.5 and w - 1 offsets).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unimlip_kit.augment.window as augment_window
import unimlip_kit.data as data
from unimlip_kit.augment import CT_WINDOWS, RandomWindow
from unimlip_kit.utils.windows import apply_window, dicom_linear_window


def _plain_ref(x: float, c: float, w: float) -> float:
    return min(1.0, max(0.0, (x - (c - w / 2)) / w))


def _dicom_ref(x: float, c: float, w: float) -> float:
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 1.0
    return (x - (c - 0.5)) / (w - 1) + 0.5


@pytest.mark.parametrize("c,w", [(40, 400), (-600, 1500), (40, 80), (0, 2), (75, 215)])
def test_both_formulas_against_their_definition(c, w):
    xs = np.concatenate([np.linspace(-1500, 1500, 257), [c - w / 2, c + w / 2, c - 0.5 + (w - 1) / 2, c]])
    plain = apply_window(torch.tensor(xs, dtype=torch.float64), float(c), float(w)).numpy()
    dicom = dicom_linear_window(xs, c, w)
    np.testing.assert_allclose(plain, [_plain_ref(v, c, w) for v in xs], atol=1e-12)
    np.testing.assert_allclose(dicom, [_dicom_ref(v, c, w) for v in xs], atol=1e-6)
    # the documented bound: the largest gap is 1/w, at the DICOM top c - 0.5 + (w - 1)/2 (DICOM 1, plain 1 - 1/w)
    gap = np.abs(plain - dicom)
    assert gap.max() <= 1 / w + 1e-6
    assert gap[np.argmin(np.abs(xs - (c - 0.5 + (w - 1) / 2)))] == pytest.approx(1 / w, abs=1e-6)


def test_the_issue_example_239_hu():
    """At (40, 400), 239 HU is the DICOM window's top (1.0) but 399/400 of the plain window."""
    assert float(dicom_linear_window(np.array([239.0]), 40, 400)[0]) == 1.0
    assert float(apply_window(torch.tensor([239.0], dtype=torch.float64), 40.0, 400.0)) == pytest.approx(0.9975, abs=1e-12)


def test_one_name_per_formula():
    assert augment_window.apply_window is apply_window  # RandomWindow uses the plain window from utils
    assert data.dicom_linear_window is dicom_linear_window  # decoding uses DICOM's
    assert "apply_window" not in data.__all__ and not hasattr(data, "apply_window")
    assert data.WINDOW_PRESETS is CT_WINDOWS


def test_random_window_without_jitter_is_the_plain_window():
    hu = torch.linspace(-1024, 3071, 64, dtype=torch.float32).reshape(1, 1, 8, 8).repeat(3, 1, 1, 1)
    aug = RandomWindow(windows=[CT_WINDOWS["abdomen"]], centre_jitter=0.0, width_jitter=0.0, p=1.0, generator=0)
    expected = torch.tensor([[_plain_ref(float(v), 40, 400) for v in hu[0].flatten()]]).reshape(1, 1, 8, 8)
    torch.testing.assert_close(aug(hu), expected.expand(3, -1, -1, -1), rtol=0, atol=1e-6)


def test_dicom_window_rejects_bad_width_and_maps_nan_to_zero():
    with pytest.raises(ValueError, match="width >= 1"):
        dicom_linear_window(np.zeros(3), 40, 0.5)
    out = dicom_linear_window(np.array([np.nan, np.inf, 40.0]), 40, 400)
    assert out[0] == 0.0 and out[1] == 0.0 and out.dtype == np.float32
