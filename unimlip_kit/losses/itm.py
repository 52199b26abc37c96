"""Image-text matching with hard negatives (ALBEF, Li et al. 2021, arXiv 2107.07651), Uni-Mlip's fused term.

Data flow: contrastive embeddings → :func:`sample_hard_negatives` (one hard
negative text per image, one hard negative image per text) →
:func:`build_itm_pairs` (gathers the fusion encoder's inputs for the N
positive and ≤ 2N negative pairs, with labels) → the fusion encoder's 2-way
head → :func:`image_text_matching_loss`. Everything is tensors in, tensors
out, so any fusion model can use it. (To gather only the negative rows, without
the positive block and labels, use :func:`unimlip_kit.ops.gather_hard_negatives`.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from unimlip_kit.ops.hard_negatives import sample_hard_negatives
from unimlip_kit.utils.checks import check_finite

__all__ = ["ITMPairs", "ImageTextMatchingLoss", "build_itm_pairs", "image_text_matching_loss", "sample_itm_pairs"]


class ITMPairs(NamedTuple):
    """The fusion encoder's inputs for the ITM batch (positives first, then negatives).

    Attributes:
        image: ``image[image_index]``, shape (M, ...), gradient flows back to the source rows.
        text_ids: ``text_ids[text_index]``, shape (M, L).
        text_mask: ``text_mask[text_index]`` or ``None`` when no mask was given.
        labels: (M,) long, 1 for the N positives, 0 for the negatives.
        image_index: (M,) long, the source row of each pair's image.
        text_index: (M,) long, the source row of each pair's text (gather any other per-text input with it).

    Example:
        >>> ids = torch.tensor([[1, 2], [3, 4]])
        >>> pairs = build_itm_pairs(torch.randn(2, 4), ids, None, torch.tensor([1, -1]), torch.tensor([-1, 0]))
        >>> pairs.labels.tolist(), pairs.image_index.tolist(), pairs.text_index.tolist()
        ([1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1])
        >>> pairs.text_ids.tolist(), pairs.text_mask is None
        ([[1, 2], [3, 4], [3, 4], [3, 4]], True)
    """

    image: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor | None
    labels: torch.Tensor
    image_index: torch.Tensor
    text_index: torch.Tensor


def _check_index(idx: torch.Tensor, name: str, n: int) -> torch.Tensor:
    if not isinstance(idx, torch.Tensor) or idx.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"{name} must be an integer tensor of shape ({n},), got {getattr(idx, 'dtype', type(idx).__name__)}")
    if idx.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) matching the batch, got {tuple(idx.shape)}")
    idx = idx.long()
    if bool(((idx < -1) | (idx >= n)).any()):
        raise ValueError(f"{name} holds indices outside [-1, {n}): min {int(idx.min())}, max {int(idx.max())}")
    return idx


def build_itm_pairs(
    image: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor | None,
    text_for_image: torch.Tensor,
    image_for_text: torch.Tensor,
) -> ITMPairs:
    r"""Assemble ALBEF's ITM batch from hard-negative indices.

    Pairs, in order: the N positives :math:`(i, i)`; then
    :math:`(i, t(i))` for every image with a negative text; then
    :math:`(v(j), j)` for every text with a negative image. Rows whose index is
    ``-1`` (no valid candidate, see :func:`sample_hard_negatives`) are dropped,
    so M = N + (#valid ``text_for_image``) + (#valid ``image_for_text``) ≤ 3N.
    ``image`` is whatever the fusion encoder consumes per image (patch tokens
    (N, P, D), a pooled embedding (N, D), pixels...).

    Example:
        >>> img, ids = torch.randn(3, 5, 8), torch.arange(12).view(3, 4)
        >>> pairs = build_itm_pairs(img, ids, None, torch.tensor([1, -1, 0]), torch.tensor([2, 0, 1]))
        >>> pairs.labels.tolist(), pairs.image_index.tolist(), pairs.text_index.tolist()
        ([1, 1, 1, 0, 0, 0, 0, 0], [0, 1, 2, 0, 2, 2, 0, 1], [0, 1, 2, 1, 0, 0, 1, 2])
        >>> pairs.image.shape, pairs.text_ids.shape
        (torch.Size([8, 5, 8]), torch.Size([8, 4]))
    """
    if not isinstance(image, torch.Tensor) or image.ndim < 1 or image.shape[0] == 0:
        raise ValueError(f"image must be a non-empty (N, ...) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    n = image.shape[0]
    if not isinstance(text_ids, torch.Tensor) or text_ids.ndim != 2 or text_ids.shape[0] != n:
        raise ValueError(f"text_ids must be (N, L) with N={n} (image shape {tuple(image.shape)}), got {getattr(text_ids, 'shape', None)}")
    if text_mask is not None and text_mask.shape != text_ids.shape:
        raise ValueError(f"text_mask must match text_ids {tuple(text_ids.shape)}, got {tuple(text_mask.shape)}")
    dev = image.device
    t4i = _check_index(text_for_image, "text_for_image", n).to(dev)
    i4t = _check_index(image_for_text, "image_for_text", n).to(dev)
    ar = torch.arange(n, device=dev)
    img_has, txt_has = t4i >= 0, i4t >= 0
    image_index = torch.cat([ar, ar[img_has], i4t[txt_has]])
    text_index = torch.cat([ar, t4i[img_has], ar[txt_has]])
    labels = torch.zeros(image_index.shape[0], dtype=torch.long, device=dev)
    labels[:n] = 1
    t_idx = text_index.to(text_ids.device)
    return ITMPairs(
        image=image[image_index],
        text_ids=text_ids[t_idx],
        text_mask=None if text_mask is None else text_mask[text_index.to(text_mask.device)],
        labels=labels,
        image_index=image_index,
        text_index=text_index,
    )


def sample_itm_pairs(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: float | torch.Tensor,
    image: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    *,
    ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> ITMPairs:
    """:func:`sample_hard_negatives` on the contrastive embeddings, then :func:`build_itm_pairs`.

    ``ids`` (N,) marks rows that must not be each other's negatives (e.g. the
    same study); ``backend`` chooses the sampler (see :mod:`unimlip_kit.backends`).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
        >>> pairs = sample_itm_pairs(emb, emb, 10.0, torch.randn(4, 6, 8), torch.ones(4, 5, dtype=torch.long), generator=g)
        >>> pairs.labels.shape, int(pairs.labels.sum())
        (torch.Size([12]), 4)
    """
    t4i, i4t = sample_hard_negatives(image_emb, text_emb, logit_scale, ids=ids, generator=generator, backend=backend)
    return build_itm_pairs(image, text_ids, text_mask, t4i, i4t)


def image_text_matching_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Binary matching cross-entropy averaged over all M pairs (ALBEF's :math:`\mathcal L_{itm}`).

    .. math::
        \mathcal L_{itm} = \frac1M\sum_{k=1}^{M} -\log p_{y_k}(I_k, T_k),
        \qquad p = \mathrm{softmax}(\text{2-way logits})

    ``logits`` is (M, 2) (column 1 = "match"), or (M,) / (M, 1) single match
    logits (then :math:`p_1 = \sigma(\text{logit})`, the same loss);
    ``labels`` (M,) in {0, 1} — 1 for the N positives, 0 for the ≤ 2N hard
    negatives built by :func:`build_itm_pairs`. Computed in float32 or wider.

    Example:
        >>> logits, labels = torch.randn(6, 2), torch.tensor([1, 1, 0, 0, 0, 0])
        >>> torch.allclose(image_text_matching_loss(logits, labels), torch.nn.functional.cross_entropy(logits, labels))
        True
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating tensor, got {getattr(logits, 'dtype', type(logits).__name__)}")
    single = logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1)
    if not (single or (logits.ndim == 2 and logits.shape[1] == 2)):
        raise ValueError(f"logits must be (M, 2) or (M,) match logits, got shape {tuple(logits.shape)}")
    m = logits.shape[0]
    if m == 0:
        raise ValueError("logits is an empty batch (M = 0)")
    if not isinstance(labels, torch.Tensor) or labels.shape != (m,):
        raise ValueError(f"labels must have shape ({m},) matching logits {tuple(logits.shape)}, got {getattr(labels, 'shape', None)}")
    if labels.is_floating_point() or bool(((labels != 0) & (labels != 1)).any()):
        raise ValueError("labels must be integer 0 (no match) or 1 (match)")
    check_finite(logits.detach(), "logits")  # NaN/inf would make the loss NaN; the contrastive losses reject it too
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(acc)
    if single:
        return F.binary_cross_entropy_with_logits(x.reshape(m), labels.to(acc))
    return F.cross_entropy(x, labels.long())


class ImageTextMatchingLoss(nn.Module):
    """Module form of :func:`image_text_matching_loss`; called ``loss(logits, labels)``.

    Example:
        >>> ImageTextMatchingLoss()(torch.zeros(3, 2), torch.tensor([1, 0, 0])).item() == torch.log(torch.tensor(2.0)).item()
        True
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return image_text_matching_loss(logits, labels)
