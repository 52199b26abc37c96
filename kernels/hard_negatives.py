r"""Triton ALBEF hard-negative sampler: Gumbel-max over similarity tiles, both directions in one pass.

One program per ``BLOCK_M`` images walks every text tile once (2·N²·D FLOPs),
recomputing :math:`L = s\,X Y^\top` in registers. Noise is counter-based:
one Philox-4x32-10 block per pair, key = a seed drawn from the caller's
``generator``, counter :math:`(j, i, 0, 0)` in 32-bit words; output word 0 is
the image→text uniform and word 1 the text→image one, so the two directions
are independent and every draw is reproducible (and does not depend on N).
Rows keep a running (best value, index) in registers; columns merge theirs into global arrays
under a per-column-block spin lock (the same scheme as the InfoNCE forward).
Masked: the positive (:math:`i=j`), same-id pairs, padding. A row with no valid
candidate returns ``-1``.

Reference: :func:`sample_hard_negatives_reference` below
(= :func:`unimlip_kit.ops.hard_negatives.sample_hard_negatives_reference`, the
N×N softmax + multinomial); the pure-PyTorch O(N·D) twin is
:func:`unimlip_kit.ops.hard_negatives_tiled.sample_hard_negatives_tiled`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unimlip_kit.kernels.infonce import _blocks, _check, _tile_dot
from unimlip_kit.ops.hard_negatives import sample_hard_negatives_reference

__all__ = ["sample_hard_negatives_reference", "sample_hard_negatives_triton"]


@triton.jit
def _gumbel(r):
    """Gumbel(0, 1) from 32 random bits: -log(-log u), u uniform in [2^-126, 1 - 2^-24]."""
    u = tl.minimum(tl.maximum(tl.uint_to_uniform_float(r), 1.1754944e-38), 0.99999994)
    return -tl.log(-tl.log(u))


@triton.jit(do_not_specialize=["seed"])  # a random seed must not pick a specialisation (one compile, not two)
def _hard_negative_kernel(X, Y, SCALE, IDS, seed, ROW_IDX, COL_VAL, COL_IDX, LOCKS,
                          N, D, stride_x, stride_y,
                          HAS_IDS: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    s = tl.load(SCALE).to(tl.float32)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < N
    if HAS_IDS:
        id_r = tl.load(IDS + rows, mask=row_ok, other=0)
    best_v = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    best_j = tl.full([BLOCK_M], -1, dtype=tl.int64)
    n_blocks = tl.cdiv(N, BLOCK_N)
    for t in range(0, n_blocks):
        jb = (t + pid) % n_blocks
        cols = (jb * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < N
        logits = s * _tile_dot(X, Y, rows, cols, row_ok, col_ok, D, stride_x, stride_y,
                               IEEE, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D)
        valid = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        if HAS_IDS:
            id_c = tl.load(IDS + cols, mask=col_ok, other=0)
            valid = valid & (id_r[:, None] != id_c[None, :])
        # 32-bit Philox counters (64-bit ones would run Philox-4x64 and spill): word 0 rows, word 1 columns
        c_j = (cols.to(tl.uint32)[None, :] + tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.uint32))
        c_i = (rows.to(tl.uint32)[:, None] + tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.uint32))
        zero = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.uint32)
        r_row, r_col, _, _ = tl.philox(seed, c_j, c_i, zero, zero)
        # image -> text
        v = tl.where(valid, logits + _gumbel(r_row), float("-inf"))
        t_max = tl.max(v, 1)
        t_arg = tl.argmax(v, 1).to(tl.int64)
        take = t_max > best_v
        best_j = tl.where(take, jb * BLOCK_N + t_arg, best_j)
        best_v = tl.where(take, t_max, best_v)
        # text -> image (independent stream), merged across programs under the column-block lock
        v = tl.where(valid, logits + _gumbel(r_col), float("-inf"))
        c_max = tl.max(v, 0)
        c_arg = (pid * BLOCK_M + tl.argmax(v, 0)).to(tl.int64)
        lock = LOCKS + jb
        while tl.atomic_cas(lock, 0, 1) == 1:
            pass
        old = tl.load(COL_VAL + cols, mask=col_ok, other=float("-inf"), cache_modifier=".cg")
        take_c = (c_max > old) & col_ok
        tl.store(COL_VAL + cols, c_max, mask=take_c)
        tl.store(COL_IDX + cols, c_arg, mask=take_c)
        tl.debug_barrier()  # every thread's stores precede the one-thread release
        tl.atomic_xchg(lock, 0)
    tl.store(ROW_IDX + rows, best_j, mask=row_ok)


def _seed(generator: torch.Generator | None, device: torch.device) -> int:
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    if generator is None and device.type == "cuda":
        gen_dev = device  # the global CUDA generator, like torch.multinomial on CUDA tensors
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=gen_dev).item())


def sample_hard_negatives_triton(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    scale: torch.Tensor,
    ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""ALBEF hard negatives (:math:`P(j\mid i)\propto e^{s\,x_i\cdot y_j}` over valid :math:`j`) by a Triton kernel.

    Returns ``(text_for_image, image_for_text)``, LongTensors of shape (N,), ``-1`` where
    a row has no valid candidate. One seed is drawn from ``generator`` per call.

    Example:
        >>> import os
        >>> x = torch.eye(4)
        >>> if os.environ.get("TRITON_INTERPRET") == "1":
        ...     t4i, _ = sample_hard_negatives_triton(x, x, torch.tensor(1.0), generator=torch.Generator().manual_seed(0))
        ...     ok = bool((t4i != torch.arange(4)).all())
        ... else:
        ...     ok = True
        >>> ok
        True
    """
    _check(image_emb, text_emb)
    n, d = image_emb.shape
    dev = image_emb.device
    x = image_emb.detach().contiguous()
    y = text_emb.detach().contiguous()
    cfg = _blocks(x, d, "sampler")
    text_for_image = torch.full((n,), -1, dtype=torch.long, device=dev)
    col_val = torch.full((n,), float("-inf"), dtype=torch.float32, device=dev)
    image_for_text = torch.full((n,), -1, dtype=torch.long, device=dev)
    locks = torch.zeros(max(1, triton.cdiv(n, cfg["BLOCK_N"])), dtype=torch.int32, device=dev)
    seed = _seed(generator, dev)
    if n:
        ids_t = ids.to(device=dev, dtype=torch.long).contiguous() if ids is not None else text_for_image
        grid = (triton.cdiv(n, cfg["BLOCK_M"]),)
        _hard_negative_kernel[grid](
            x, y, scale.detach().reshape(()).contiguous(), ids_t, seed,
            text_for_image, col_val, image_for_text, locks, n, d, x.stride(0), y.stride(0),
            HAS_IDS=ids is not None, **cfg,
        )
    return text_for_image, image_for_text
