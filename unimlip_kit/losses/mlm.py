"""BERT token masking and the masked-language-modelling loss (Devlin et al. 2019, arXiv 1810.04805).

Uni-Mlip (like ALBEF) predicts masked caption tokens from the fusion encoder,
i.e. conditioned on the image: :func:`mask_tokens` corrupts the caption,
the fusion encoder's LM head gives logits, :func:`masked_language_modeling_loss`
scores only the selected positions.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from unimlip_kit.utils.checks import check_finite

__all__ = ["IGNORE_INDEX", "MaskedLanguageModelingLoss", "mask_tokens", "masked_language_modeling_loss"]

#: Label of positions that are not scored (PyTorch's ``cross_entropy`` default).
IGNORE_INDEX = -100


def _rand(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, device=device, generator=generator)


def _tokenizer_defaults(tokenizer: Any) -> tuple[int | None, int, set[int]]:
    """``(mask_token_id, vocab_size, special ids incl. [PAD])`` of a Hugging Face tokenizer."""
    specials = {int(i) for i in getattr(tokenizer, "all_special_ids", ()) if i is not None}
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        specials.add(int(pad))
    mask = getattr(tokenizer, "mask_token_id", None)
    return (None if mask is None else int(mask)), len(tokenizer), specials


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int | None = None,
    vocab_size: int | None = None,
    special_token_ids: Iterable[int] | None = None,
    attention_mask: torch.Tensor | None = None,
    special_tokens_mask: torch.Tensor | None = None,
    tokenizer: Any = None,
    prob: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    min_one_target: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""BERT's masking rule (Devlin et al. 2019), safe by default; returns ``(masked_ids, labels)``.

    1. Candidates are the tokens with ``attention_mask == 1`` (all tokens if
       ``None``), ``special_tokens_mask == 0`` (Hugging Face's convention: 1 marks
       [CLS], [SEP], [PAD], ...; ``tokenizer(..., return_special_tokens_mask=True)``)
       and an id outside ``special_token_ids`` and other than ``mask_token_id``.
       Which tokens are special must be stated: pass ``special_token_ids``,
       ``special_tokens_mask`` or ``tokenizer`` (whose ``all_special_ids`` and
       pad id are used, as ``DataCollatorForLanguageModeling`` does), or
       ``special_token_ids=()`` to allow every attended token. With none of
       them the call raises instead of masking [PAD], [CLS] and [SEP].
    2. Each candidate is selected independently with probability ``prob``
       (BERT's rate on every caption length, like Hugging Face's collator).
       ``min_one_target=True`` additionally gives a sequence that has
       candidates but no selection one candidate chosen uniformly (every
       non-empty caption then has a target, at the price of a higher rate on
       short captions).
    3. Of the selected tokens a fraction ``mask_replace_prob`` (0.8) becomes
       ``mask_token_id``, ``random_replace_prob`` (0.1) a random token drawn
       uniformly from ``[0, vocab_size)`` minus the special ids, the rest stay.

    ``tokenizer`` also supplies ``mask_token_id`` and ``vocab_size`` (``len(tokenizer)``)
    when they are not given. ``labels`` holds the original id at selected
    positions and ``IGNORE_INDEX`` (−100) elsewhere. Inputs are not modified.
    Random draws use ``generator`` (on ``input_ids``' device) — same generator
    state, same masks, whatever ``min_one_target`` is (the forced targets are
    the only difference). Shapes (B, L) or (L,).

    Example:
        >>> ids = torch.tensor([[101, 7, 8, 9, 102, 0]])
        >>> g = torch.Generator().manual_seed(0)
        >>> masked, labels = mask_tokens(ids, mask_token_id=103, vocab_size=200,
        ...     special_token_ids=(0, 101, 102), attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]]),
        ...     min_one_target=True, generator=g)
        >>> bool((labels[:, [0, 4, 5]] == -100).all()), int((labels != -100).sum()) >= 1
        (True, True)
        >>> bool(torch.equal(masked[labels == -100], ids[labels == -100]))
        True
        >>> mask_tokens(ids, mask_token_id=103, vocab_size=200)
        Traceback (most recent call last):
        ...
        ValueError: mask_tokens needs to know the special tokens, or it would mask [PAD], [CLS] and [SEP]: ...
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor, got {getattr(input_ids, 'dtype', type(input_ids).__name__)}")
    if input_ids.ndim not in (1, 2):
        raise ValueError(f"input_ids must be (B, L) or (L,), got shape {tuple(input_ids.shape)}")
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    mask_p, rand_p = float(mask_replace_prob), float(random_replace_prob)
    if not (0.0 <= mask_p <= 1.0 and 0.0 <= rand_p <= 1.0 and mask_p + rand_p <= 1.0 + 1e-12):
        raise ValueError(
            f"mask_replace_prob={mask_replace_prob} and random_replace_prob={random_replace_prob} must lie in [0, 1] "
            "and sum to at most 1"
        )
    specials_set: set[int] = set()
    if tokenizer is not None:
        tok_mask, tok_vocab, tok_specials = _tokenizer_defaults(tokenizer)
        mask_token_id = tok_mask if mask_token_id is None else mask_token_id
        vocab_size = tok_vocab if vocab_size is None else vocab_size
        specials_set |= tok_specials
    if mask_token_id is None or vocab_size is None:
        raise ValueError("mask_tokens needs mask_token_id and vocab_size (or tokenizer= with a [MASK] token)")
    vocab_size = int(vocab_size)
    specials_set |= {int(s) for s in (special_token_ids or ())}
    if special_tokens_mask is not None and tuple(special_tokens_mask.shape) == tuple(input_ids.shape):
        # the ids marked special in this batch are special ids too (never drawn as random replacements)
        specials_set |= {int(v) for v in input_ids[special_tokens_mask.to(input_ids.device).bool()].unique().tolist()}
    specials_set.add(int(mask_token_id))
    specials = sorted(specials_set)
    if vocab_size <= len([s for s in specials if 0 <= s < vocab_size]):
        raise ValueError(f"vocab_size={vocab_size} leaves no non-special token to draw random replacements from")
    if not 0 <= int(mask_token_id) < vocab_size:
        raise ValueError(f"mask_token_id={mask_token_id} must lie in [0, vocab_size={vocab_size})")
    for name, m in (("attention_mask", attention_mask), ("special_tokens_mask", special_tokens_mask)):
        if m is not None and tuple(m.shape) != tuple(input_ids.shape):
            raise ValueError(f"{name} must match input_ids {tuple(input_ids.shape)}, got {tuple(m.shape)}")
    if special_token_ids is None and special_tokens_mask is None and tokenizer is None:
        raise ValueError(
            "mask_tokens needs to know the special tokens, or it would mask [PAD], [CLS] and [SEP]: pass "
            "special_token_ids=tokenizer.all_special_ids, special_tokens_mask= (tokenizer(..., "
            "return_special_tokens_mask=True)) or tokenizer=; special_token_ids=() allows every attended token"
        )
    info = torch.iinfo(input_ids.dtype)
    if info.max < vocab_size - 1:
        raise ValueError(f"input_ids of dtype {input_ids.dtype} cannot hold ids up to vocab_size - 1 = {vocab_size - 1}")
    squeeze = input_ids.ndim == 1
    ids = input_ids.unsqueeze(0) if squeeze else input_ids
    dev = ids.device
    cand = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.reshape(ids.shape).to(dev).bool()
    if special_tokens_mask is not None:
        cand &= ~special_tokens_mask.reshape(ids.shape).to(dev).bool()
    cand &= ~torch.isin(ids, torch.tensor([v for v in specials if info.min <= v <= info.max], device=dev, dtype=ids.dtype))

    selected = (_rand(ids.shape, dev, generator) < float(prob)) & cand
    # Drawn in every case so the stream (and every other position) does not depend on the option.
    score = _rand(ids.shape, dev, generator).masked_fill(~cand, -1.0)
    if min_one_target and ids.shape[1] > 0:  # a uniform candidate where a non-empty sequence drew none
        needs = cand.any(dim=1) & ~selected.any(dim=1)
        selected |= F.one_hot(score.argmax(dim=1), ids.shape[1]).bool() & needs[:, None]

    u = _rand(ids.shape, dev, generator)
    to_mask = selected & (u < mask_p)
    to_random = selected & (u >= mask_p) & (u < mask_p + rand_p)
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=dev)
    in_range = [s for s in specials if 0 <= s < vocab_size]
    if in_range:
        allowed[torch.tensor(in_range, device=dev)] = False
    pool = allowed.nonzero().squeeze(1).to(ids.dtype)
    random_ids = pool[torch.randint(pool.numel(), ids.shape, device=dev, generator=generator)]

    masked = ids.clone()
    masked[to_mask] = int(mask_token_id)
    masked[to_random] = random_ids[to_random]
    # labels hold -100: unsigned ids (uint8 would wrap it to 156) get int64 labels
    labels = (ids if info.min <= IGNORE_INDEX else ids.long()).masked_fill(~selected, IGNORE_INDEX)
    if squeeze:
        return masked.squeeze(0), labels.squeeze(0)
    return masked, labels


def masked_language_modeling_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    r"""Cross-entropy over the selected positions only.

    .. math::
        \mathcal L_{mlm} = \frac{1}{|S|}\sum_{(b,l)\in S} -\log \mathrm{softmax}(z_{bl})_{y_{bl}},
        \qquad S = \{(b,l) : y_{bl} \ne -100\}

    ``logits`` (..., V) and ``labels`` (...) share their leading shape: pass
    the full (B, L, V) logits, or — to save memory with large vocabularies —
    only the rows at ``labels != -100`` with their labels. With no selected
    position the loss is 0 (and keeps the graph), never NaN. Computed in
    float32 or wider.

    Example:
        >>> logits = torch.randn(2, 3, 10); labels = torch.tensor([[4, -100, -100], [-100, 7, -100]])
        >>> ref = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
        >>> torch.allclose(masked_language_modeling_loss(logits, labels), ref)
        True
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.ndim < 2:
        raise ValueError(f"logits must be a floating (..., V) tensor, got {getattr(logits, 'shape', type(logits).__name__)}")
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(logits.shape[:-1])} (logits {tuple(logits.shape)} without V), "
            f"got {getattr(labels, 'shape', None)}"
        )
    if labels.is_floating_point():
        raise ValueError(f"labels must be integer token ids, got {labels.dtype}")
    v = logits.shape[-1]
    if v == 0:
        raise ValueError(f"logits have an empty vocabulary dimension: shape {tuple(logits.shape)}")
    flat_labels = labels.reshape(-1).long()
    keep = flat_labels != ignore_index
    if bool(((flat_labels[keep] < 0) | (flat_labels[keep] >= v)).any()):
        raise ValueError(f"labels hold ids outside [0, V={v}) at selected positions")
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    flat = logits.reshape(-1, v)
    if not bool(keep.any()):
        return flat.sum().to(acc) * 0.0
    scored = flat[keep]
    check_finite(scored.detach(), "logits at the selected positions")  # as the contrastive losses do
    return F.cross_entropy(scored.to(acc), flat_labels[keep])


class MaskedLanguageModelingLoss(nn.Module):
    """Module form of :func:`masked_language_modeling_loss`; called ``loss(logits, labels)``.

    Example:
        >>> MaskedLanguageModelingLoss()(torch.zeros(1, 2, 4), torch.tensor([[1, -100]])).item() == torch.log(torch.tensor(4.0)).item()
        True
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return masked_language_modeling_loss(logits, labels, ignore_index=self.ignore_index)
