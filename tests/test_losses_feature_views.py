"""Feature-level views: FLIP-style token keeping (per-sample uniform subsets) and dropout views."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimlip_kit.losses import dropout_views, feature_dropout, gather_tokens, random_token_keep


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 5), t=st.integers(1, 12), ratio=st.floats(0.05, 1.0), keep_first=st.booleans(),
       use_mask=st.booleans(), seed=st.integers(0, 2**16))
def test_token_keep_properties(b, t, ratio, keep_first, use_mask, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 3, generator=g)
    if use_mask:
        lengths = torch.randint(0, t + 1, (b,), generator=g)
        att = (torch.arange(t)[None] < lengths[:, None]).long()
    else:
        att = None
    out = random_token_keep(x, ratio, attention_mask=att, keep_first=keep_first, generator=torch.Generator().manual_seed(seed))
    valid = torch.ones(b, t, dtype=torch.bool) if att is None else att.bool()
    for i in range(b):
        n = int(valid[i].sum())
        first = int(keep_first and n > 0)
        rest = n - first
        expected = first + (min(max(1, math.floor(rest * ratio + 1e-9)), rest) if rest > 0 else 0)
        idx = out.index[i][out.mask[i]]
        assert idx.numel() == expected
        assert bool((idx[1:] > idx[:-1]).all())  # unique, original order
        assert bool(valid[i, idx].all())  # never a padding token
        if first:
            assert int(idx[0]) == 0
        assert bool(out.mask[i, : idx.numel()].all())  # padding slots last
        assert torch.equal(out.tokens[i][out.mask[i]], x[i, idx])
    again = random_token_keep(x, ratio, attention_mask=att, keep_first=keep_first, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(again.index, out.index)


def test_keep_ratio_one_is_identity():
    x = torch.randn(3, 7, 4)
    out = random_token_keep(x, 1.0)
    assert torch.equal(out.tokens, x) and bool(out.mask.all())
    assert torch.equal(out.index, torch.arange(7).expand(3, 7))


def test_subsets_are_uniform():
    """Each non-first token is kept with probability k/n, and pairs with k(k-1)/(n(n-1)) (uniform subset)."""
    b, t, ratio = 4000, 9, 0.5  # keep_first: k = 1 + floor(8 * 0.5) = 5 of 9, i.e. 4 of the 8 others
    out = random_token_keep(torch.zeros(b, t, 1), ratio, keep_first=True, generator=torch.Generator().manual_seed(0))
    kept = torch.zeros(b, t)
    kept.scatter_(1, out.index, 1.0)
    freq = kept[:, 1:].mean(0)
    assert bool((kept[:, 0] == 1).all())
    assert float((freq - 0.5).abs().max()) < 0.04  # std ≈ 0.008
    pair = (kept[:, 1] * kept[:, 2]).mean().item()
    assert abs(pair - (4 * 3) / (8 * 7)) < 0.03
    # every sample draws its own subset
    assert out.index.unique(dim=0).shape[0] > 60


def test_gradient_reaches_only_kept_tokens():
    x = torch.randn(2, 6, 3, requires_grad=True)
    out = random_token_keep(x, 0.5, generator=torch.Generator().manual_seed(1))
    out.tokens.sum().backward()
    hit = x.grad.abs().sum(-1) > 0
    expected = torch.zeros(2, 6, dtype=torch.bool)
    expected.scatter_(1, out.index, True)
    assert torch.equal(hit, expected)


def test_token_keep_errors_and_gather():
    with pytest.raises(ValueError, match="keep_ratio"):
        random_token_keep(torch.randn(2, 3, 4), 0.0)
    with pytest.raises(ValueError, match="attention_mask must be"):
        random_token_keep(torch.randn(2, 3, 4), 0.5, attention_mask=torch.ones(2, 4))
    pos = torch.randn(1, 6, 4).expand(3, 6, 4)  # positional embeddings follow the kept tokens
    out = random_token_keep(torch.randn(3, 6, 4), 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gather_tokens(pos, out.index), pos[0][out.index])


def test_empty_sequences_keep_nothing():
    att = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])
    out = random_token_keep(torch.randn(2, 4, 2), 0.5, attention_mask=att, keep_first=True)
    assert out.mask.sum(1).tolist() == [2, 0]


def test_feature_dropout_statistics():
    x = torch.ones(200, 500)
    y = feature_dropout(x, 0.3, generator=torch.Generator().manual_seed(0))
    zero = (y == 0).float().mean().item()
    assert abs(zero - 0.3) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert abs(y.mean().item() - 1.0) < 0.02  # inverted dropout keeps the expectation
    assert feature_dropout(x, 0.3, training=False) is x and feature_dropout(x, 0.0) is x
    a = feature_dropout(x, 0.3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, feature_dropout(x, 0.3, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="dropout p"):
        feature_dropout(x, 1.0)


class _Encoder(torch.nn.Module):
    def __init__(self, p):
        super().__init__()
        self.lin = torch.nn.Linear(4, 6)
        self.drop = torch.nn.Dropout(p)

    def forward(self, input_ids, attention_mask=None):
        h = self.drop(self.lin(input_ids))
        return {"pooled": h, "mask": attention_mask}


def test_dropout_views_one_pass_matches_two_copies():
    torch.manual_seed(0)
    enc = _Encoder(0.0)
    x, m = torch.randn(5, 4), torch.ones(5, 3)
    v1, v2, v3 = dropout_views(enc, x, attention_mask=m, n_views=3)
    ref = enc(x)["pooled"]
    for v in (v1, v2, v3):
        assert torch.allclose(v["pooled"], ref) and torch.equal(v["mask"], m)
    enc = _Encoder(0.5).train()
    a, b = dropout_views(enc, {"input_ids": x}["input_ids"])
    assert not torch.allclose(a["pooled"], b["pooled"])  # independent dropout masks per copy


def test_dropout_views_warns_in_eval_mode():
    enc = _Encoder(0.5).eval()
    with pytest.warns(UserWarning, match="eval mode"):
        a, b = dropout_views(enc, torch.randn(2, 4))
    assert torch.equal(a["pooled"], b["pooled"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dropout_views(lambda x: (x, x * 2), torch.randn(2, 4))  # plain callables: no check, tuples split
    with pytest.raises(ValueError, match="n_views"):
        dropout_views(enc, torch.randn(2, 4), n_views=0)
