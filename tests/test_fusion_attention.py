"""MultiHeadAttention (einops head split) against a naive float64 per-head loop with its own weights."""

from __future__ import annotations

import math

import pytest
import torch

from unimlip_kit.models.fusion import MultiHeadAttention


def _naive(mha: MultiHeadAttention, x, ctx, mask):
    """Head i owns channels [i*d, (i+1)*d) of q, of k (first W outputs of kv) and of v (last W outputs)."""
    x, ctx = x.double(), ctx.double()
    wq, bq = mha.q.weight.double(), mha.q.bias.double()
    wkv, bkv = mha.kv.weight.double(), mha.kv.bias.double()
    w = x.shape[-1]
    d = w // mha.heads
    q = x @ wq.T + bq
    kv = ctx @ wkv.T + bkv
    k, v = kv[..., :w], kv[..., w:]
    out = torch.zeros_like(q)
    for b in range(x.shape[0]):
        for h in range(mha.heads):
            sl = slice(h * d, (h + 1) * d)
            s = q[b, :, sl] @ k[b, :, sl].T / math.sqrt(d)
            if mask is not None:
                s = s.masked_fill(~mask[b][None, :], float("-inf"))
            out[b, :, sl] = torch.softmax(s, dim=-1) @ v[b, :, sl]
    return out @ mha.out.weight.double().T + mha.out.bias.double()


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_matches_naive_attention(heads):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, heads, backend="sdpa").eval()
    x, ctx = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:] = False
    for m in (None, mask):
        got = mha(x, ctx, m)
        torch.testing.assert_close(got.double(), _naive(mha, x, ctx, m), rtol=1e-5, atol=1e-5)


def test_masked_keys_have_no_influence():
    torch.manual_seed(1)
    mha = MultiHeadAttention(8, 2, backend="sdpa").eval()
    x, ctx = torch.randn(1, 3, 8), torch.randn(1, 6, 8)
    mask = torch.tensor([[True, True, True, False, False, False]])
    ctx2 = ctx.clone()
    ctx2[:, 3:] = 100.0
    torch.testing.assert_close(mha(x, ctx, mask), mha(x, ctx2, mask))
