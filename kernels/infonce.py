r"""Triton kernels for the contrastive log-sum-exp core (behind ITC, NT-Xent and SimCSE).

Math (same contract as :func:`unimlip_kit.ops.tiled.contrastive_lse_tiled`): for
:math:`L = s\,A B^\top` return :math:`\mathrm{row}_i=\log\sum_j e^{L_{ij}}` and
:math:`\mathrm{col}_j=\log\sum_i e^{L_{ij}}`, never writing the M×N matrix.

Forward (``_lse_fwd_kernel``): one program per ``BLOCK_M`` rows walks every column
tile once (2·M·N·D FLOPs). Rows keep a running (max, rescaled sum) in registers.
Each tile's per-column (max, sum) is merged into global per-column statistics
under a per-column-block spin lock (``atomic_cas``); programs start at staggered
column blocks so they rarely wait on the same lock. Per-row and per-column maxima
keep it exact at logit scale 100, where a single fixed maximum underflows.

Backward (``_lse_bwd_kernel``): recompute each tile once, form
:math:`G_{ij} = g^r_i e^{L_{ij}-\mathrm{row}_i} + g^c_j e^{L_{ij}-\mathrm{col}_j}`, then
:math:`\partial A = s\,G B` (rows owned by the program, plain read-modify-write),
:math:`\partial B = s\,G^\top A` (float32 ``atomic_add``, as FlashAttention-2 does for dQ)
and :math:`\partial s = \sum_{ij} G_{ij}\,(a_i\cdot b_j)` (one partial per program, summed on
the host). 6·M·N·D FLOPs, so 8·M·N·D for forward plus backward.

Memory: half-precision inputs accumulate gradients in float32 scratch. When the
scratch for all rows would exceed ``SCRATCH_FRACTION`` of inputs plus gradients,
the backward runs over row chunks × column chunks (no extra FLOPs: the chunks
partition the tiles); ``∂A`` is then still rounded once, ``∂B`` once per row chunk.
float32 inputs accumulate straight into their gradients.

Inputs float32 / float16 / bfloat16, any M, N, D (rows, columns and D are masked
in-kernel). Runs on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1`` (set it
before Triton is imported). Reference: :func:`contrastive_lse_reference` below
(which is :func:`unimlip_kit.ops.reference.contrastive_lse_reference`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unimlip_kit.ops.reference import contrastive_lse_reference

__all__ = [
    "CUDA_CONFIGS",
    "SCRATCH_FRACTION",
    "contrastive_lse_reference",
    "contrastive_lse_triton",
    "contrastive_lse_two_pass",
    "flops",
]

#: float32 gradient scratch allowed, as a fraction of the bytes of inputs plus gradients
SCRATCH_FRACTION = 0.15
_MIN_SCRATCH_BYTES = 256 << 20
#: finite "minus infinity" for running maxima: -1e30 - (-1e30) == 0, never nan; a ``tl.constexpr`` because
#: compiled kernels may only read constexpr globals (a plain float compiles under the interpreter only)
_NEG_BIG = tl.constexpr(-1.0e30)


def _interpreting(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


#: CUDA launch configurations per pass and input width ("half": bf16/fp16, "fp32"), one table for sm_80 and sm_90:
#: each compiles there without register spills and within shared memory (tests/test_triton_compile.py checks it;
#: docs/ARCHITECTURE.md lists the resources). Benchmarks may override an entry (benchmarks/bench_kernels_gpu.py
#: sweeps a few and keeps the fastest). The sampler's Philox-4x32 keeps 4 words per tile element live, so its tiles
#: hold at most 16 elements per thread.
CUDA_CONFIGS: dict[tuple[str, str], dict] = {
    ("fwd", "half"): dict(BLOCK_M=128, BLOCK_N=128, BLOCK_D=32, num_warps=8, num_stages=3),
    ("bwd", "half"): dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=32, num_warps=8, num_stages=2),
    ("sampler", "half"): dict(BLOCK_M=128, BLOCK_N=32, BLOCK_D=64, num_warps=8, num_stages=3),
    ("fwd", "fp32"): dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=16, num_warps=4, num_stages=2),
    # maxnreg: without it ptxas caps this kernel at 128 registers (for occupancy) and spills a few bytes
    ("bwd", "fp32"): dict(BLOCK_M=64, BLOCK_N=32, BLOCK_D=16, num_warps=4, num_stages=2, maxnreg=255),
    ("sampler", "fp32"): dict(BLOCK_M=64, BLOCK_N=32, BLOCK_D=32, num_warps=8, num_stages=2),
}


def _blocks(t: torch.Tensor, d: int, kind: str = "fwd") -> dict:
    if _interpreting(t):
        # the interpreter multiplies bf16 tiles wrongly: exact float32 products instead (bf16·bf16 fits fp32)
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=16, num_warps=1, IEEE=True, UPCAST=t.dtype == torch.bfloat16)
    width = "fp32" if t.dtype == torch.float32 else "half"
    # float32 inputs: true fp32 products (input_precision="ieee"), not TF32
    return dict(CUDA_CONFIGS[(kind, width)], IEEE=t.dtype == torch.float32, UPCAST=False)


@triton.jit
def _mm(x, y, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """acc + x @ y with float32 accumulation (UPCAST: the interpreter's bf16 dot is wrong, use exact fp32)."""
    if UPCAST:
        x = x.to(tl.float32)
        y = y.to(tl.float32)
    if IEEE:
        return tl.dot(x, y, acc, input_precision="ieee")
    return tl.dot(x, y, acc)


@triton.jit
def _tile_dot(A, B, rows, cols, row_ok, col_ok, D, stride_a, stride_b,
              IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """(BLOCK_M, BLOCK_N) float32 tile of A[rows] @ B[cols].T, D masked."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < D
        a = tl.load(A + rows[:, None] * stride_a + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        b = tl.load(B + cols[:, None] * stride_b + dd[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        acc = _mm(a, tl.trans(b), acc, IEEE, UPCAST)
    return acc


@triton.jit
def _lse_fwd_kernel(A, B, SCALE, ROW_LSE, COL_MAX, COL_SUM, LOCKS, M, N, D, stride_a, stride_b,
                    EXCLUDE_DIAG: tl.constexpr, NEED_COLS: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    s = tl.load(SCALE).to(tl.float32)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    m_i = tl.full([BLOCK_M], _NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_blocks = tl.cdiv(N, BLOCK_N)
    for t in range(0, n_blocks):
        jb = (t + pid) % n_blocks  # staggered start: programs rarely queue on one column lock
        cols = (jb * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < N
        logits = s * _tile_dot(A, B, rows, cols, row_ok, col_ok, D, stride_a, stride_b,
                               IEEE, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D)
        valid = row_ok[:, None] & col_ok[None, :]
        if EXCLUDE_DIAG:
            valid = valid & (rows[:, None] != cols[None, :])
        logits = tl.where(valid, logits, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logits, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
        m_i = m_new
        if NEED_COLS:
            c_max = tl.maximum(tl.max(logits, 0), _NEG_BIG)
            c_sum = tl.sum(tl.exp(logits - c_max[None, :]), 0)
            lock = LOCKS + jb
            while tl.atomic_cas(lock, 0, 1) == 1:
                pass
            old_m = tl.load(COL_MAX + cols, mask=col_ok, other=_NEG_BIG, cache_modifier=".cg")
            old_s = tl.load(COL_SUM + cols, mask=col_ok, other=0.0, cache_modifier=".cg")
            new_m = tl.maximum(old_m, c_max)
            new_s = old_s * tl.exp(old_m - new_m) + c_sum * tl.exp(c_max - new_m)
            tl.store(COL_MAX + cols, new_m, mask=col_ok)
            tl.store(COL_SUM + cols, new_s, mask=col_ok)
            tl.debug_barrier()  # every thread's stores precede the one-thread release (aot_check verifies the PTX)
            tl.atomic_xchg(lock, 0)
    lse = tl.where(l_i > 0, m_i + tl.log(l_i), float("-inf"))
    tl.store(ROW_LSE + rows, lse, mask=row_ok)


@triton.jit
def _lse_bwd_kernel(A, B, SCALE, ROW_LSE, COL_LSE, G_ROW, G_COL, DA, DB, DS_PART,
                    M, N, D, row_off, col_off, stride_a, stride_b, stride_da, stride_db,
                    EXCLUDE_DIAG: tl.constexpr, HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr,
                    IEEE: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    s = tl.load(SCALE).to(tl.float32)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    if HAS_ROW:
        lse_r = tl.load(ROW_LSE + rows, mask=row_ok, other=0.0)
        g_r = tl.load(G_ROW + rows, mask=row_ok, other=0.0)
    ds = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_blocks = tl.cdiv(N, BLOCK_N)
    for t in range(0, n_blocks):
        jb = (t + pid) % n_blocks  # staggered start spreads the dB atomics
        cols = (jb * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < N
        dots = _tile_dot(A, B, rows, cols, row_ok, col_ok, D, stride_a, stride_b, IEEE, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D)
        logits = s * dots
        valid = row_ok[:, None] & col_ok[None, :]
        if EXCLUDE_DIAG:
            valid = valid & ((rows + row_off)[:, None] != (cols + col_off)[None, :])
        g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if HAS_ROW:
            g += g_r[:, None] * tl.exp(logits - lse_r[:, None])
        if HAS_COL:
            lse_c = tl.load(COL_LSE + cols, mask=col_ok, other=0.0)
            g_c = tl.load(G_COL + cols, mask=col_ok, other=0.0)
            g += g_c[None, :] * tl.exp(logits - lse_c[None, :])
        g = tl.where(valid, g, 0.0)
        ds += tl.sum(g * dots, 1)
        g_in = g.to(A.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            a_m = row_ok[:, None] & d_ok[None, :]
            b_m = col_ok[:, None] & d_ok[None, :]
            a = tl.load(A + rows[:, None] * stride_a + dd[None, :], mask=a_m, other=0.0)
            b = tl.load(B + cols[:, None] * stride_b + dd[None, :], mask=b_m, other=0.0)
            da = _mm(g_in, b, tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32), IEEE, UPCAST)
            db = _mm(tl.trans(g_in), a, tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32), IEEE, UPCAST)
            da_ptr = DA + rows[:, None] * stride_da + dd[None, :]
            tl.store(da_ptr, tl.load(da_ptr, mask=a_m, other=0.0) + da, mask=a_m)  # rows owned: no race
            tl.atomic_add(DB + cols[:, None] * stride_db + dd[None, :], db, mask=b_m)
    tl.store(DS_PART + pid, tl.sum(ds, 0))


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.device != b.device or a.dtype != b.dtype:
        raise ValueError(f"a and b must share device and dtype, got {a.device}/{a.dtype} and {b.device}/{b.dtype}")
    if a.device.type == "cpu":
        from unimlip_kit.backends import triton_interpret_enabled

        if not triton_interpret_enabled():
            raise ValueError("the Triton kernels take CPU tensors only with TRITON_INTERPRET=1 set before importing triton")


def _forward(a, b, scale, exclude_diagonal, need_cols):
    m, d = a.shape
    n = b.shape[0]
    cfg = _blocks(a, d)
    dev = a.device
    row_lse = torch.empty(m, dtype=torch.float32, device=dev)
    n_col_blocks = triton.cdiv(max(n, 1), cfg["BLOCK_N"])
    col_max = torch.full((n if need_cols else 1,), _NEG_BIG.value, dtype=torch.float32, device=dev)
    col_sum = torch.zeros(n if need_cols else 1, dtype=torch.float32, device=dev)
    locks = torch.zeros(n_col_blocks if need_cols else 1, dtype=torch.int32, device=dev)
    if m and n:
        grid = (triton.cdiv(m, cfg["BLOCK_M"]),)
        _lse_fwd_kernel[grid](
            a, b, scale, row_lse, col_max, col_sum, locks, m, n, d, a.stride(0), b.stride(0),
            EXCLUDE_DIAG=exclude_diagonal, NEED_COLS=need_cols, **cfg,
        )
    else:
        row_lse.fill_(float("-inf"))
    if not need_cols:
        return row_lse, None
    col_lse = torch.where(col_sum > 0, col_max + torch.log(col_sum), torch.full_like(col_sum, float("-inf")))
    return row_lse, col_lse


def _chunk_sizes(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """Rows and columns per backward launch so the float32 scratch stays within budget."""
    m, d = a.shape
    n = b.shape[0]
    if a.dtype == torch.float32:
        return m, n  # accumulate straight into the float32 gradients: no scratch
    budget = max(_MIN_SCRATCH_BYTES, SCRATCH_FRACTION * 2 * (a.numel() + b.numel()) * a.element_size())
    rows_fit = int(budget // (4 * max(d, 1)))
    if m + n <= rows_fit:
        return m, n
    r = max(1, (3 * rows_fit) // 4)  # dA is rounded once per row chunk (= once): give it the larger share
    c = max(1, rows_fit - r)
    return min(m, r), min(n, c)


def _backward(a, b, scale, row_lse, col_lse, g_row, g_col, exclude_diagonal):
    m, d = a.shape
    n = b.shape[0]
    dev = a.device
    cfg = _blocks(a, d, "bwd")
    has_row, has_col = g_row is not None, g_col is not None
    # normalise the upstream gradients so G stays O(1) in half precision (no fp16 underflow)
    gmax = torch.zeros((), dtype=torch.float32, device=dev)
    for g in (g_row, g_col):
        if g is not None and g.numel():
            gmax = torch.maximum(gmax, g.detach().abs().max().float())
    gmax = torch.where(gmax > 0, gmax, torch.ones_like(gmax))
    g_row_n = (g_row.float() / gmax).contiguous() if has_row else row_lse
    g_col_n = (g_col.float() / gmax).contiguous() if has_col else row_lse
    col_lse_ = col_lse if has_col else row_lse
    s = scale.detach().float()
    k = s * gmax  # gradients are s·gmax·(G B), s·gmax·(Gᵀ A)
    fp32 = a.dtype == torch.float32
    grad_a = torch.zeros_like(a) if fp32 else torch.empty_like(a)
    grad_b = torch.zeros_like(b)
    ds_total = torch.zeros((), dtype=torch.float32, device=dev)
    rc, cc = _chunk_sizes(a, b)
    for r0 in range(0, m, rc):
        r1 = min(m, r0 + rc)
        da = grad_a[r0:r1] if fp32 else torch.zeros(r1 - r0, d, dtype=torch.float32, device=dev)
        grid = (triton.cdiv(r1 - r0, cfg["BLOCK_M"]),)
        for c0 in range(0, n, cc):
            c1 = min(n, c0 + cc)
            db = grad_b[c0:c1] if fp32 else torch.zeros(c1 - c0, d, dtype=torch.float32, device=dev)
            ds_part = torch.zeros(grid[0], dtype=torch.float32, device=dev)
            _lse_bwd_kernel[grid](
                a[r0:r1], b[c0:c1], scale, row_lse[r0:r1], col_lse_[c0:c1] if has_col else col_lse_,
                g_row_n[r0:r1] if has_row else g_row_n, g_col_n[c0:c1] if has_col else g_col_n,
                da, db, ds_part, r1 - r0, c1 - c0, d, r0, c0, a.stride(0), b.stride(0), da.stride(0), db.stride(0),
                EXCLUDE_DIAG=exclude_diagonal, HAS_ROW=has_row, HAS_COL=has_col, **cfg,
            )
            ds_total += ds_part.sum()
            if not fp32:
                # one rounding per row chunk (once when everything fits the scratch budget)
                db.mul_(k).add_(grad_b[c0:c1])
                grad_b[c0:c1].copy_(db)
                del db
        if fp32:
            da.mul_(k)
        else:
            grad_a[r0:r1].copy_(da.mul_(k))
            del da
    if fp32:
        grad_b.mul_(k)
    return grad_a, grad_b, (ds_total * gmax)


class _TritonLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, exclude_diagonal, need_cols, two_pass):  # type: ignore[override]
        a_c, b_c = a.detach().contiguous(), b.detach().contiguous()
        s = scale.detach().reshape(()).contiguous()
        if two_pass:
            row_lse, _ = _forward(a_c, b_c, s, exclude_diagonal, False)
            col_lse = _forward(b_c, a_c, s, exclude_diagonal, False)[0] if need_cols else None
        else:
            row_lse, col_lse = _forward(a_c, b_c, s, exclude_diagonal, need_cols)
        col_out = col_lse if need_cols else torch.empty(0, dtype=torch.float32, device=a.device)
        ctx.save_for_backward(a_c, b_c, s, row_lse, col_out)
        ctx.cfg = (exclude_diagonal, need_cols, scale.dtype)
        ctx.set_materialize_grads(False)
        return row_lse, col_out

    @staticmethod
    def backward(ctx, g_row, g_col):  # type: ignore[override]
        a, b, s, row_lse, col_lse = ctx.saved_tensors
        exclude_diagonal, need_cols, scale_dtype = ctx.cfg
        if not need_cols:
            g_col = None
        if g_row is None and g_col is None:
            return None, None, None, None, None, None
        grad_a, grad_b, grad_s = _backward(a, b, s, row_lse, col_lse, g_row, g_col, exclude_diagonal)
        return (
            grad_a if ctx.needs_input_grad[0] else None,
            grad_b if ctx.needs_input_grad[1] else None,
            grad_s.to(scale_dtype) if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
        )


def contrastive_lse_triton(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    exclude_diagonal: bool = False,
    need_cols: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Row and column log-sum-exp of :math:`L = s\,A B^\top` with fused Triton kernels.

    Same contract and gradients (A, B and the 0-dim ``scale``) as
    :func:`unimlip_kit.ops.tiled.contrastive_lse_tiled`; results are float32.
    One forward pass gives both directions; backward costs 6·M·N·D FLOPs.

    Example:
        >>> import os
        >>> a = torch.randn(5, 3); b = torch.randn(7, 3)
        >>> if a.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        ...     r, c = contrastive_lse_triton(a, b, torch.tensor(2.0))
        ...     ok = torch.allclose(r, torch.logsumexp(2 * a @ b.T, 1), atol=1e-4)
        ... else:
        ...     ok = True
        >>> ok
        True
    """
    _check(a, b)
    rows, cols = _TritonLSE.apply(a, b, scale, exclude_diagonal, need_cols, False)
    return rows, (cols if need_cols else None)


def contrastive_lse_two_pass(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    exclude_diagonal: bool = False,
    need_cols: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Benchmark baseline: a row-only forward pass over :math:`A B^\top` and a second over :math:`B A^\top`.

    This is the Inf-CL style two-pass layout (4·M·N·D forward FLOPs); backward is shared
    with :func:`contrastive_lse_triton`. Not registered as a backend.

    Example:
        >>> import os
        >>> a = torch.randn(4, 3); b = torch.randn(4, 3)
        >>> if os.environ.get("TRITON_INTERPRET") == "1":
        ...     r, c = contrastive_lse_two_pass(a, b, torch.tensor(1.0))
        ...     ok = torch.allclose(c, torch.logsumexp(a @ b.T, 0), atol=1e-4)
        ... else:
        ...     ok = True
        >>> ok
        True
    """
    _check(a, b)
    rows, cols = _TritonLSE.apply(a, b, scale, exclude_diagonal, need_cols, True)
    return rows, (cols if need_cols else None)


def flops(m: int, n: int, d: int, *, backward: bool = True) -> float:
    """FLOPs counted for the contrastive core: 2·M·N·D forward, 6·M·N·D backward.

    Example:
        >>> flops(2, 2, 2)
        64.0
    """
    return float(m) * n * d * (8 if backward else 2)

