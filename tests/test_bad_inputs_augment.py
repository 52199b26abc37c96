"""Augmentations on bad and edge-case input: NaN, integer dtypes, 1-pixel and empty images, unchecked arguments,
and the laterality-aware flip on captions that name heart structures (real ROCO captions from ../shared).

References: ``torch.flip`` for the flip, the input itself for identity crops, the caption's own words.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimlip_kit.augment import (
    CaptionAugment,
    ConservativeResizedCrop,
    LateralityAwareFlip,
    TwoViews,
    preset,
    swap_laterality,
)
from unimlip_kit.augment.laterality import find_asymmetric_structures, find_laterality_words

MODALITIES = ("xray", "ct", "mri", "ultrasound", "pathology", "generic")


def _images(modality: str, b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3 if modality == "pathology" else 1, h, w, generator=g)
    return x * 2000 - 1000 if modality == "ct" else x


# ------------------------------------------------------------------ NaN pixels


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_pixels_are_rejected_by_every_preset_naming_the_sample(modality: str, bad: float) -> None:
    x = _images(modality, 3, 16, 16)
    x[2, 0, 5, 5] = bad
    for out_of_range in ("raise", "clip"):
        aug = preset(modality, "strong", generator=0)
        aug.out_of_range = out_of_range
        with pytest.raises(ValueError, match=r"1 NaN or infinite values \(samples \[2\]"):
            aug(x)


# ------------------------------------------------------------------ integer images through the flip


@pytest.mark.parametrize("dtype, top", [(torch.uint8, 255), (torch.uint16, 65535)])
@pytest.mark.parametrize("mode", ["swap", "allow", "forbid"])
def test_flip_accepts_uint8_and_uint16_and_keeps_them_exact(dtype: torch.dtype, top: int, mode: str) -> None:
    x = torch.randint(0, top + 1, (6, 1, 5, 7), generator=torch.Generator().manual_seed(1), dtype=torch.int64).to(dtype)
    flip = LateralityAwareFlip(p=0.5, mode=mode, generator=1)
    y, caps = flip(x, ["left"] * 6)
    assert y.dtype == dtype and y.shape == x.shape
    done = flip.flipped()
    for i in range(6):  # reference: torch.flip on int64 copies
        ref = x[i].long().flip(-1) if done[i] else x[i].long()
        assert torch.equal(y[i].long(), ref)
        assert caps[i] == ("right" if done[i] and mode == "swap" else "left")
    assert mode != "forbid" or not bool(done.any())
    assert mode == "forbid" or bool(done.any())


def test_flip_replays_onto_a_mask_with_its_params() -> None:
    flip = LateralityAwareFlip(p=0.5, generator=4)
    x = torch.rand(8, 1, 4, 6)
    y, _ = flip(x, ["left lung"] * 8)
    mask = (x > 0.5).to(torch.uint8)
    m, _ = flip(mask, params=flip._params)
    assert torch.equal(m, (y > 0.5).to(torch.uint8))


def test_flip_rejects_bad_images_and_captions_clearly() -> None:
    flip = LateralityAwareFlip(p=1.0)
    with pytest.raises(ValueError, match="4-D"):
        flip(torch.zeros(1, 4, 4), ["left"])
    with pytest.raises(ValueError, match="floating point, uint8 or uint16"):
        flip(torch.zeros(1, 1, 4, 4, dtype=torch.int32), ["left"])
    with pytest.raises(TypeError, match="captions must be strings"):
        flip(torch.zeros(2, 1, 4, 4), ["left", None])


# ------------------------------------------------------------------ 1-pixel and empty images


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("hw", [(1, 16), (16, 1), (1, 1), (2, 2)])
def test_one_pixel_high_or_wide_images_go_through_every_preset(modality: str, hw: tuple[int, int]) -> None:
    x = _images(modality, 3, *hw)
    y = preset(modality, "strong", generator=0)(x)
    assert y.shape[0] == 3 and tuple(y.shape[2:]) == hw
    assert bool(torch.isfinite(y).all()) and 0.0 <= float(y.min()) and float(y.max()) <= 1.0


def test_crop_of_a_one_pixel_side_is_the_identity_along_it() -> None:
    x = torch.rand(2, 1, 1, 12)
    y = ConservativeResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))(x)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    col = torch.rand(2, 1, 9, 1)
    torch.testing.assert_close(ConservativeResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))(col), col, atol=1e-5, rtol=0)
    assert ConservativeResizedCrop(size=(1, 4), generator=0)(torch.rand(2, 1, 8, 8)).shape == (2, 1, 1, 4)


@pytest.mark.parametrize("modality", MODALITIES)
def test_empty_batch_passes_through_every_preset(modality: str) -> None:
    y = preset(modality, "strong", generator=0)(_images(modality, 0, 16, 16))
    assert y.shape[0] == 0 and y.shape[2:] == (16, 16)


def test_empty_spatial_dimension_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="empty spatial dimension"):
        preset("xray", "light")(torch.rand(2, 1, 0, 5))


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(0, 3), h=st.integers(1, 9), w=st.integers(1, 9),
    modality=st.sampled_from(MODALITIES), dtype=st.sampled_from([torch.float32, torch.float64, torch.uint8, torch.uint16]),
)
def test_every_preset_on_any_small_shape_and_dtype_is_finite_in_unit_range(b, h, w, modality, dtype) -> None:
    if modality == "ct" and dtype in (torch.uint8, torch.uint16):
        x = torch.randint(0, 256, (b, 1, h, w), dtype=torch.int64).to(dtype)  # mapped onto the CT range losslessly
    elif dtype in (torch.uint8, torch.uint16):
        x = torch.randint(0, 256, (b, 3 if modality == "pathology" else 1, h, w), dtype=torch.int64).to(dtype)
    else:
        x = _images(modality, b, h, w).to(dtype)
    y = preset(modality, "strong", generator=0)(x)
    assert y.shape[0] == b and tuple(y.shape[2:]) == (h, w) and y.is_floating_point()
    assert bool(torch.isfinite(y).all())
    if y.numel():
        assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0


@settings(max_examples=20, deadline=None)
@given(b=st.integers(0, 4), h=st.integers(1, 6), w=st.integers(1, 6), p=st.sampled_from([0.0, 0.5, 1.0]))
def test_flip_on_any_small_batch_equals_torch_flip_of_the_flipped_rows(b, h, w, p) -> None:
    x = torch.rand(b, 1, h, w)
    flip = LateralityAwareFlip(p=p, generator=1)
    y, caps = flip(x, ["left"] * b)
    done = flip.flipped()
    assert done.shape == (b,)
    ref = torch.where(done.view(-1, 1, 1, 1), x.flip(-1), x)
    assert torch.equal(y, ref) and caps == ["right" if d else "left" for d in done.tolist()]


# ------------------------------------------------------------------ case-fold look-alikes


@pytest.mark.parametrize("word", ["rıght", "RİGHT", "Rıght", "rİght"])
def test_swap_laterality_leaves_case_fold_look_alikes_unchanged(word: str) -> None:
    text = f"{word} lung, right kidney"
    out = swap_laterality(text)
    assert out.startswith(word) and out.endswith("left kidney")
    assert swap_laterality(out) == text
    assert find_laterality_words(text) == ["right"]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("leftrighıİſLEFTRIGHT -,.ward")), max_size=30))
def test_swap_laterality_never_raises_and_is_an_involution(text: str) -> None:
    assert swap_laterality(swap_laterality(text)) == text


# ------------------------------------------------------------------ small unchecked arguments


def test_two_views_checks_its_params_pair() -> None:
    two = TwoViews(preset("xray", "light", generator=0))
    x = torch.rand(2, 1, 8, 8)
    two(x)
    with pytest.raises(ValueError, match=r"params must be a pair \(view1 params, view2 params\).*length 1"):
        two(x, params=(two._params[0],))
    with pytest.raises(TypeError, match="callable augmentation"):
        TwoViews("xray")


def test_caption_augment_checks_mask_token_and_synonyms() -> None:
    with pytest.raises(ValueError, match="mask_token must be one non-empty word"):
        CaptionAugment(mask_token=None)
    with pytest.raises(ValueError, match="mask_token must be one non-empty word"):
        CaptionAugment(mask_token="")
    with pytest.raises(ValueError, match=r"synonyms\['x'\] must be a list of non-empty strings.*write \['str'\]"):
        CaptionAugment(synonyms={"x": "str"})
    aug = CaptionAugment(ops=("insert",), alpha=1.0, p=1.0, synonyms={"lesion": ["mass"]}, generator=0)
    out = aug(["lesion lesion lesion"])[0].split()
    assert set(out) <= {"lesion", "mass"}


# ------------------------------------------------------------------ heart structures and the flip (real captions)


def test_heart_structures_are_found_and_paired_organs_are_not() -> None:
    assert find_asymmetric_structures("left ventricle, left atrium, right coronary artery, LAD: left anterior descending") == [
        "left ventricle", "left atrium", "right coronary", "left anterior descending"]
    for text in ("left lung", "right kidney", "left lateral ventricle", "leftward shift", "dextrocardia",
                 "left main bronchus", "right pulmonary artery", "left-sided effusion"):
        assert find_asymmetric_structures(text) == [], text


def test_flip_never_flips_a_sample_whose_caption_names_a_heart_structure() -> None:
    caps = ["Dilated left ventricle.", "Left lower lobe consolidation.", "Right coronary artery stenosis.", "levoscoliosis"]
    flip = LateralityAwareFlip(p=1.0, generator=0)
    x = torch.rand(4, 1, 3, 5)
    y, out = flip(x, caps)
    assert flip.flipped().tolist() == [False, True, False, True]
    assert flip.kept_unflipped().tolist() == [True, False, True, False]
    assert torch.equal(y[0], x[0]) and torch.equal(y[1], x[1].flip(-1))
    assert out == ["Dilated left ventricle.", "Right lower lobe consolidation.", "Right coronary artery stenosis.", "dextroscoliosis"]


def test_liver_on_its_own_is_one_unpaired_organ_like_a_liver_lobe() -> None:
    for text in ("draining the right liver", "Right liver lobe", "left-sided liver", "right lobe of the liver"):
        assert find_asymmetric_structures(text), text
    flip = LateralityAwareFlip(p=1.0, generator=0)
    x = torch.rand(2, 1, 3, 5)
    y, out = flip(x, ["Catheter draining the right liver.", "Right kidney cyst."])
    assert flip.flipped().tolist() == [False, True]
    assert out == ["Catheter draining the right liver.", "Left kidney cyst."] and torch.equal(y[0], x[0])
    assert find_asymmetric_structures("delivered to the left; liverwort") == []


def test_flip_on_real_captions_keeps_heart_structures_and_swaps_the_rest(roco_captions: list[str]) -> None:
    caps = [c for c in roco_captions if find_laterality_words(c)]
    flip = LateralityAwareFlip(p=1.0, generator=0)
    x = torch.zeros(len(caps), 1, 1, 2)
    x[..., 0] = 1.0
    y, out = flip(x, caps)
    flipped = flip.flipped()
    held = [c for c in caps if find_asymmetric_structures(c)]
    assert len(held) >= 100  # the real split names heart chambers and coronaries often
    assert int(flipped.sum()) == len(caps) - len(held)
    heart = re.compile(r"\b(left|right)[\s-]+(ventric\w*|atri\w*|coronary|heart)\b", re.I)
    for c, o, f, img in zip(caps, out, flipped.tolist(), y):
        if f:  # flipped: swapped as a whole, and no heart phrase was ever in it
            assert o == swap_laterality(c) and img[0, 0, 1] == 1.0 and not heart.search(c)
        else:  # held back: image and caption untouched
            assert o == c and img[0, 0, 0] == 1.0 and find_asymmetric_structures(c)
        # no heart structure changes its side
        assert [m.group(0).lower() for m in heart.finditer(o)] == [m.group(0).lower() for m in heart.finditer(c)]
    # paired organs and leftward/levo- words keep swapping on the real captions
    swapped = [o for o, f in zip(out, flipped.tolist()) if f]
    for word in ("lung", "kidney", "breast"):
        assert any(re.search(rf"\bright {word}\b", c, re.I) for c, f in zip(caps, flipped.tolist()) if f)
        assert sum(bool(re.search(rf"\bleft {word}\b", o, re.I)) for o in swapped) >= 1
