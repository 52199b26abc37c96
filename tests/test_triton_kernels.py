"""The Triton InfoNCE kernels against the float64 reference (interpreter on CPU, or CUDA).

On CPU the kernels run under ``TRITON_INTERPRET=1`` (set here before Triton is
imported); ``UNIMLIP_TEST_DEVICE=cuda`` (benchmarks/gpu_check.sh) runs the same
tests compiled on a GPU. Errors are judged against the reference's own error in
the input dtype: ``max|kernel − ref64| ≤ 2·max|ref_dtype − ref64| + atol``.
"""

from __future__ import annotations

import importlib
import os

DEVICE = os.environ.get("UNIMLIP_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the kernel module's import

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("UNIMLIP_TEST_DEVICE=cuda but CUDA is not available", allow_module_level=True)

from unimlip_kit.ops import contrastive_lse  # noqa: E402
from unimlip_kit.ops.reference import contrastive_lse_reference  # noqa: E402


def load_kernel_module(name: str):
    """Import ``unimlip_kit.kernels.<name>``; re-import it if it was compiled before the interpreter was on."""
    mod = importlib.import_module(f"unimlip_kit.kernels.{name}")
    if DEVICE == "cpu":
        kernels = [v for k, v in vars(mod).items() if k.startswith("_") and k.endswith("_kernel")]
        if any(type(k).__name__ != "InterpretedFunction" for k in kernels):
            mod = importlib.reload(mod)
    return mod


infonce = load_kernel_module("infonce")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf warnings inside the interpreter

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# relative slack on top of 2x the reference's own error: the kernel rounds the probability tile
# to the input dtype for the tensor-core products of the backward (as FlashAttention does)
ATOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def _inputs(m, n, d, dtype, seed, normalise=True):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    if normalise:
        a, b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    gr, gc = torch.randn(m, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    return a.to(dtype).to(DEVICE), b.to(dtype).to(DEVICE), gr.to(DEVICE), gc.to(DEVICE)


def _run(fn, a, b, scale, gr, gc, exclude, need_cols, use_rows=True):
    a = a.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    s = torch.tensor(scale, dtype=a.dtype if a.dtype == torch.float64 else torch.float32, device=a.device)
    s.requires_grad_()
    rows, cols = fn(a, b, s, exclude, need_cols)
    loss = (rows * gr.to(rows.dtype)).sum() if use_rows else rows.sum() * 0
    if need_cols:
        loss = loss + (cols * gc.to(cols.dtype)).sum()
    ga, gb, gs = torch.autograd.grad(loss, [a, b, s])
    return [t.detach().double() for t in (rows, *([cols] if need_cols else []), ga, gb, gs)]


def _assert_close_to_reference(fn, a, b, scale, gr, gc, exclude, need_cols, use_rows=True, slack=1.0):
    a64, b64 = a.double(), b.double()
    want = _run(contrastive_lse_reference, a64, b64, scale, gr, gc, exclude, need_cols, use_rows)
    ref = _run(contrastive_lse_reference, a, b, scale, gr, gc, exclude, need_cols, use_rows)
    got = _run(fn, a, b, scale, gr, gc, exclude, need_cols, use_rows)
    names = ["rows"] + (["cols"] if need_cols else []) + ["grad_a", "grad_b", "grad_scale"]
    for name, w, r, k in zip(names, want, ref, got):
        assert k.shape == w.shape, name
        ref_err = (r - w).abs().max().item()
        err = (k - w).abs().max().item()
        atol = slack * ATOL[a.dtype] * max(1.0, w.abs().max().item())
        assert err <= 2 * ref_err + atol, f"{name}: kernel err {err:.3g}, reference err {ref_err:.3g}, atol {atol:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize(
    "m,n,d,exclude,need_cols",
    [
        (37, 37, 19, False, True),  # odd/prime N and D, three row blocks in the interpreter
        (5, 5, 3, True, True),  # N below one block, NT-Xent diagonal
        (23, 29, 41, False, False),  # rectangular, rows only
        (31, 31, 17, True, True),
    ],
)
def test_kernel_matches_reference(dtype, m, n, d, exclude, need_cols):
    a, b, gr, gc = _inputs(m, n, d, dtype, seed=m * 100 + d)
    _assert_close_to_reference(infonce.contrastive_lse_triton, a, b, 100.0, gr, gc, exclude, need_cols)


def test_column_only_upstream_gradient():
    a, b, gr, gc = _inputs(19, 19, 7, torch.float32, seed=3)
    _assert_close_to_reference(infonce.contrastive_lse_triton, a, b, 30.0, gr, gc, False, True, use_rows=False)


def test_stable_at_large_logits():
    # unnormalised embeddings at scale 100: logits in the hundreds; a fixed maximum would under/overflow
    a, b, gr, gc = _inputs(17, 17, 11, torch.float32, seed=5, normalise=False)
    rows, cols = infonce.contrastive_lse_triton(a, b, torch.tensor(100.0, device=DEVICE))
    assert torch.isfinite(rows).all() and torch.isfinite(cols).all()
    _assert_close_to_reference(infonce.contrastive_lse_triton, a, b, 100.0, gr, gc, True, True)


def test_two_pass_variant_matches_one_pass():
    a, b, gr, gc = _inputs(21, 21, 9, torch.float32, seed=7)
    _assert_close_to_reference(infonce.contrastive_lse_two_pass, a, b, 20.0, gr, gc, True, True)


def test_chunked_backward_matches(monkeypatch):
    # force the memory-bounded path (row chunks × column chunks of float32 scratch)
    monkeypatch.setattr(infonce, "_MIN_SCRATCH_BYTES", 0)
    monkeypatch.setattr(infonce, "SCRATCH_FRACTION", 0.05)
    a, b, gr, gc = _inputs(40, 40, 24, torch.bfloat16, seed=11)
    rc, cc = infonce._chunk_sizes(a, b)
    assert rc < 40 and cc < 40
    _assert_close_to_reference(infonce.contrastive_lse_triton, a, b, 50.0, gr, gc, True, True, slack=2.0)


def test_public_op_dispatches_to_triton():
    a, b, _, _ = _inputs(9, 9, 5, torch.float32, seed=13)
    rows, cols = contrastive_lse(a, b, 10.0, backend="triton")
    want_r, want_c = contrastive_lse_reference(a.double(), b.double(), torch.tensor(10.0, dtype=torch.float64))
    torch.testing.assert_close(rows.double(), want_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cols.double(), want_c, atol=1e-5, rtol=1e-5)


def test_flop_count():
    assert infonce.flops(3, 5, 7) == 8 * 3 * 5 * 7
    assert infonce.flops(3, 5, 7, backward=False) == 2 * 3 * 5 * 7


def test_mismatched_inputs_raise():
    a = torch.randn(4, 3, device=DEVICE)
    with pytest.raises(ValueError, match="dtype"):
        infonce.contrastive_lse_triton(a, a.double(), torch.tensor(1.0, device=DEVICE))




@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernel_passes_its_first_use_self_check(dtype):
    # the check that guards the automatic choice (unimlip_kit.ops.selfcheck) accepts the real kernel
    from unimlip_kit.ops.selfcheck import TOLERANCE, check_contrastive_lse

    out = check_contrastive_lse(infonce.contrastive_lse_triton, torch.device(DEVICE), dtype)
    assert out["max_error"] <= TOLERANCE[dtype]
