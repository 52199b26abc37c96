r"""Pure-PyTorch tiled contrastive log-sum-exp with recompute in backward.

Forward walks the logit matrix :math:`L = s\,A B^\top` in (block_m × block_n)
tiles and keeps online log-sum-exp statistics (running maximum and rescaled
sum) for the rows *and* the columns in the same pass, so the M×N matrix is
never held: extra memory is O((M + N)·D + block_m·block_n).

Backward recomputes each tile and forms
:math:`G_{ij} = g^r_i e^{L_{ij}-\mathrm{row}_i} + g^c_j e^{L_{ij}-\mathrm{col}_j}`,
then :math:`\partial A = s\,G B`, :math:`\partial B = s\,G^\top A` and
:math:`\partial s = \sum_{ij} G_{ij}\, a_i\cdot b_j = \sum_i a_i \cdot (G B)_i`.
FLOPs: 2·M·N·D forward, 6·M·N·D backward. Per-row and per-column maxima keep
it stable at logit scale 100 where a single tile maximum would underflow.
Half-precision inputs are computed in float32 tiles.
"""

from __future__ import annotations

import torch

from unimlip_kit.ops.reference import accumulate_dtype

__all__ = ["DEFAULT_BLOCK_M", "DEFAULT_TILE_ELEMENTS", "contrastive_lse_tiled", "contrastive_lse_tiled_with_positives"]

DEFAULT_BLOCK_M = 1024
#: elements per (block_m × block_n) tile buffer (1 Mi float32 = 4 MiB; fastest in CPU sweeps at 2 threads)
DEFAULT_TILE_ELEMENTS = 1 << 20


