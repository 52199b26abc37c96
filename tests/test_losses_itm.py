"""ITM: the pair builder against an ALBEF-style loop, the loss against a float64 softmax CE."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimlip_kit.losses import (
    ImageTextMatchingLoss,
    build_itm_pairs,
    image_text_matching_loss,
    sample_hard_negatives,
    sample_itm_pairs,
)


def _reference_pairs(n, t4i, i4t):
    """ALBEF's construction written as a loop: positives, (image, neg text), (neg image, text); -1 dropped."""
    pairs = [(i, i, 1) for i in range(n)]
    pairs += [(i, int(t4i[i]), 0) for i in range(n) if int(t4i[i]) >= 0]
    pairs += [(int(i4t[j]), j, 0) for j in range(n) if int(i4t[j]) >= 0]
    return pairs


def _reference_ce(logits, labels) -> float:
    rows = logits.tolist()
    total = 0.0
    for row, y in zip(rows, labels.tolist()):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        total += lse - row[y]
    return total / len(rows)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_pairs_match_reference(n, seed):
    g = torch.Generator().manual_seed(seed)
    t4i = torch.randint(-1, n, (n,), generator=g)
    i4t = torch.randint(-1, n, (n,), generator=g)
    image = torch.randn(n, 3, 4, generator=g)
    ids = torch.randint(0, 50, (n, 6), generator=g)
    mask = torch.randint(0, 2, (n, 6), generator=g)
    out = build_itm_pairs(image, ids, mask, t4i, i4t)
    ref = _reference_pairs(n, t4i, i4t)
    assert list(zip(out.image_index.tolist(), out.text_index.tolist(), out.labels.tolist())) == ref
    for k, (i, j, _) in enumerate(ref):
        assert torch.equal(out.image[k], image[i])
        assert torch.equal(out.text_ids[k], ids[j]) and torch.equal(out.text_mask[k], mask[j])


def test_pairs_gradient_reaches_images():
    image = torch.randn(4, 2, 3, requires_grad=True)
    out = build_itm_pairs(image, torch.zeros(4, 5, dtype=torch.long), None,
                          torch.tensor([1, 0, 3, -1]), torch.tensor([-1, 2, 0, 1]))
    assert out.text_mask is None and out.labels.tolist() == [1] * 4 + [0] * 6
    out.image.sum().backward()
    counts = torch.bincount(out.image_index, minlength=4).float()
    assert torch.equal(image.grad[:, 0, 0], counts)


def test_sampled_pairs_are_negatives():
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=-1)
    group = torch.arange(16) // 2  # two rows per study: never each other's negative
    text = torch.zeros(16, 3, dtype=torch.long)
    pairs = sample_itm_pairs(emb, emb, 20.0, emb, text, ids=group, generator=g)
    neg = pairs.labels == 0
    assert int(neg.sum()) == 32
    assert bool((group[pairs.image_index[neg]] != group[pairs.text_index[neg]]).all())
    # the helper is exactly sample_hard_negatives + build_itm_pairs under the same generator state
    t4i, i4t = sample_hard_negatives(emb, emb, 20.0, ids=group, generator=torch.Generator().manual_seed(5))
    again = sample_itm_pairs(emb, emb, 20.0, emb, text, ids=group, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.text_index, build_itm_pairs(emb, text, None, t4i, i4t).text_index)


def test_all_same_id_leaves_only_positives():
    emb = torch.randn(3, 4)
    pairs = sample_itm_pairs(emb, emb, 1.0, emb, torch.ones(3, 2, dtype=torch.long), ids=torch.zeros(3, dtype=torch.long))
    assert pairs.labels.tolist() == [1, 1, 1]


@pytest.mark.parametrize("m", [1, 3, 12])
def test_loss_matches_reference(m):
    g = torch.Generator().manual_seed(m)
    logits = 3 * torch.randn(m, 2, generator=g)
    labels = torch.randint(0, 2, (m,), generator=g)
    got = image_text_matching_loss(logits.double(), labels)
    assert abs(float(got) - _reference_ce(logits.double(), labels)) < 1e-12
    assert torch.allclose(ImageTextMatchingLoss()(logits, labels), got.float(), atol=1e-6)
    # a single match logit s is the 2-way case with logits (0, s)
    s = logits[:, 1] - logits[:, 0]
    assert torch.allclose(image_text_matching_loss(s.double(), labels), got, atol=1e-12)
    assert torch.allclose(image_text_matching_loss(s[:, None].double(), labels), got, atol=1e-12)


def test_loss_half_precision_is_upcast():
    logits = torch.randn(6, 2).to(torch.bfloat16)
    labels = torch.tensor([1, 1, 0, 0, 0, 0])
    out = image_text_matching_loss(logits, labels)
    assert out.dtype == torch.float32
    assert abs(out.item() - _reference_ce(logits.double(), labels)) < 1e-5


def test_loss_bad_inputs():
    with pytest.raises(ValueError, match="labels must have shape"):
        image_text_matching_loss(torch.randn(4, 2), torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="0 \\(no match\\) or 1"):
        image_text_matching_loss(torch.randn(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="\\(M, 2\\)"):
        image_text_matching_loss(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="text_for_image holds indices"):
        build_itm_pairs(torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.long), None, torch.tensor([0, 5]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="text_ids must be"):
        build_itm_pairs(torch.randn(2, 3), torch.zeros(3, 4, dtype=torch.long), None, torch.tensor([1, 0]), torch.tensor([1, 0]))
