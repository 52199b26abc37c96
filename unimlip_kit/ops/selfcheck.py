r"""First-use self-checks of a fused backend against the pure-PyTorch path, one small problem per op.

:func:`unimlip_kit.backends.resolve_backend` runs one of these the first time it would choose a backend that
declares one (the Triton kernels) for a (device, dtype) in a process; a failure makes it fall back to the
next backend with a warning (docs/ARCHITECTURE.md, "Triton self-check"). Each check raises
:class:`SelfCheckError` naming what differs, and leaves every global random stream untouched (its inputs
come from a private CPU generator), so a run with the check resumes bit-identically to one without.

* ``contrastive_lse``: row/column LSE of :math:`L = s\,AB^\top`, the loss
  :math:`\sum_i w_i\,\mathrm{row}_i + \sum_j v_j\,\mathrm{col}_j` with random weights, and its gradients in
  A, B and s, for a rectangular problem and a square one with the diagonal excluded (NT-Xent). The shapes
  span several row blocks, column blocks and D blocks of the kernel's tiles, with ragged edges, so the
  per-column spin lock, the atomics and the masks all run. Reference: the tiled path in float64 on the same
  inputs (rounded to ``dtype`` first), so the difference is the fused backend's own rounding.
* ``hard_negatives``: a similarity matrix with one planted nearest negative per row and per column, at a
  logit gap of at least 60 (probability of any other draw below :math:`N e^{-60}`): every draw must be
  exactly that negative, in both directions, never the positive or a same-id pair.

Tolerances (:data:`TOLERANCE`, max-normalised error :math:`\max|x-r| / \max|r|` over the LSEs, the loss and
the three gradients). float32: 1e-4, where products and sums in float32 give about :math:`\sqrt{N}\,2^{-24}`
(measured: 3e-7 for the kernel under the interpreter and for the tiled path). float16 1e-2 and bfloat16 4e-2:
the kernels round the gradient tile :math:`G` to the input dtype for the tensor-core products (as
FlashAttention rounds P), unit round-off :math:`2^{-11}` and :math:`2^{-8}`, summed over up to 300 terms
(measured at the CPU shapes: float16 5e-4 kernel / 3e-4 tiled, bfloat16 7e-3 kernel / 3e-3 tiled; the
bound leaves 5-20x for the larger CUDA shapes, which benchmarks/gpu_check.sh records). A wrong kernel
(a race, a wrong index, a gradient term dropped or doubled) is off by O(0.1-1); tests/test_backend_selfcheck.py
checks that a gradient 10 tolerances off is caught in each dtype.

Example:
    >>> from unimlip_kit.ops.tiled import contrastive_lse_tiled
    >>> check_contrastive_lse(contrastive_lse_tiled, torch.device("cpu"), torch.float32)["max_error"] < 1e-4
    True
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["SelfCheckError", "TOLERANCE", "check_contrastive_lse", "check_hard_negatives"]

TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2,
                                       torch.float64: 1e-10}


class SelfCheckError(AssertionError):
    """A fused backend disagreed with the pure-PyTorch path; the message names the quantity and the error.

    Example:
        >>> str(SelfCheckError("grad_a: error 0.5 > 1e-4"))
        'grad_a: error 0.5 > 1e-4'
    """


def _shapes(device: torch.device) -> list[tuple[int, int, int, bool]]:
    """(M, N, D, exclude_diagonal): compiled tiles are 64-128 wide, the interpreter's 16."""
    if device.type == "cuda":
        return [(300, 280, 72, False), (260, 260, 40, True)]
    return [(40, 36, 20, False), (34, 34, 18, True)]


