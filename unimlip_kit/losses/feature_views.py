r"""Feature-level views for self-supervision: random token keeping (FLIP) and dropout views (SimCSE).

* :func:`random_token_keep` keeps a random subset of patch or text tokens per
  sample and returns their indices, so the encoder runs on fewer tokens
  (FLIP, Li et al. 2023, arXiv 2212.00794: masking 50–75% of patches speeds
  CLIP training 2–4×; MAE's per-sample random shuffle, He et al. 2022).
* :func:`dropout_views` runs an encoder once on the batch repeated ``n_views``
  times, so dropout draws an independent mask per copy (unsupervised SimCSE,
  Gao et al. 2021, arXiv 2104.08821); :func:`feature_dropout` is a seedable
  dropout for making views of already-computed features.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import nn

__all__ = ["KeptTokens", "dropout_views", "feature_dropout", "gather_tokens", "random_token_keep"]


class KeptTokens(NamedTuple):
    """Result of :func:`random_token_keep`.

    Attributes:
        tokens: (B, K, ...) the kept tokens, in their original order.
        index: (B, K) long, their positions in the input (gather positional embeddings with it).
        mask: (B, K) bool, False on padding slots of samples that keep fewer than K tokens.

    Example:
        >>> ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])  # 3 and 2 real tokens, 0 = padding
        >>> kept = random_token_keep(ids, 0.7, attention_mask=ids > 0, generator=torch.Generator().manual_seed(0))
        >>> kept.tokens.shape, kept.mask.tolist(), kept.index[1, 1].item()  # keeps 2 and 1 tokens
        (torch.Size([2, 2]), [[True, True], [True, False]], 0)
        >>> bool((kept.tokens[kept.mask] > 0).all()), torch.equal(kept.tokens, gather_tokens(ids, kept.index))
        (True, True)
    """

    tokens: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[b, k] = tokens[b, index[b, k]]`` for tokens (B, T, ...) and index (B, K); differentiable.

    Example:
        >>> x = torch.arange(12.).view(2, 3, 2)
        >>> gather_tokens(x, torch.tensor([[2], [0]])).tolist()
        [[[4.0, 5.0]], [[6.0, 7.0]]]
    """
    if tokens.ndim < 2 or index.ndim != 2 or index.shape[0] != tokens.shape[0]:
        raise ValueError(f"need tokens (B, T, ...) and index (B, K) with the same B, got {tuple(tokens.shape)} and {tuple(index.shape)}")
    idx = index.to(tokens.device).long().reshape(index.shape + (1,) * (tokens.ndim - 2))
    return torch.gather(tokens, 1, idx.expand(index.shape + tokens.shape[2:]))


def random_token_keep(
    tokens: torch.Tensor,
    keep_ratio: float,
    *,
    attention_mask: torch.Tensor | None = None,
    keep_first: bool = False,
    generator: torch.Generator | None = None,
) -> KeptTokens:
    r"""Keep a uniformly random subset of each sample's tokens (FLIP-style token dropping).

    For sample b with :math:`n_b` valid tokens (``attention_mask`` ones, or all
    T), :math:`k_b = \max(1, \lfloor r\, n_b \rfloor)` of them are kept,
    chosen uniformly without replacement and returned in their original order.
    With ``keep_first`` the first token ([CLS]) is always kept and the ratio
    applies to the others. Output length is :math:`K = \max_b k_b`; shorter
    samples are padded (index 0, ``mask`` False). ``tokens`` may be (B, T, D)
    features or (B, T) ids. ``keep_ratio=1`` returns every valid token in order.

    Example:
        >>> x = torch.randn(2, 9, 4)
        >>> kept = random_token_keep(x, 0.5, keep_first=True, generator=torch.Generator().manual_seed(0))
        >>> kept.tokens.shape, kept.index[:, 0].tolist(), bool(kept.mask.all())
        (torch.Size([2, 5, 4]), [0, 0], True)
        >>> torch.equal(kept.tokens, gather_tokens(x, kept.index))
        True
    """
    if not isinstance(tokens, torch.Tensor) or tokens.ndim < 2:
        raise ValueError(f"tokens must be a (B, T, ...) tensor, got {getattr(tokens, 'shape', type(tokens).__name__)}")
    r = float(keep_ratio)
    if not 0.0 < r <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    b, t = tokens.shape[:2]
    dev = tokens.device
    if attention_mask is None:
        valid = torch.ones(b, t, dtype=torch.bool, device=dev)
    else:
        if attention_mask.shape != (b, t):
            raise ValueError(f"attention_mask must be (B, T) = {(b, t)}, got {tuple(attention_mask.shape)}")
        valid = attention_mask.to(dev).bool()
    first = valid[:, 0] if keep_first else torch.zeros(b, dtype=torch.bool, device=dev)
    n_rest = valid.sum(dim=1) - first.long()
    k_rest = torch.floor(n_rest.double() * r + 1e-9).long().clamp(min=1)
    k_rest = torch.minimum(k_rest, n_rest)
    k = k_rest + first.long()
    # Random scores: first token sorts first, invalid tokens last, the rest uniformly.
    score = torch.rand(b, t, device=dev, generator=generator)
    score = score.masked_fill(~valid, 2.0)
    if keep_first:
        score[:, 0] = torch.where(first, torch.full_like(score[:, 0], -1.0), score[:, 0])
    order = score.argsort(dim=1)
    kmax = max(int(k.max()), 1) if b else min(t, 1)  # an empty batch keeps nothing (and has no max)
    idx = order[:, :kmax]
    keep = torch.arange(kmax, device=dev)[None, :] < k[:, None]
    # Restore original order; padding slots go last.
    key = torch.where(keep, idx, idx + t)
    key, perm = key.sort(dim=1)
    idx = torch.gather(idx, 1, perm)
    keep = torch.gather(keep, 1, perm)
    idx = idx.masked_fill(~keep, 0)
    return KeptTokens(gather_tokens(tokens, idx), idx, keep)


