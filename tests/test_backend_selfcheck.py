"""The first-use self-check of fused backends (unimlip_kit.backends, unimlip_kit.ops.selfcheck), on the CPU.

A fused backend is injected into the real dispatch of ``contrastive_lse`` and ``hard_negatives`` with the
priority and the self-check of the Triton ones, but allowed on the CPU: a kernel with a wrong gradient, one
that raises, one that samples wrongly, and a correct one. Results are judged against float64 references.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from unimlip_kit import backends
from unimlip_kit.backends import SelfCheckWarning, register_backend, resolve_backend, run_self_check, self_check_states
from unimlip_kit.losses import info_nce
from unimlip_kit.ops import contrastive_lse, sample_hard_negatives
from unimlip_kit.ops.hard_negatives_tiled import sample_hard_negatives_tiled
from unimlip_kit.ops.reference import contrastive_lse_reference
from unimlip_kit.ops.selfcheck import TOLERANCE, check_contrastive_lse, check_hard_negatives
from unimlip_kit.ops.tiled import contrastive_lse_tiled

CPU = torch.device("cpu")


@pytest.fixture
def inject(monkeypatch):
    """Register a fake fused backend (priority 30, automatic on the CPU, self-checked); removed afterwards."""
    added = []
    monkeypatch.delenv(backends.SELFCHECK_ENV, raising=False)

    def add(op: str, impl, check, calls: list | None = None):
        def counted(*args):
            if calls is not None:
                calls.append(args[1:])
            return check(*args)

        backends._ensure_builtin()
        register_backend(op, "fused", priority=30, reasons=lambda d, t: [], loader=lambda: impl,
                         auto_devices=("cpu",), selfcheck=lambda: counted)
        added.append(op)

    yield add
    for op in added:
        del backends._REGISTRY[op]["fused"]
        for key in [k for k in backends._SELF_CHECKS if k[:2] == (op, "fused")]:
            del backends._SELF_CHECKS[key]


class _WrongGrad(torch.autograd.Function):
    """The right LSE forward, with the gradient of ``a`` 1.5 times too large (a silent kernel bug)."""

    @staticmethod
    def forward(ctx, a, b, scale):
        ctx.save_for_backward(a, b, scale)
        L = scale * a.double() @ b.double().T
        return torch.logsumexp(L, 1).to(torch.float32), torch.logsumexp(L, 0).to(torch.float32)

    @staticmethod
    def backward(ctx, g_row, g_col):
        a, b, scale = ctx.saved_tensors
        with torch.enable_grad():
            a_, b_, s_ = (t.detach().requires_grad_() for t in (a, b, scale))
            rows, cols = contrastive_lse_reference(a_, b_, s_)
            ga, gb, gs = torch.autograd.grad((rows * g_row).sum() + (cols * g_col).sum(), (a_, b_, s_))
        return 1.5 * ga, gb, gs


def wrong_gradient(a, b, scale, exclude_diagonal, need_cols):
    rows, cols = _WrongGrad.apply(a, b, scale)
    return rows, cols


def raising(a, b, scale, exclude_diagonal, need_cols):
    raise RuntimeError("an illegal memory access was encountered")


def _loss_and_grads(backend=None):
    g = torch.Generator().manual_seed(7)
    a = torch.randn(9, 5, generator=g).requires_grad_()
    b = torch.randn(9, 5, generator=g).requires_grad_()
    loss = info_nce(a, b, 10.0, backend=backend).loss
    ga, gb = torch.autograd.grad(loss, (a, b))
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    ref = info_nce(a64, b64, 10.0, backend="reference").loss
    ra, rb = torch.autograd.grad(ref, (a64, b64))
    return (loss, ga, gb), (ref, ra, rb)


def _assert_close_to_reference(ours, ref):
    for x, r in zip(ours, ref):
        torch.testing.assert_close(x.double(), r, rtol=1e-4, atol=1e-5)


def test_a_kernel_with_a_wrong_gradient_warns_once_and_falls_back(inject):
    inject("contrastive_lse", wrong_gradient, check_contrastive_lse)
    with pytest.warns(SelfCheckWarning) as caught:
        name, _ = resolve_backend("contrastive_lse", None, CPU, torch.float32)
    assert name == "tiled"
    (w,) = caught
    msg = str(w.message)
    assert "fused backend of contrastive_lse" in msg and "cpu with float32" in msg
    assert "grad_a" in msg and "Using the tiled backend" in msg and "UNIMLIP_TRITON_SELFCHECK=0" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, and the results are right
        ours, ref = _loss_and_grads()
    _assert_close_to_reference(ours, ref)
    (state,) = [c for c in self_check_states() if c.backend == "fused"]
    assert (state.op, state.device, state.dtype, state.state) == ("contrastive_lse", "cpu", "float32", "failed")
    # another dtype is its own key: checked (and failed) separately
    with pytest.warns(SelfCheckWarning, match="cpu with float64"):
        assert resolve_backend("contrastive_lse", None, CPU, torch.float64)[0] == "tiled"


def test_without_the_check_the_wrong_kernel_would_have_been_used(inject, monkeypatch):
    inject("contrastive_lse", wrong_gradient, check_contrastive_lse)
    monkeypatch.setenv(backends.SELFCHECK_ENV, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("contrastive_lse", None, CPU, torch.float32)[0] == "fused"
        (loss, ga, gb), (ref, ra, rb) = _loss_and_grads()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)  # the forward is right...
    assert not torch.allclose(ga.double(), ra, rtol=1e-2, atol=1e-4)  # ...the gradient is not
    assert not [c for c in self_check_states() if c.backend == "fused"]


def test_a_kernel_that_raises_warns_with_the_error_and_falls_back(inject):
    inject("contrastive_lse", raising, check_contrastive_lse)
    with pytest.warns(SelfCheckWarning, match="RuntimeError: an illegal memory access was encountered"):
        ours, ref = _loss_and_grads()
    _assert_close_to_reference(ours, ref)


def test_a_correct_kernel_passes_once_and_is_not_checked_again(inject):
    calls: list = []
    used: list = []

    def correct(*args):
        used.append(1)
        return contrastive_lse_tiled(*args)

    inject("contrastive_lse", correct, check_contrastive_lse, calls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            assert resolve_backend("contrastive_lse", None, CPU, torch.float32)[0] == "fused"
        ours, ref = _loss_and_grads()
    _assert_close_to_reference(ours, ref)
    assert calls == [(CPU, torch.float32)] and used  # checked once; then used for real
    (state,) = [c for c in self_check_states() if c.backend == "fused"]
    assert state.state == "passed" and state.seconds > 0 and "max_error=" in state.detail
    error = float(state.detail.split("max_error=")[1].split(",")[0])
    assert error < TOLERANCE[torch.float32]


def test_an_explicit_backend_is_never_checked_or_replaced(inject):
    calls: list = []
    inject("contrastive_lse", wrong_gradient, check_contrastive_lse, calls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("contrastive_lse", "fused", CPU, torch.float32)[0] == "fused"
        rows, _ = contrastive_lse(torch.eye(3), torch.eye(3), 2.0, backend="fused")
    assert calls == []
    torch.testing.assert_close(rows, torch.logsumexp(2 * torch.eye(3), 1))


def test_a_wrong_sampler_falls_back_to_the_tiled_one(inject):
    def positives(x, y, scale, ids, generator):  # returns each row's own positive: never a valid negative
        idx = torch.arange(x.shape[0])
        return idx, idx

    inject("hard_negatives", positives, check_hard_negatives)
    x = torch.nn.functional.normalize(torch.randn(12, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    with pytest.warns(SelfCheckWarning, match=r"hard_negatives failed its self-check.*text_for_image: 70 of 70"):
        t4i, i4t = sample_hard_negatives(x, x, 5.0, ids=None, generator=torch.Generator().manual_seed(1))
    ref = sample_hard_negatives_tiled(x, x, torch.tensor(5.0), None, torch.Generator().manual_seed(1))
    assert torch.equal(t4i, ref[0]) and torch.equal(i4t, ref[1])
    assert bool((t4i != torch.arange(12)).all())


def test_checks_leave_the_global_random_streams_alone(inject):
    inject("contrastive_lse", contrastive_lse_tiled, check_contrastive_lse)
    inject("hard_negatives", sample_hard_negatives_tiled, check_hard_negatives)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    run_self_check("contrastive_lse", "fused", CPU, torch.float32)
    run_self_check("hard_negatives", "fused", CPU, torch.float32)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_check_accepts_the_tiled_path_in_every_dtype_and_catches_small_gradient_errors(dtype):
    # the tiled path in the input dtype stands in for a correct fused kernel: its error is its own rounding
    assert check_contrastive_lse(contrastive_lse_tiled, CPU, dtype)["max_error"] <= TOLERANCE[dtype]

    def off_by(factor):
        def impl(a, b, s, excl, cols):
            b2 = b.view_as(b)  # the same values; its gradient is scaled on the way back
            b2.register_hook(lambda grad: grad * factor)
            return contrastive_lse_tiled(a, b2, s, excl, cols)

        return impl

    # a gradient 10x the tolerance off is caught in every dtype
    with pytest.raises(AssertionError, match="grad_b"):
        check_contrastive_lse(off_by(1 + 10 * TOLERANCE[dtype]), CPU, dtype)
