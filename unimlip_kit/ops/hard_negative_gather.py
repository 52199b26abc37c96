"""Sample ALBEF hard negatives and gather the chosen rows for the ITM head in one call.

The sampler (any backend of ``sample_hard_negatives``) returns indices; the ITM
batch needs the negative rows themselves — the embeddings or hidden states, and
usually the text token ids and attention masks — for the anchors that have a
valid negative. :func:`gather_hard_negatives` draws and gathers in one call, so
the caller never builds an N×N matrix nor a second index pass of its own. Rows
with no valid candidate (index ``-1``: every other pair shares their id, or
N = 1) are dropped, and the anchor rows that remain are returned so the ITM
labels line up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from unimlip_kit.ops.hard_negatives import sample_hard_negatives

__all__ = ["HardNegatives", "gather_hard_negatives"]


@dataclass(frozen=True)
class HardNegatives:
    """Result of :func:`gather_hard_negatives`.

    Attributes:
        text_for_image: (N,) index of the negative text per image, ``-1`` if none.
        image_for_text: (N,) index of the negative image per text, ``-1`` if none.
        image_rows: (K1,) images that got a negative text (anchors of the image→text pairs).
        negative_texts: (K1, ...) rows of ``text_emb`` (and ``text_inputs``) chosen for those images.
        text_rows: (K2,) texts that got a negative image.
        negative_images: (K2, ...) rows of ``image_emb`` (and ``image_inputs``) chosen for those texts.
        negative_text_inputs: the ``text_inputs`` tensors gathered like ``negative_texts``.
        negative_image_inputs: the ``image_inputs`` tensors gathered like ``negative_images``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> emb = torch.randn(3, 4, generator=g)
        >>> hn = gather_hard_negatives(emb, emb, 5.0, ids=torch.tensor([0, 0, 1]), generator=g)
        >>> hn.text_for_image[:2].tolist(), hn.image_rows.tolist()  # rows 0 and 1 share an id: only text 2 is a negative
        ([2, 2], [0, 1, 2])
        >>> hn.negative_texts.shape, torch.equal(hn.negative_texts[0], emb[2])
        (torch.Size([3, 4]), True)
        >>> gather_hard_negatives(emb[:1], emb[:1], 5.0).image_rows.numel()  # N = 1: no candidate, index -1
        0
    """

    text_for_image: torch.Tensor
    image_for_text: torch.Tensor
    image_rows: torch.Tensor
    negative_texts: torch.Tensor
    text_rows: torch.Tensor
    negative_images: torch.Tensor
    negative_text_inputs: tuple[torch.Tensor, ...] = ()
    negative_image_inputs: tuple[torch.Tensor, ...] = ()


def _gather(index: torch.Tensor, rows: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    chosen = index[rows]
    return [t.index_select(0, chosen.to(t.device)) for t in tensors]


def gather_hard_negatives(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: float | torch.Tensor,
    *,
    ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
    image_inputs: Sequence[torch.Tensor] = (),
    text_inputs: Sequence[torch.Tensor] = (),
) -> HardNegatives:
    r"""Draw ALBEF hard negatives (see :func:`sample_hard_negatives`) and gather the chosen rows.

    For image :math:`i` with negative text :math:`t_i \ne -1`, ``negative_texts`` holds
    ``text_emb[t_i]`` (and each of ``text_inputs`` its row :math:`t_i`, e.g. token ids and
    attention masks); symmetrically for texts. Anchors without a valid candidate are left
    out; ``image_rows``/``text_rows`` say which anchors remain. Gathered rows keep their
    autograd graph (``index_select``), so the ITM loss trains the encoders through them.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> img, txt = torch.randn(4, 8), torch.randn(4, 8)
        >>> tokens = torch.arange(4)[:, None].repeat(1, 5)  # (N, seq_len)
        >>> hn = gather_hard_negatives(img, txt, 5.0, ids=torch.tensor([0, 0, 1, 2]), generator=g, text_inputs=[tokens])
        >>> hn.negative_texts.shape, hn.negative_text_inputs[0].shape
        (torch.Size([4, 8]), torch.Size([4, 5]))
        >>> bool((hn.negative_text_inputs[0][:, 0] == hn.text_for_image[hn.image_rows]).all())
        True
    """
    for name, group in (("image_inputs", image_inputs), ("text_inputs", text_inputs)):
        for k, t in enumerate(group):
            if not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] != image_emb.shape[0]:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name}[{k}] must be a tensor with {image_emb.shape[0]} rows, got {shape}")
    t4i, i4t = sample_hard_negatives(image_emb, text_emb, logit_scale, ids=ids, generator=generator, backend=backend)
    image_rows = torch.nonzero(t4i >= 0).squeeze(1)
    text_rows = torch.nonzero(i4t >= 0).squeeze(1)
    neg_text, *neg_text_inputs = _gather(t4i, image_rows, [text_emb, *text_inputs])
    neg_image, *neg_image_inputs = _gather(i4t, text_rows, [image_emb, *image_inputs])
    return HardNegatives(
        text_for_image=t4i,
        image_for_text=i4t,
        image_rows=image_rows,
        negative_texts=neg_text,
        text_rows=text_rows,
        negative_images=neg_image,
        negative_text_inputs=tuple(neg_text_inputs),
        negative_image_inputs=tuple(neg_image_inputs),
    )
