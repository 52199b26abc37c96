"""Pooling a token sequence into one feature: [CLS], masked mean, or attention pooling with learned queries.

Attention pooling (Lee et al. 2019, "Set Transformer" PMA; CoCa, Yu et al. 2022,
arXiv 2205.01917; open_clip's attentional pooler): ``Q`` learned queries attend to
the layer-normalised tokens, ``y = mean_q softmax(q_q Kᵀ/√d) V``. Unlike a mean, the
weights depend on the tokens' content *and* position (the tokens carry position
embeddings), so "where" survives pooling; unlike a from-scratch [CLS], every token
reaches the feature through one attention from the first step.
"""

from __future__ import annotations

import torch
from torch import nn

from unimlip_kit.models.fusion import MultiHeadAttention

__all__ = ["POOLINGS", "AttentionPool", "TokenPool"]

#: The pooling kinds a tower accepts.
POOLINGS = ("attn", "cls", "mean")


class AttentionPool(nn.Module):
    """``queries`` learned queries cross-attend to the tokens; the output is their mean, layer-normalised.

    Example:
        >>> pool = AttentionPool(16, heads=4, queries=2)
        >>> tokens = torch.randn(3, 5, 16)
        >>> pool(tokens).shape
        torch.Size([3, 16])
        >>> mask = torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.bool)   # padded tokens are never attended
        >>> changed = tokens.clone(); changed[:, 3:] = 1e3
        >>> torch.allclose(pool(tokens, mask), pool(changed, mask), atol=1e-5)
        True
    """

    def __init__(self, width: int, heads: int = 4, queries: int = 1) -> None:
        super().__init__()
        if queries < 1:
            raise ValueError(f"queries must be >= 1, got {queries}")
        self.query = nn.Parameter(torch.randn(queries, width) * width ** -0.5)
        self.norm_tokens = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)
        self.norm_out = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, W) from (B, T, W) ``tokens``; ``mask`` (B, T) is True (or 1) where a token is real."""
        q = self.query.unsqueeze(0).expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        mask = None if mask is None else mask.to(torch.bool)
        return self.norm_out(self.attn(q, self.norm_tokens(tokens), mask).mean(dim=1))


class TokenPool(nn.Module):
    """One global feature from tokens: ``"cls"`` (token 0), ``"mean"`` (masked mean) or ``"attn"`` (:class:`AttentionPool`).

    ``skip_first=True`` (a ViT's [CLS] is token 0) leaves token 0 out of ``mean`` and ``attn``.

    Example:
        >>> tokens = torch.arange(6.0).reshape(1, 3, 2)        # [CLS] + 2 tokens of width 2
        >>> TokenPool("mean", 2, skip_first=True)(tokens).tolist()
        [[3.0, 4.0]]
        >>> TokenPool("cls", 2, skip_first=True)(tokens).tolist()
        [[0.0, 1.0]]
        >>> TokenPool("mean", 1)(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[1, 1, 0]])).tolist()
        [[2.0]]
    """

    def __init__(self, kind: str, width: int, *, skip_first: bool = False, heads: int = 4, queries: int = 1) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {kind!r}")
        self.kind, self.skip_first = kind, skip_first
        self.attn = AttentionPool(width, heads, queries) if kind == "attn" else None

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, W) feature of (B, T, W) ``tokens``; ``mask`` (B, T) marks real tokens (text padding)."""
        if self.kind == "cls":
            return tokens[:, 0]
        if self.skip_first:
            tokens = tokens[:, 1:]
            mask = None if mask is None else mask[:, 1:]
        if self.attn is not None:
            return self.attn(tokens, mask)
        if mask is None:
            return tokens.mean(dim=1)
        w = mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
