r"""ALBEF hard-negative sampling without the N×N matrix: Gumbel-max over similarity tiles.

For logits :math:`L = s\,X Y^\top` and i.i.d. Gumbel noise :math:`g_{ij}`,
:math:`\arg\max_{j \in V_i} (L_{ij} + g_{ij})` is an exact draw from
:math:`\mathrm{softmax}_{j \in V_i}(L_{ij})` (the Gumbel-max trick; Gumbel 1954,
Maddison et al. 2014). A max is associative, so a running (best value, index)
per row and per column, updated tile by tile, gives the image→text and the
text→image draws in the same pass over :math:`L`, with independent noise for the
two directions. Memory: O(N·D + block_m·block_n); the tile is never kept.

:math:`V_i` excludes the positive (:math:`j = i`) and every :math:`j` with
``ids[j] == ids[i]``. A row whose :math:`V_i` is empty gets ``-1``.
"""

from __future__ import annotations

import torch

from unimlip_kit.ops.reference import accumulate_dtype

__all__ = ["DEFAULT_SAMPLER_TILE", "gumbel_like", "sample_hard_negatives_tiled"]

#: default (block_m × block_n) tile: 2^20 elements (4 MiB float32 per buffer)
DEFAULT_SAMPLER_TILE = 1 << 20


def gumbel_like(shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""Standard Gumbel noise :math:`-\log(-\log u)`, :math:`u \sim U(0, 1)` (clamped away from 0).

    Example:
        >>> g = gumbel_like((2000,), generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
        >>> abs(g.mean().item() - 0.5772) < 0.1  # Euler-Mascheroni constant
        True
    """
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return u.clamp_min_(torch.finfo(dtype).tiny).log_().neg_().log_().neg_()


def sample_hard_negatives_tiled(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    scale: torch.Tensor,
    ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One negative text per image and one negative image per text, drawn tile by tile.

    Same distribution as :func:`unimlip_kit.ops.hard_negatives.sample_hard_negatives_reference`
    (:math:`P(j\mid i) \propto e^{s\,x_i\cdot y_j}` over valid :math:`j`) but O(N·D) memory.
    The draws for a given ``generator`` state depend on the tile sizes. ``-1`` marks
    a row with no valid candidate.

    Example:
        >>> x = torch.eye(4)
        >>> t4i, i4t = sample_hard_negatives_tiled(x, x, torch.tensor(1.0), torch.tensor([0, 0, 1, 1]),
        ...                                        generator=torch.Generator().manual_seed(0), block_n=3)
        >>> bool(((t4i // 2) != torch.tensor([0, 0, 1, 1])).all())
        True
    """
    n = image_emb.shape[0]
    dev = image_emb.device
    acc = accumulate_dtype(image_emb.dtype)
    bm = max(1, min(n, block_m or 512))
    bn = max(1, min(n, block_n or max(1, DEFAULT_SAMPLER_TILE // bm)))
    text_for_image = torch.full((n,), -1, dtype=torch.long, device=dev)
    col_best = torch.full((n,), float("-inf"), dtype=acc, device=dev)
    image_for_text = torch.full((n,), -1, dtype=torch.long, device=dev)
    with torch.no_grad():
        s = scale.detach().to(acc)
        y = text_emb.detach().to(acc)
        ids_d = ids.to(dev) if ids is not None else None
        for i0 in range(0, n, bm):
            i1 = min(n, i0 + bm)
            x_s = image_emb[i0:i1].detach().to(acc) * s
            r_best = torch.full((i1 - i0,), float("-inf"), dtype=acc, device=dev)
            r_idx = text_for_image[i0:i1]
            for j0 in range(0, n, bn):
                j1 = min(n, j0 + bn)
                logits = x_s @ y[j0:j1].T
                logits.diagonal(i0 - j0).fill_(float("-inf"))  # the positive pair
                if ids_d is not None:
                    logits.masked_fill_(ids_d[i0:i1, None] == ids_d[None, j0:j1], float("-inf"))
                shape = tuple(logits.shape)
                # image -> text: a per-row running Gumbel-max
                val, arg = (logits + gumbel_like(shape, generator=generator, device=dev, dtype=acc)).max(dim=1)
                take = val > r_best
                r_best = torch.where(take, val, r_best)
                r_idx.copy_(torch.where(take, arg + j0, r_idx))
                # text -> image: independent noise, a per-column running Gumbel-max
                val, arg = (logits.add_(gumbel_like(shape, generator=generator, device=dev, dtype=acc))).max(dim=0)
                take = val > col_best[j0:j1]
                col_best[j0:j1] = torch.where(take, val, col_best[j0:j1])
                image_for_text[j0:j1] = torch.where(take, arg + i0, image_for_text[j0:j1])
    return text_for_image, image_for_text
