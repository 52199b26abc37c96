r"""Hard-negative sampling for image-text matching (ALBEF, Li et al. 2021, arXiv 2107.07651).

For each image one negative text and for each text one negative image, drawn
with probability :math:`\propto \exp(s\, x_i \cdot y_j)` over candidates that
are not the positive and do not share its id. A row with no valid candidate
(every other pair shares its id, or N = 1) gets index ``-1``; the ITM batch
builder drops such rows (:func:`unimlip_kit.ops.hard_negative_gather.gather_hard_negatives`
does it for you). Backends: ``"tiled"`` (Gumbel-max over similarity tiles, O(N·D) memory,
the automatic choice on CPU), ``"triton"`` (the same on CUDA in one fused kernel) and
``"reference"`` (the N×N softmax + multinomial, as ALBEF).
"""

from __future__ import annotations

import torch

from unimlip_kit.backends import resolve_backend
from unimlip_kit.utils.checks import as_scale_tensor, check_paired

__all__ = ["sample_hard_negatives", "sample_hard_negatives_reference", "valid_negative_mask"]


def valid_negative_mask(n: int, ids: torch.Tensor | None, device: torch.device | None = None) -> torch.Tensor:
    """(N, N) bool mask of allowed negatives: not the diagonal, not the same id.

    Example:
        >>> valid_negative_mask(3, torch.tensor([0, 0, 1])).int()
        tensor([[0, 0, 1],
                [0, 0, 1],
                [1, 1, 0]], dtype=torch.int32)
    """
    if ids is None:
        return ~torch.eye(n, dtype=torch.bool, device=device)
    ids = ids.to(device)
    return (ids[:, None] != ids[None, :]) & ~torch.eye(n, dtype=torch.bool, device=device)


def _sample_rows(logits: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    masked = logits.masked_fill(~valid, float("-inf"))
    has = valid.any(dim=1)
    probs = torch.softmax(masked[has], dim=1)
    out = torch.full((logits.shape[0],), -1, dtype=torch.long, device=logits.device)
    if probs.shape[0]:
        out[has] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return out


def sample_hard_negatives_reference(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    scale: torch.Tensor,
    ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF's sampler: the N×N softmax and ``torch.multinomial`` (O(N²) memory).

    Example:
        >>> x = torch.eye(3)
        >>> t4i, i4t = sample_hard_negatives_reference(x, x, torch.tensor(1.0), generator=torch.Generator().manual_seed(0))
        >>> bool((t4i != torch.arange(3)).all() and (i4t != torch.arange(3)).all())
        True
    """
    with torch.no_grad():
        acc = torch.float64 if image_emb.dtype == torch.float64 else torch.float32
        logits = scale.detach().to(acc) * (image_emb.detach().to(acc) @ text_emb.detach().to(acc).T)
        valid = valid_negative_mask(logits.shape[0], ids, logits.device)
        text_for_image = _sample_rows(logits, valid, generator)
        image_for_text = _sample_rows(logits.T, valid.T, generator)
    return text_for_image, image_for_text


def sample_hard_negatives(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: float | torch.Tensor,
    *,
    ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Draw one hard negative text per image and one hard negative image per text.

    :math:`P(j \mid i) \propto \exp(s\, x_i\cdot y_j)` over :math:`j \ne i` with
    ``ids[j] != ids[i]`` (ALBEF §3.2). Returns ``(text_for_image, image_for_text)``,
    two LongTensors of shape (N,); ``-1`` marks a row with no valid candidate
    (drop it from the ITM batch, or use :func:`gather_hard_negatives`, which does).
    No gradient flows (sampling only). ``backend``: ``None`` (``"triton"`` on CUDA,
    ``"tiled"`` otherwise — neither builds the N×N matrix), or one of
    ``"tiled"``, ``"triton"``, ``"reference"`` (ALBEF's N×N softmax + multinomial).
    Reproducible for a given ``generator`` state and backend (the draws differ between
    backends; the distribution does not).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> img, txt = torch.randn(8, 4), torch.randn(8, 4)
        >>> t4i, i4t = sample_hard_negatives(img, txt, 10.0, generator=g)
        >>> t4i.shape, bool((t4i != torch.arange(8)).all())
        (torch.Size([8]), True)
    """
    check_paired(image_emb, text_emb, ("image_emb", "text_emb"))
    n = image_emb.shape[0]
    if ids is not None:
        if not isinstance(ids, torch.Tensor) or ids.shape != (n,):
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids must be a tensor of shape ({n},) matching the batch, got {shape}")
    scale = as_scale_tensor(logit_scale, image_emb)
    _, impl = resolve_backend("hard_negatives", backend, image_emb.device, image_emb.dtype)
    return impl(image_emb, text_emb, scale, ids, generator)
