"""Laterality-aware flip and negation-safe caption augmentation, on real ROCO captions where present."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimlip_kit.augment import (
    CaptionAugment,
    LateralityAwareFlip,
    find_laterality_words,
    find_negation_cues,
    swap_laterality,
)
from unimlip_kit.augment.laterality import LATERALITY_PAIRS
from unimlip_kit.augment.text import _analyse


def reference_swap(text: str) -> str:
    """Independent reference: walk \\w+ runs (the same word boundaries) and map by case class."""
    out, last = [], 0
    for m in re.finditer(r"\w+", text):
        word = m.group(0)
        low = word.lower()
        new = word
        if low in LATERALITY_PAIRS:
            t = LATERALITY_PAIRS[low]
            if word == low:
                new = t
            elif word == word.upper():
                new = t.upper()
            elif word == low.capitalize():
                new = t.capitalize()
        out.append(text[last : m.start()] + new)
        last = m.end()
    return "".join(out) + text[last:]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("left lung", "right lung"),
        ("Left and RIGHT", "Right and LEFT"),
        ("left-sided pleural effusion", "right-sided pleural effusion"),
        ("bright, upright, copyright, leftover, righteous", "bright, upright, copyright, leftover, righteous"),
        ("(left) right. left's", "(right) left. right's"),
        ("levoscoliosis with dextrocardia", "dextroscoliosis with levocardia"),
        ("lEfT stays", "lEfT stays"),
        ("", ""),
    ],
)
def test_swap_examples(text, expected):
    assert swap_laterality(text) == expected
    assert swap_laterality(expected) == text


def test_swap_round_trips_on_all_real_captions(roco_captions):
    changed = 0
    for cap in roco_captions:
        swapped = swap_laterality(cap)
        assert swap_laterality(swapped) == cap
        assert swapped == reference_swap(cap)
        assert find_laterality_words(swapped) == [LATERALITY_PAIRS[w] for w in find_laterality_words(cap)]
        if not find_laterality_words(cap):
            assert swapped == cap
        changed += swapped != cap
    assert changed > 50  # the file really exercises the swap


def test_flip_images_and_captions_per_sample():
    x = torch.rand(16, 1, 4, 5)
    caps = [f"Left lower lobe nodule {i}, bright" for i in range(16)]
    flip = LateralityAwareFlip(p=0.5, generator=0)
    y, out = flip(x, caps)
    flipped = flip.flipped()
    assert 0 < int(flipped.sum()) < 16
    for i in range(16):
        if flipped[i]:
            assert torch.equal(y[i], x[i].flip(-1))
            assert out[i] == swap_laterality(caps[i]) != caps[i]
        else:
            assert torch.equal(y[i], x[i]) and out[i] == caps[i]
    # the same decision replays onto masks
    mask = (x > 0.5).float()
    assert torch.equal(flip(mask, params=flip._params)[0], (y > 0.5).float())


def test_flip_modes_and_errors():
    x = torch.rand(8, 1, 4, 4)
    caps = ["left"] * 8
    y, out = LateralityAwareFlip(p=1.0, mode="forbid")(x, caps)
    assert torch.equal(y, x) and out == caps
    y, out = LateralityAwareFlip(p=1.0, mode="allow")(x, caps)
    assert torch.equal(y, x.flip(-1)) and out == caps
    y, out = LateralityAwareFlip(p=0.0)(x, caps)
    assert torch.equal(y, x) and out == caps
    with pytest.raises(ValueError, match="mode"):
        LateralityAwareFlip(mode="mirror")
    with pytest.raises(ValueError, match="batch size"):
        LateralityAwareFlip()(x, ["left"])
    with pytest.raises(TypeError):
        LateralityAwareFlip()(x, "left")


def test_flip_seeded_is_reproducible():
    x = torch.rand(32, 1, 4, 4)
    a = LateralityAwareFlip(generator=3)(x, ["left"] * 32)
    b = LateralityAwareFlip(generator=3)(x, ["left"] * 32)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


def _negated_tokens(text: str) -> list[tuple[int, str]]:
    toks, _ = _analyse(text)
    negated = {t.clause for t in toks if t.negation}
    return [(i, t.core) for i, t in enumerate(toks) if t.clause in negated]


@pytest.mark.parametrize("ops", [("delete",), ("swap",), ("insert",), ("mask",), CaptionAugment.OPS])
def test_text_aug_keeps_negation_and_laterality_on_real_captions(roco_captions, ops):
    caps = roco_captions[:: 3 if len(ops) == 1 else 1]
    aug = CaptionAugment(ops=ops, alpha=0.3, p=1.0, generator=0)
    out = aug(caps)
    assert len(out) == len(caps)
    changed = 0
    for before, after in zip(caps, out):
        assert find_negation_cues(after) == find_negation_cues(before)
        assert find_laterality_words(after) == find_laterality_words(before)
        if ops == ("swap",):  # nothing moves inside a clause with a negation cue
            words = after.split()
            assert len(words) == len(before.split())
            toks_after, _ = _analyse(after)
            for i, core in _negated_tokens(before):
                assert toks_after[i].core == core
        changed += after != before
    assert changed > len(caps) // 2


def test_text_aug_negated_clause_is_frozen_for_swap_and_insert():
    aug = CaptionAugment(ops=("swap", "insert"), alpha=1.0, p=1.0, generator=0)
    text = "No pleural effusion or pneumothorax; heart size normal."
    for _ in range(20):
        out = aug([text])[0]
        assert out.startswith("No pleural effusion or pneumothorax;")


def test_text_aug_seeded_and_p_zero():
    caps = ["Small nodule in the right upper lobe, no effusion.", "Axial CT of the abdomen shows a large mass."]
    a = CaptionAugment(p=1.0, alpha=0.3, generator=5)
    b = CaptionAugment(p=1.0, alpha=0.3, generator=5)
    assert a(caps) == b(caps)
    assert CaptionAugment(p=0.0)(caps) == caps
    torch.manual_seed(0)
    c = CaptionAugment(p=1.0, alpha=0.3)(caps)
    torch.manual_seed(0)
    assert CaptionAugment(p=1.0, alpha=0.3)(caps) == c


def test_text_aug_mask_uses_token_and_bad_args():
    out = CaptionAugment(ops=("mask",), alpha=0.5, p=1.0, generator=0)(["Large mass in the liver with central necrosis"])[0]
    assert "[MASK]" in out
    with pytest.raises(ValueError):
        CaptionAugment(ops=("shuffle",))
    with pytest.raises(TypeError):
        CaptionAugment()("a caption")


FRAGMENTS = [
    "left", "Left", "LEFT", "right", "Right", "RIGHT", "lEfT", "bright", "upright", "copyright", "leftover",
    "-", "-sided", " ", ", ", ". ", "(", ")", "'s", "no", "not", "without", "negative for", "free", "of", "effusion",
    "nodule", "but", "levoscoliosis", "dextrocardia", "rightward", "lung", "3", "_", "é",
]
texts = st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join)


@settings(max_examples=60, deadline=None)
@given(texts)
def test_swap_is_an_involution_matching_the_reference(text):
    swapped = swap_laterality(text)
    assert swap_laterality(swapped) == text
    assert swapped == reference_swap(text)


@settings(max_examples=40, deadline=None)
@given(texts, st.integers(0, 2**31 - 1), st.sampled_from(CaptionAugment.OPS))
def test_text_aug_never_changes_cues_on_generated_text(text, seed, op):
    out = CaptionAugment(ops=(op,), alpha=0.5, p=1.0, generator=seed)([text])[0]
    assert find_negation_cues(out) == find_negation_cues(text)
    assert find_laterality_words(out) == find_laterality_words(text)
