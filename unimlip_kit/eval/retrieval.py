r"""Image–text retrieval metrics (Recall@K, median and mean rank) computed tile by tile.

Scores are cosine similarities :math:`S_{ij} = \hat a_i \cdot \hat b_j` (or raw dot
products with ``normalize=False``) between image ``i`` and text ``j``. Each text
``j`` describes exactly one image ``g(j)`` (``text_to_image``); an image may have
several texts (COCO/Flickr style, 5 captions per image) or none.

Ranks (1-based), with **ties counting against the query**:

* text→image, query ``j``: :math:`r_j = 1 + \#\{i \ne g(j) : S_{ij} \ge S_{g(j)j}\}`
* image→text, query ``i`` with captions :math:`T(i) = \{j : g(j) = i\}` and best
  correct score :math:`c_i = \max_{j \in T(i)} S_{ij}`:
  :math:`r_i = 1 + \#\{j \notin T(i) : S_{ij} \ge c_i\}` — an image is retrieved at
  ``K`` if *any* of its captions is in the top ``K``. Images without a caption are
  not queries (``n_queries`` says how many were).

So a wrong candidate with exactly the correct score is ranked above the correct
one, and a collapsed model whose embeddings are all equal ranks every query last
(``R@1 = 0`` for ``N > 1``) instead of first. ``R@K = mean(r <= K)`` is a fraction
in [0, 1]; ``median_rank`` is the usual statistical median (mean of the two
middle ranks for an even count).

Memory: the ``N_img × N_txt`` matrix is never held. Both directions are counted
from the same ``chunk_size × chunk_size`` tiles of :math:`S` in one sweep; the
correct scores are read beforehand from exactly the same tiles (only those that
hold a correct pair: the block diagonal when captions are ordered by image), so
ties are decided on bitwise-identical numbers without a tolerance. Extra memory is
``O(chunk_size² + N_img + N_txt)``; the compute is that of one ``A @ Bᵀ``
plus the diagonal tiles.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from unimlip_kit.utils.checks import check_paired

__all__ = ["DEFAULT_CHUNK_SIZE", "meaning_level_metrics", "retrieval_metrics", "retrieval_ranks", "summarize_ranks"]

#: rows and columns of one similarity tile (2048² float32 = 16 MiB)
DEFAULT_CHUNK_SIZE = 2048


def _text_to_image(text_to_image: Sequence[int] | torch.Tensor | None, n_img: int, n_txt: int, device: torch.device) -> torch.Tensor:
    if text_to_image is None:
        if n_img != n_txt:
            raise ValueError(
                f"image_emb and text_emb have {n_img} and {n_txt} rows; pass text_to_image "
                "(the image index of every text) when they are not paired one to one"
            )
        return torch.arange(n_txt, device=device)
    g = torch.as_tensor(text_to_image, device=device)
    if g.dtype.is_floating_point or g.dtype == torch.bool:
        raise ValueError(f"text_to_image must hold integer image indices, got dtype {g.dtype}")
    g = g.long()
    if g.shape != (n_txt,):
        raise ValueError(f"text_to_image must have shape ({n_txt},) (one image per text), got {tuple(g.shape)}")
    if n_txt and (int(g.min()) < 0 or int(g.max()) >= n_img):
        raise ValueError(
            f"text_to_image values must lie in [0, {n_img}) (image_emb has {n_img} rows), "
            f"got range [{int(g.min())}, {int(g.max())}]"
        )
    return g


def retrieval_ranks(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    text_to_image: Sequence[int] | torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of the correct answer for every query (ties count against the query).

    Returns ``(i2t_ranks, t2i_ranks)``: long tensors of shape ``(N_img,)`` and
    ``(N_txt,)``; an image without any caption gets rank 0 (not a query). See the
    module docstring for the exact definition.

    Example:
        >>> img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # texts 1 and 2 describe image 1
        >>> retrieval_ranks(img, txt, text_to_image=[0, 1, 1])  # text 1 ties text 0 for image 0
        (tensor([2, 1]), tensor([1, 2, 1]))
    """
    check_paired(image_emb, text_emb, ("image_emb", "text_emb"), same_batch=False)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bs = int(chunk_size)
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    dev = image_emb.device
    g = _text_to_image(text_to_image, n_img, n_txt, dev)

    work = image_emb.dtype if image_emb.dtype in (torch.float32, torch.float64) else torch.float32
    a = image_emb.detach().to(work)
    b = text_emb.detach().to(work)
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)

    def tile(bi: int, bj: int) -> torch.Tensor:
        # the single place scores are computed: pass 1 and pass 2 see identical numbers
        return a[bi * bs : (bi + 1) * bs] @ b[bj * bs : (bj + 1) * bs].T

    # pass 1: the correct score S[g(j), j] of every text, read from the tiles that hold a correct pair
    t_correct = torch.empty(n_txt, dtype=work, device=dev)
    j_all = torch.arange(n_txt, device=dev)
    pair_block = (g // bs) * (n_txt // bs + 1) + j_all // bs
    for key in torch.unique(pair_block).tolist():
        bi, bj = divmod(int(key), n_txt // bs + 1)
        js = j_all[pair_block == key]
        s = tile(bi, bj)
        t_correct[js] = s[g[js] - bi * bs, js - bj * bs]
    i_correct = torch.full((n_img,), float("-inf"), dtype=work, device=dev)
    i_correct.scatter_reduce_(0, g, t_correct, reduce="amax")
    has_text = torch.bincount(g, minlength=n_img) > 0

    # pass 2: count candidates scoring >= the correct score, both directions from each tile. The correct
    # pairs are subtracted afterwards instead of masked per tile: text j's own image always ties with itself
    # (same tile, same bits), and image i's own captions that reach c_i are exactly those scoring c_i.
    i_count = torch.zeros(n_img, dtype=torch.long, device=dev)
    t_count = torch.zeros(n_txt, dtype=torch.long, device=dev)
    for bi in range((n_img + bs - 1) // bs):
        i0, i1 = bi * bs, min(n_img, (bi + 1) * bs)
        for bj in range((n_txt + bs - 1) // bs):
            j0, j1 = bj * bs, min(n_txt, (bj + 1) * bs)
            s = tile(bi, bj)
            i_count[i0:i1] += (s >= i_correct[i0:i1, None]).sum(1)
            t_count[j0:j1] += (s >= t_correct[None, j0:j1]).sum(0)
    own_at_best = torch.bincount(g, weights=(t_correct == i_correct[g]).double(), minlength=n_img).long()
    i_count -= own_at_best
    t_count -= 1
    i_rank = torch.where(has_text, i_count + 1, torch.zeros_like(i_count))
    return i_rank, t_count + 1


def summarize_ranks(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``R@K`` (fraction of ranks <= K), ``median_rank``, ``mean_rank`` and ``n_queries`` of 1-based ranks.

    Ranks <= 0 mark non-queries and are ignored.

    Example:
        >>> summarize_ranks(torch.tensor([1, 2, 3, 10]), ks=(1, 5))
        {'R@1': 0.25, 'R@5': 0.75, 'median_rank': 2.5, 'mean_rank': 4.0, 'n_queries': 4}
    """
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    r = ranks[ranks > 0].double()
    out: dict[str, float] = {}
    n = r.numel()
    for k in ks:
        out[f"R@{k}"] = float((r <= k).double().mean()) if n else float("nan")
    if n:
        srt = torch.sort(r).values
        out["median_rank"] = float((srt[(n - 1) // 2] + srt[n // 2]) / 2)
        out["mean_rank"] = float(r.mean())
    else:
        out["median_rank"] = out["mean_rank"] = float("nan")
    out["n_queries"] = n
    return out


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    ks: Sequence[int] = (1, 5, 10),
    text_to_image: Sequence[int] | torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    normalize: bool = True,
) -> dict[str, dict[str, float]]:
    """Image→text (``"i2t"``) and text→image (``"t2i"``) Recall@K and ranks, without the full matrix.

    ``text_to_image[j]`` is the image that text ``j`` describes (default: text ``j``
    describes image ``j``). An image counts as retrieved at ``K`` when any of its
    captions is among its top ``K`` texts; ties count against the query (see the
    module docstring). Each direction holds ``R@K`` for every ``K`` in ``ks``,
    ``median_rank``, ``mean_rank`` and ``n_queries``.

    Example:
        >>> img = torch.eye(3)
        >>> txt = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # texts 1, 2 swapped; zero scores tie
        >>> m = retrieval_metrics(img, txt, ks=(1, 2))
        >>> m["i2t"]["R@1"], m["t2i"]["R@2"], m["t2i"]["median_rank"]
        (0.3333333333333333, 0.3333333333333333, 3.0)
    """
    i_rank, t_rank = retrieval_ranks(
        image_emb, text_emb, text_to_image=text_to_image, chunk_size=chunk_size, normalize=normalize
    )
    return {"i2t": summarize_ranks(i_rank, ks), "t2i": summarize_ranks(t_rank, ks)}


def meaning_level_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    groups: Sequence[str] | Sequence[int],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Meaning-level R@1 both ways, and the ceiling of plain R@1, for paired embeddings with meaning ``groups``.

    Pair ``i`` (image ``i``, text ``i``) has meaning ``groups[i]``; pairs with one meaning are
    paraphrases (the synthetic benchmark's attribute signature). A query scores a meaning-level
    hit when its top-1 item (cosine similarity, ties to the lower index) has its partner's
    meaning: ``R@1_meaning = mean_i [g(argmax_j S_ij) = g(i)]``, ceiling 1.0. Plain R@1 cannot
    beat ``ceiling_R@1 = mean_i 1/|{j : g(j) = g(i)}|``: a perfect model still picks one of the
    ``|g|`` equivalent items at random. The N×N matrix is never held (row tiles of ``chunk_size``).

    Example:
        >>> img = torch.eye(4)
        >>> txt = torch.tensor([[0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])  # 0 and 1 swapped
        >>> m = meaning_level_metrics(img, txt, ["a", "a", "b", "c"])
        >>> m["i2t_R@1_meaning"], m["t2i_R@1_meaning"], m["ceiling_R@1"], m["distinct_meanings"]
        (1.0, 1.0, 0.75, 3)
    """
    check_paired(image_emb, text_emb, ("image_emb", "text_emb"))
    n = image_emb.shape[0]
    if len(groups) != n:
        raise ValueError(f"groups must have one entry per pair ({n}), got {len(groups)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    names = {g: k for k, g in enumerate(dict.fromkeys(groups))}
    gid = torch.tensor([names[g] for g in groups], device=image_emb.device)
    a, b = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)

    def top1(q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.cat([(q[i:i + chunk_size] @ items.T).argmax(dim=1) for i in range(0, n, chunk_size)])

    i2t = (gid[top1(a, b)] == gid).double().mean()
    t2i = (gid[top1(b, a)] == gid).double().mean()
    counts = torch.bincount(gid).double()
    return {"i2t_R@1_meaning": float(i2t), "t2i_R@1_meaning": float(t2i),
            "ceiling_R@1": float((1.0 / counts[gid]).mean()), "distinct_meanings": len(names)}
