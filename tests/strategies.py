"""Hypothesis strategies shared by the test modules."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

PRIMES = [2, 3, 5, 7, 11, 13, 17, 31, 37]


@st.composite
def embedding_pairs(draw, max_n: int = 40, max_d: int = 300, dtype: torch.dtype = torch.float64, normalize=None):
    """Two (N, D) tensors with N in {1, small, odd, prime, > tile} and D in [1, max_d], plus a logit scale."""
    n = draw(st.one_of(st.just(1), st.sampled_from(PRIMES), st.integers(1, max_n)))
    d = draw(st.one_of(st.just(1), st.integers(1, 16), st.integers(1, max_d)))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.floats(1.0, 100.0))
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=dtype)
    b = torch.randn(n, d, generator=g, dtype=dtype)
    if normalize if normalize is not None else draw(st.booleans()):
        a = torch.nn.functional.normalize(a, dim=1)
        b = torch.nn.functional.normalize(b, dim=1)
    return a, b, scale