def feature_dropout(
    x: torch.Tensor, p: float, *, generator: torch.Generator | None = None, training: bool = True
) -> torch.Tensor:
    r"""Inverted dropout with a seedable generator: :math:`x \odot m / (1-p)`, :math:`m_i \sim \mathrm{Bernoulli}(1-p)`.

    Two calls on the same features give two SimCSE-style views. Identity when
    ``training`` is False or ``p == 0``.

    Example:
        >>> x = torch.ones(2, 4)
        >>> y = feature_dropout(x, 0.5, generator=torch.Generator().manual_seed(0))
        >>> sorted(set(y.flatten().tolist())) in ([0.0, 2.0], [0.0], [2.0])
        True
    """
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    keep = torch.rand(x.shape, device=x.device, generator=generator) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


def _repeat(x: Any, n: int) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.cat([x] * n, dim=0)
    if isinstance(x, Mapping):
        return {k: _repeat(v, n) for k, v in x.items()}
    return x


def _same_mapping_type(template: Mapping, data: dict) -> Any:
    """Rebuild ``data`` as ``type(template)`` (e.g. a Hugging Face ``ModelOutput``), else a plain dict."""
    if type(template) is dict:
        return data
    try:
        return type(template)(**data)
    except Exception:  # constructors that do not take the keys as keywords
        return data


def _split(y: Any, n: int) -> tuple[Any, ...]:
    if isinstance(y, torch.Tensor):
        if y.shape[0] % n:
            raise ValueError(f"encoder output batch {y.shape[0]} is not divisible by n_views={n}")
        return tuple(y.chunk(n, dim=0))
    if isinstance(y, Mapping):
        parts = {k: _split(v, n) for k, v in y.items()}
        return tuple(_same_mapping_type(y, {k: parts[k][i] for k in parts}) for i in range(n))
    if y is None:
        return (None,) * n
    if isinstance(y, tuple) and hasattr(y, "_fields"):  # NamedTuple
        parts = [_split(v, n) for v in y]
        return tuple(type(y)(*(p[i] for p in parts)) for i in range(n))
    if isinstance(y, (tuple, list)):
        parts = [_split(v, n) for v in y]
        return tuple(type(y)(p[i] for p in parts) for i in range(n))
    raise TypeError(f"cannot split encoder output of type {type(y).__name__} into views")


def dropout_views(encoder: Callable[..., Any], *args: Any, n_views: int = 2, **kwargs: Any) -> tuple[Any, ...]:
    """Encode the batch ``n_views`` times in ONE forward pass; dropout differs per copy (SimCSE).

    Tensor arguments (and tensors inside mapping arguments, e.g. a tokenizer's
    ``{"input_ids", "attention_mask"}``) are repeated along dim 0; the output
    (a tensor, mapping — a Hugging Face ``ModelOutput`` keeps its type — or
    tuple of tensors) is split back into ``n_views`` views. Warns if ``encoder`` is an ``nn.Module`` in eval mode (dropout is
    off, the views would be identical).

    Example:
        >>> enc = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)).train()
        >>> v1, v2 = dropout_views(enc, torch.randn(3, 4))
        >>> v1.shape, bool((v1 != v2).any())
        (torch.Size([3, 4]), True)
    """
    if int(n_views) < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    if isinstance(encoder, nn.Module) and not encoder.training:
        warnings.warn("dropout_views: encoder is in eval mode, so dropout is off and the views are identical", stacklevel=2)
    rep_args = [_repeat(a, n_views) for a in args]
    rep_kwargs = {k: _repeat(v, n_views) for k, v in kwargs.items()}
    return _split(encoder(*rep_args, **rep_kwargs), n_views)
