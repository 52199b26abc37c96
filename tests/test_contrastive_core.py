"""The tiled log-sum-exp backend against the materialised float64 oracle, and the op's contract."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from strategies import embedding_pairs
from unimlip_kit.backends import BackendUnavailableError, backend_names, resolve_backend
from unimlip_kit.ops import contrastive_lse
from unimlip_kit.ops.tiled import contrastive_lse_tiled


def naive_lse(a, b, s, exclude_diagonal=False):
    """Independent float64 oracle: the full matrix and torch.logsumexp."""
    logits = s * (a @ b.T)
    if exclude_diagonal:
        logits = logits.masked_fill(torch.eye(len(a), len(b), dtype=torch.bool), float("-inf"))
    return torch.logsumexp(logits, 1), torch.logsumexp(logits, 0)


def _grads(fn, a, b, s, w_r, w_c):
    a = a.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    s = torch.tensor(s, dtype=a.dtype, requires_grad=True)
    r, c = fn(a, b, s)
    ((r * w_r).sum() + (c * w_c).sum()).backward()
    return r.detach(), c.detach(), a.grad, b.grad, s.grad


@given(embedding_pairs(), st.integers(1, 7), st.integers(1, 9), st.booleans())
def test_tiled_matches_reference_values_and_grads(pair, bm, bn, exclude_diagonal):
    a, b, s = pair
    if exclude_diagonal and len(a) == 1:
        exclude_diagonal = False
    g = torch.Generator().manual_seed(1)
    w_r = torch.randn(len(a), generator=g, dtype=a.dtype)  # upstream gradients != 1
    w_c = torch.randn(len(b), generator=g, dtype=a.dtype)
    got = _grads(lambda x, y, z: contrastive_lse_tiled(x, y, z, exclude_diagonal, True, block_m=bm, block_n=bn),
                 a, b, s, w_r, w_c)
    ref = _grads(lambda x, y, z: naive_lse(x, y, z, exclude_diagonal), a, b, s, w_r, w_c)
    for name, x, y in zip(["rows", "cols", "grad_a", "grad_b", "grad_scale"], got, ref):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


def test_rectangular_rows_only():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(11, 7, generator=g, dtype=torch.float64)
    rows, cols = contrastive_lse(a, b, 3.0, need_cols=False, backend="tiled")
    assert cols is None
    torch.testing.assert_close(rows, naive_lse(a, b, 3.0)[0])


@pytest.mark.parametrize("n", [1, 2, 17, 64])
def test_finite_at_scale_100_float32(n):
    # Normalised embeddings at scale 100: logits span [-100, 100]; a single shared max would underflow.
    g = torch.Generator().manual_seed(n)
    a = torch.nn.functional.normalize(torch.randn(n, 32, generator=g), dim=1)
    b = -a.clone()  # every positive pair is maximally dissimilar
    b[0] = a[0]
    rows, cols = contrastive_lse(a, b, 100.0, backend="tiled")
    ref_r, ref_c = naive_lse(a.double(), b.double(), 100.0)
    torch.testing.assert_close(rows.double(), ref_r, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(cols.double(), ref_c, rtol=1e-5, atol=1e-4)


def test_duplicated_embeddings_are_finite():
    a = torch.ones(9, 4).requires_grad_(True)
    rows, cols = contrastive_lse(a, a, 100.0)
    (rows.sum() + cols.sum()).backward()
    assert torch.isfinite(rows).all() and torch.isfinite(a.grad).all()
    torch.testing.assert_close(rows, torch.full((9,), 400.0 + torch.log(torch.tensor(9.0)).item()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(33, 20, generator=g).to(dtype), torch.randn(33, 20, generator=g).to(dtype)
    a.requires_grad_(True)
    rows, cols = contrastive_lse(a, b, 5.0)
    assert rows.dtype == torch.float32
    rows.sum().backward()
    assert a.grad.dtype == dtype
    torch.testing.assert_close(rows.double(), naive_lse(a.detach().double(), b.double(), 5.0)[0], rtol=1e-5, atol=1e-4)


def test_tiled_memory_is_linear_in_n():
    # Deterministic memory property: forward saves only O(N·D) tensors, never an N×N one.
    n, d = 4096, 8
    a = torch.randn(n, d, requires_grad=True)
    b = torch.randn(n, d, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        rows, cols = contrastive_lse(a, b, 10.0, backend="tiled")
    assert max(saved) <= n * d
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        contrastive_lse(a, b, 10.0, backend="reference")
    assert max(saved) >= n * n  # the oracle does hold the matrix


def test_backend_dispatch():
    assert backend_names("contrastive_lse")[-1] == "reference"
    assert resolve_backend("contrastive_lse", None, torch.device("cpu"), torch.float32)[0] == "tiled"
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        contrastive_lse(torch.ones(2, 2), torch.ones(2, 2), 1.0, backend="nope")


def test_forcing_triton_without_support_lists_reasons(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="(?s)cannot run.*TRITON_INTERPRET"):
        contrastive_lse(torch.ones(2, 2), torch.ones(2, 2), 1.0, backend="triton")
    with pytest.raises(BackendUnavailableError, match="float64"):
        contrastive_lse(torch.ones(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64), 1.0,
                        backend="triton")


@pytest.mark.parametrize(
    "a, b, kwargs, match",
    [
        (torch.ones(3, 4), torch.ones(3, 5), {}, r"same embedding dimension D.*\(3, 4\) and \(3, 5\)"),
        (torch.ones(3), torch.ones(3, 4), {}, r"a must be a 2-D \(N, D\) tensor, got ndim=1"),
        (torch.ones(0, 4), torch.ones(0, 4), {}, r"empty batch"),
        (torch.tensor([[float("nan")]]), torch.ones(1, 1), {}, r"a contains NaN or infinite"),
        (torch.ones(2, 2), torch.tensor([[float("inf"), 0.0], [0, 0]]), {}, r"b contains NaN or infinite"),
        (torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2), {}, r"floating dtype"),
        (torch.ones(2, 2), torch.ones(3, 2), {"exclude_diagonal": True}, r"square"),
    ],
)
def test_bad_inputs(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        contrastive_lse(a, b, 1.0, **kwargs)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), torch.tensor([1.0, 2.0])])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="logit_scale"):
        contrastive_lse(torch.ones(2, 2), torch.ones(2, 2), scale)