def _error(got: torch.Tensor | None, ref: torch.Tensor | None, what: str) -> float:
    if got is None or ref is None:
        if got is None and ref is None:
            return 0.0
        raise SelfCheckError(f"{what}: one side returned None")
    if got.shape != ref.shape:
        raise SelfCheckError(f"{what}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    got = got.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(got).all()):
        raise SelfCheckError(f"{what}: non-finite values")
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def check_contrastive_lse(impl: Callable, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Compare ``impl(a, b, scale, exclude_diagonal, need_cols)`` with the float64 tiled path; raise on a mismatch.

    Returns ``{"max_error": e, "tolerance": t}`` (max-normalised, over the LSEs and the three gradients).

    Example:
        >>> def wrong(a, b, s, excl, cols):
        ...     from unimlip_kit.ops.tiled import contrastive_lse_tiled
        ...     r, c = contrastive_lse_tiled(a, b, s, excl, cols)
        ...     return r + 0.01 * a.sum(1), c
        >>> check_contrastive_lse(wrong, torch.device("cpu"), torch.float32)
        Traceback (most recent call last):
        ...
        unimlip_kit.ops.selfcheck.SelfCheckError: rows (40x36, D=20, exclude_diagonal=False): max-normalised error ...
    """
    from unimlip_kit.ops.tiled import contrastive_lse_tiled

    tol = TOLERANCE[dtype]
    g = torch.Generator().manual_seed(1234)
    worst = 0.0
    with torch.enable_grad(), torch.autocast(device.type, enabled=False):
        for m, n, d, excl in _shapes(device):
            a0 = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
            b0 = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
            w_r = torch.rand(m, generator=g, dtype=torch.float64)
            w_c = torch.rand(n, generator=g, dtype=torch.float64)
            results = []
            for run_dtype, fn in ((dtype, impl), (torch.float64, contrastive_lse_tiled)):
                a = a0.to(dtype).to(device=device, dtype=run_dtype).requires_grad_()
                b = b0.to(dtype).to(device=device, dtype=run_dtype).requires_grad_()
                s_dtype = torch.float64 if run_dtype == torch.float64 else torch.float32
                s = torch.tensor(12.5, dtype=s_dtype, device=device, requires_grad=True)
                rows, cols = fn(a, b, s, excl, True)
                loss = (rows.double() * w_r.to(device)).sum() + (cols.double() * w_c.to(device)).sum()
                ga, gb, gs = torch.autograd.grad(loss, (a, b, s))
                results.append({"rows": rows, "cols": cols, "loss": loss.reshape(1), "grad_a": ga, "grad_b": gb,
                                "grad_scale": gs.reshape(1)})
            got, ref = results
            for key in got:
                err = _error(got[key], ref[key], f"{key} ({m}x{n}, D={d}, exclude_diagonal={excl})")
                if not err <= tol:
                    raise SelfCheckError(f"{key} ({m}x{n}, D={d}, exclude_diagonal={excl}): max-normalised "
                                         f"error {err:.3g} > {tol:g} against the float64 tiled path")
                worst = max(worst, err)
    return {"max_error": worst, "tolerance": tol}


def check_hard_negatives(impl: Callable, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Every draw of ``impl(x, y, scale, ids, generator)`` must be the planted nearest negative; raise otherwise.

    Row ``i``'s planted negative is ``π(i)``, a fixed-point-free permutation that also avoids ``i``'s id
    group; image ``x_i`` is a mix of ``y_i`` and ``y_π(i)`` plus small noise, so at scale 100 the logit gap
    to every other candidate is at least 60. Returns ``{"rows": N}``.

    Example:
        >>> from unimlip_kit.ops.hard_negatives_tiled import sample_hard_negatives_tiled
        >>> check_hard_negatives(sample_hard_negatives_tiled, torch.device("cpu"), torch.float32)
        {'rows': 70}
        >>> check_hard_negatives(lambda x, y, s, ids, g: (torch.zeros(len(x), dtype=torch.long),) * 2,
        ...                      torch.device("cpu"), torch.float32)
        Traceback (most recent call last):
        ...
        unimlip_kit.ops.selfcheck.SelfCheckError: text_for_image: 69 of 70 draws are not the planted negative (row 0: got 0, expected 56); ...
    """
    n = 300 if device.type == "cuda" else 70
    d = n + 13  # one orthogonal direction per text; a ragged last D block
    g = torch.Generator().manual_seed(4321)
    ids = torch.arange(n) // 2  # pairs share an id: i and i^1 are never negatives of each other
    perm = (torch.arange(n) + 2 + 2 * torch.randint(0, n // 2 - 1, (1,), generator=g)) % n  # shift by even >= 2
    y = torch.eye(n, d, dtype=torch.float64)
    x = 0.5 * y + 0.8 * y[perm] + 1e-3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    # text_for_image: argmax_j x_i.y_j over valid j is perm(i); image_for_text: text j's best image is perm^-1(j)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    scale = torch.tensor(100.0, device=device)
    with torch.autocast(device.type, enabled=False), torch.no_grad():
        t4i, i4t = impl(x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype), scale,
                        ids.to(device), torch.Generator().manual_seed(0))
    for name, got, want in (("text_for_image", t4i, perm), ("image_for_text", i4t, inverse)):
        got = got.detach().to("cpu", torch.long).reshape(-1)
        if got.shape != want.shape:
            raise SelfCheckError(f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        bad = int((got != want).sum())
        if bad:
            first = int((got != want).nonzero()[0, 0])
            raise SelfCheckError(f"{name}: {bad} of {n} draws are not the planted negative "
                                 f"(row {first}: got {int(got[first])}, expected {int(want[first])}); "
                                 f"logit gap >= 60, so P(any other draw) < {n * math.exp(-60):.1e}")
    return {"rows": n}
