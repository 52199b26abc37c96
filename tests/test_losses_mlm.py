"""BERT masking statistics and properties; the MLM loss against a float64 loop over selected positions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimlip_kit.losses import MaskedLanguageModelingLoss, mask_tokens, masked_language_modeling_loss

SPECIALS = (0, 1, 2, 3, 4)  # pad, unk, cls, sep, mask
MASK_ID, VOCAB = 4, 1000


def _batch(b, length, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (b, length), generator=g)
    lengths = torch.randint(0, length + 1, (b,), generator=g)
    att = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 2
    ids = torch.where(att.bool(), ids, torch.zeros_like(ids))
    return ids, att


def test_statistics_on_a_large_batch():
    ids, att = _batch(512, 128, 0)
    masked, labels = mask_tokens(ids, mask_token_id=MASK_ID, vocab_size=VOCAB, special_token_ids=SPECIALS,
                                 attention_mask=att, prob=0.15, generator=torch.Generator().manual_seed(1))
    cand = att.bool() & (ids > 4)
    sel = labels != -100
    rate = sel.sum().item() / cand.sum().item()
    assert abs(rate - 0.15) < 0.01  # ~32k candidates: std of the rate ≈ 0.002
    n = sel.sum().item()
    masked_frac = (masked[sel] == MASK_ID).float().mean().item()
    random_frac = ((masked[sel] != MASK_ID) & (masked[sel] != ids[sel])).float().mean().item()
    kept_frac = (masked[sel] == ids[sel]).float().mean().item()
    assert n > 3000
    assert abs(masked_frac - 0.8) < 0.03 and abs(random_frac - 0.1) < 0.02 and abs(kept_frac - 0.1) < 0.02
    # random replacements are never special tokens and cover the vocabulary broadly
    replaced = masked[sel & (masked != MASK_ID) & (masked != ids)]
    assert not bool(torch.isin(replaced, torch.tensor(SPECIALS)).any())
    assert replaced.unique().numel() > 200


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_prob_extremes(prob):
    ids, att = _batch(64, 16, 3)
    masked, labels = mask_tokens(ids, mask_token_id=MASK_ID, vocab_size=VOCAB, special_token_ids=SPECIALS,
                                 attention_mask=att, prob=prob, min_one_target=True,
                                 generator=torch.Generator().manual_seed(0))
    cand = att.bool() & (ids > 4)
    per_row = (labels != -100).sum(1)
    if prob == 1.0:
        assert torch.equal(labels != -100, cand)
    else:  # only the forced minimum of one target per non-empty sequence
        assert torch.equal(per_row, cand.any(1).long())


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 6), length=st.integers(1, 12), prob=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
       specials=st.sets(st.integers(0, 30), max_size=5), use_mask=st.booleans())
def test_masking_properties(b, length, prob, seed, specials, use_mask):
    g = torch.Generator().manual_seed(seed)
    vocab = 31
    ids = torch.randint(0, vocab, (b, length), generator=g)
    att = torch.randint(0, 2, (b, length), generator=g) if use_mask else None
    original = ids.clone()
    kw = dict(mask_token_id=7, vocab_size=vocab, special_token_ids=specials, attention_mask=att, prob=prob,
              min_one_target=True)
    masked, labels = mask_tokens(ids, **kw, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(ids, original)  # input untouched
    cand = torch.ones_like(ids, dtype=torch.bool) if att is None else att.bool()
    cand &= ~torch.isin(ids, torch.tensor(sorted(specials | {7})))  # [MASK] (7) is never a candidate
    sel = labels != -100
    assert not bool((sel & ~cand).any())  # never special or padding
    assert torch.equal(labels[sel], ids[sel])
    assert torch.equal(masked[~sel], ids[~sel])  # unselected positions unchanged
    assert bool((sel.any(1) | ~cand.any(1)).all())  # ≥ 1 target per non-empty sequence
    changed = masked[sel & (masked != ids)]
    assert bool(((changed == 7) | ~torch.isin(changed, torch.tensor(sorted(specials) or [-1]))).all())
    assert bool(((masked >= 0) & (masked < vocab)).all())
    again = mask_tokens(ids, **kw, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)


def test_one_dimensional_input_and_errors():
    ids = torch.tensor([2, 10, 11, 12, 3])
    masked, labels = mask_tokens(ids, mask_token_id=4, vocab_size=20, special_token_ids=(2, 3), min_one_target=True)
    assert masked.shape == labels.shape == (5,) and int((labels != -100).sum()) >= 1
    with pytest.raises(ValueError, match="integer tensor"):
        mask_tokens(ids.float(), mask_token_id=4, vocab_size=20)
    with pytest.raises(ValueError, match="prob must be"):
        mask_tokens(ids, mask_token_id=4, vocab_size=20, prob=1.5)
    with pytest.raises(ValueError, match="mask_token_id=40"):
        mask_tokens(ids, mask_token_id=40, vocab_size=20)
    with pytest.raises(ValueError, match="attention_mask must match"):
        mask_tokens(ids, mask_token_id=4, vocab_size=20, attention_mask=torch.ones(4))


def _reference_loss(logits, labels) -> float:
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            y = int(labels[b, t])
            if y == -100:
                continue
            row = logits[b, t].tolist()
            m = max(row)
            total += m + math.log(sum(math.exp(v - m) for v in row)) - row[y]
            count += 1
    return total / count


def test_loss_matches_reference_and_ignores_unselected():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 13, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 13, (3, 7), generator=g)
    labels[torch.rand(3, 7, generator=g) < 0.6] = -100
    labels[0, 0] = 5
    got = masked_language_modeling_loss(logits, labels)
    assert abs(float(got) - _reference_loss(logits, labels)) < 1e-12
    # changing logits at unselected positions changes nothing, and they get no gradient
    noisy = logits.clone()
    noisy[labels == -100] += 100 * torch.randn(int((labels == -100).sum()), 13, dtype=torch.float64)
    assert torch.allclose(masked_language_modeling_loss(noisy, labels), got, atol=1e-12)
    x = logits.clone().requires_grad_(True)
    masked_language_modeling_loss(x, labels).backward()
    assert bool((x.grad[labels == -100] == 0).all()) and bool((x.grad[labels != -100] != 0).any())
    # selected rows only (memory-saving form) give the same value; the module agrees
    sel = labels != -100
    assert torch.allclose(masked_language_modeling_loss(logits[sel], labels[sel]), got, atol=1e-12)
    assert torch.equal(MaskedLanguageModelingLoss()(logits, labels), got)


def test_loss_with_nothing_selected_is_zero_with_graph():
    x = torch.randn(2, 3, 5, requires_grad=True)
    out = masked_language_modeling_loss(x, torch.full((2, 3), -100))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert bool((x.grad == 0).all())


def test_loss_errors():
    with pytest.raises(ValueError, match="labels must have shape \\(2, 3\\)"):
        masked_language_modeling_loss(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside \\[0, V=5\\)"):
        masked_language_modeling_loss(torch.randn(2, 5), torch.tensor([1, 9]))