def _blocks(m: int, n: int, block_m: int | None, block_n: int | None) -> tuple[int, int]:
    bm = max(1, min(m, block_m or DEFAULT_BLOCK_M))
    bn = max(1, min(n, block_n or max(1, DEFAULT_TILE_ELEMENTS // bm)))
    return bm, bn


def _finite_floor(m: torch.Tensor) -> torch.Tensor:
    # an all -inf running max (fully masked so far) must not produce -inf - -inf = nan
    return m.clamp_min(torch.finfo(m.dtype).min)


class _TiledLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, exclude_diagonal, need_cols, block_m, block_n, positive_offset):  # type: ignore[override]
        acc = accumulate_dtype(a.dtype)
        m, n = a.shape[0], b.shape[0]
        bm, bn = _blocks(m, n, block_m, block_n)
        s = scale.detach().to(acc)
        b_acc = b.detach().to(acc)
        dev = a.device
        row_lse = torch.empty(m, dtype=acc, device=dev)
        col_max = torch.full((n,), float("-inf"), dtype=acc, device=dev) if need_cols else None
        col_sum = torch.zeros(n, dtype=acc, device=dev) if need_cols else None
        tile = torch.empty(bm, bn, dtype=acc, device=dev)
        work = torch.empty(bm, bn, dtype=acc, device=dev)
        # the positive logits L[i, (i + k) mod N], read from the same tiles as the LSEs (bit-consistent with them)
        pos = torch.empty(m if positive_offset is not None else 0, dtype=acc, device=dev)
        with torch.no_grad():
            for i0 in range(0, m, bm):
                i1 = min(m, i0 + bm)
                a_s = a[i0:i1].detach().to(acc) * s
                r_max = torch.full((i1 - i0,), float("-inf"), dtype=acc, device=dev)
                r_sum = torch.zeros(i1 - i0, dtype=acc, device=dev)
                for j0 in range(0, n, bn):
                    j1 = min(n, j0 + bn)
                    L = tile[: i1 - i0, : j1 - j0]
                    E = work[: i1 - i0, : j1 - j0]
                    torch.mm(a_s, b_acc[j0:j1].T, out=L)
                    if positive_offset is not None:
                        for diag, r0 in positive_diagonals(L, i0, j0, positive_offset, n):
                            pos[r0 : r0 + diag.numel()] = diag
                    if exclude_diagonal:
                        L.diagonal(i0 - j0).fill_(float("-inf"))
                    # rows: online log-sum-exp across column tiles
                    new_max = _finite_floor(torch.maximum(r_max, L.amax(dim=1)))
                    torch.sub(L, new_max[:, None], out=E)
                    r_sum.mul_(torch.exp(r_max - new_max)).add_(E.exp_().sum(dim=1))
                    r_max = new_max
                    if need_cols:
                        c_old = col_max[j0:j1]
                        c_new = _finite_floor(torch.maximum(c_old, L.amax(dim=0)))
                        torch.sub(L, c_new[None, :], out=E)
                        col_sum[j0:j1].mul_(torch.exp(c_old - c_new)).add_(E.exp_().sum(dim=0))
                        col_max[j0:j1] = c_new
                row_lse[i0:i1] = r_max + torch.log(r_sum)
            col_lse = col_max + torch.log(col_sum) if need_cols else torch.empty(0, dtype=acc, device=dev)
        ctx.save_for_backward(a, b, scale, row_lse, col_lse)
        ctx.cfg = (exclude_diagonal, need_cols, bm, bn, positive_offset)
        ctx.set_materialize_grads(False)
        return row_lse, col_lse, pos

    @staticmethod
    def backward(ctx, g_row, g_col, g_pos):  # type: ignore[override]
        a, b, scale, row_lse, col_lse = ctx.saved_tensors
        exclude_diagonal, need_cols, bm, bn, offset = ctx.cfg
        if offset is None:
            g_pos = None
        if g_row is None and (g_col is None or not need_cols) and g_pos is None:
            return (None,) * 8
        acc = row_lse.dtype
        m, n = a.shape[0], b.shape[0]
        dev = a.device
        s = scale.detach().to(acc)
        a_acc = a.detach().to(acc)
        b_acc = b.detach().to(acc)
        use_cols = need_cols and g_col is not None
        g_a = torch.zeros(m, a.shape[1], dtype=acc, device=dev)  # G @ B (unscaled)
        g_b = torch.zeros(n, b.shape[1], dtype=acc, device=dev)  # G^T @ A (unscaled)
        tile = torch.empty(bm, bn, dtype=acc, device=dev)
        work = torch.empty(bm, bn, dtype=acc, device=dev)
        g_row = g_row.to(acc) if g_row is not None else None
        g_col = g_col.to(acc) if use_cols else None
        g_pos = g_pos.to(acc) if g_pos is not None else None
        for i0 in range(0, m, bm):
            i1 = min(m, i0 + bm)
            a_blk = a_acc[i0:i1]
            a_s = a_blk * s
            for j0 in range(0, n, bn):
                j1 = min(n, j0 + bn)
                L = tile[: i1 - i0, : j1 - j0]
                G = work[: i1 - i0, : j1 - j0]
                torch.mm(a_s, b_acc[j0:j1].T, out=L)
                if exclude_diagonal:
                    L.diagonal(i0 - j0).fill_(float("-inf"))
                if g_row is not None:
                    torch.sub(L, row_lse[i0:i1, None], out=G).exp_().mul_(g_row[i0:i1, None])
                    if use_cols:
                        G.add_(L.sub_(col_lse[None, j0:j1]).exp_().mul_(g_col[None, j0:j1]))
                elif use_cols:
                    torch.sub(L, col_lse[None, j0:j1], out=G).exp_().mul_(g_col[None, j0:j1])
                else:
                    G.zero_()
                if g_pos is not None:
                    # dL[i, p(i)] / d(pos_i) = 1: add g_pos on the (wrapped) shifted diagonal of this tile
                    for diag, r0 in positive_diagonals(G, i0, j0, offset, n):
                        diag.add_(g_pos[r0 : r0 + diag.numel()])
                g_a[i0:i1].addmm_(G, b_acc[j0:j1])
                g_b[j0:j1].addmm_(G.T, a_blk)
        grad_scale = torch.vdot(g_a.flatten(), a_acc.flatten()).to(scale.dtype) if ctx.needs_input_grad[2] else None
        grad_a = g_a.mul_(s).to(a.dtype) if ctx.needs_input_grad[0] else None
        grad_b = g_b.mul_(s).to(b.dtype) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, grad_scale, None, None, None, None, None


def positive_diagonals(tile: torch.Tensor, i0: int, j0: int, offset: int, n: int) -> list[tuple[torch.Tensor, int]]:
    """The entries of ``tile`` (rows from ``i0``, columns from ``j0`` of an M×N matrix) at ``(i, (i + offset) mod N)``.

    Returns ``(diagonal view, first global row)`` pairs: the shifted diagonal and its
    wrapped continuation (needs M ≤ N and 0 ≤ offset < N, so a row wraps at most once).
    Writing into a view writes into ``tile``.

    Example:
        >>> t = torch.zeros(2, 3)
        >>> for diag, r0 in positive_diagonals(t, 2, 0, 1, 4):  # rows 2-3, columns 0-2 of a 4×4
        ...     _ = diag.fill_(1)
        >>> t.tolist()  # row 2 -> column 3 (not in this tile), row 3 -> column 0
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    """
    out = []
    for d in (i0 + offset - j0, i0 + offset - n - j0):
        diag = tile.diagonal(d)
        if diag.numel():
            out.append((diag, i0 + max(0, -d)))
    return out


def positive_rows(b: torch.Tensor, m: int, offset: int) -> torch.Tensor:
    """Rows ``b[(i + offset) % N]`` for ``i < m``: a view when they do not wrap, else one concatenation.

    Example:
        >>> positive_rows(torch.arange(4)[:, None], 3, 2).flatten().tolist()
        [2, 3, 0]
    """
    n = b.shape[0]
    if offset + m <= n:
        return b[offset : offset + m]
    return torch.cat([b[offset:], b[: m - (n - offset)]], dim=0)


def contrastive_lse_tiled(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    exclude_diagonal: bool = False,
    need_cols: bool = True,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Row and column log-sum-exp of :math:`L = s\,A B^\top` without materialising :math:`L`.

    Same contract as :func:`unimlip_kit.ops.reference.contrastive_lse_reference`;
    ``block_m``/``block_n`` set the tile (defaults: 1024 × 1024).

    Example:
        >>> a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
        >>> s = torch.tensor(2.0, dtype=torch.float64)
        >>> r, c = contrastive_lse_tiled(a, b, s, block_m=2, block_n=3)
        >>> torch.allclose(r, torch.logsumexp(s * a @ b.T, 1)) and torch.allclose(c, torch.logsumexp(s * a @ b.T, 0))
        True
    """
    rows, cols, _ = _TiledLSE.apply(a, b, scale, exclude_diagonal, need_cols, block_m, block_n, None)
    return rows, (cols if need_cols else None)


def contrastive_lse_tiled_with_positives(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    exclude_diagonal: bool,
    need_cols: bool,
    positive_offset: int,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    r""":func:`contrastive_lse_tiled` plus the positive logits :math:`L_{i,(i+k) mod N}`.

    Their gradient is added on the shifted diagonal of each recomputed tile in
    backward, so the InfoNCE loss needs no extra N×D gradient buffers.

    Example:
        >>> a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
        >>> s = torch.tensor(2.0, dtype=torch.float64)
        >>> _, _, pos = contrastive_lse_tiled_with_positives(a, b, s, False, True, 1)
        >>> torch.allclose(pos, (s * a @ b.T)[torch.arange(4), (torch.arange(4) + 1) % 4])
        True
    """
    rows, cols, pos = _TiledLSE.apply(a, b, scale, exclude_diagonal, need_cols, block_m, block_n, positive_offset)
    return rows, (cols if need_cols else None), pos
