"""The fused-modality encoder (ALBEF, Li et al. 2021, arXiv 2107.07651): text tokens attend to image tokens.

Each :class:`FusionLayer` is pre-norm: self-attention over the text (padding
masked), cross-attention from text queries to image keys/values, then an MLP,
each with a residual. The fused [CLS] feeds the ITM head and every fused token
the MLM head. Attention goes through :func:`unimlip_kit.models.attention.attention`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from unimlip_kit.models.attention import attention

__all__ = ["FusionEncoder", "FusionLayer", "MultiHeadAttention"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention whose keys/values may come from another sequence (cross-attention).

    Example:
        >>> mha = MultiHeadAttention(16, 4)
        >>> mha(torch.randn(2, 3, 16), torch.randn(2, 5, 16)).shape
        torch.Size([2, 3, 16])
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0, backend: str | None = None) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads, self.dropout, self.backend = heads, dropout, backend
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        # heads split off the channel axis: (B, L, H*Dh) -> (B, H, L, Dh); keys and values share one projection
        q = rearrange(self.q(x), "b l (h d) -> b h l d", h=self.heads)
        k, v = rearrange(self.kv(context), "b l (kv h d) -> kv b h l d", kv=2, h=self.heads)
        p = self.dropout if self.training else 0.0
        y = attention(q, k, v, key_padding_mask=context_mask, dropout_p=p, backend=self.backend)
        return self.out(rearrange(y, "b h l d -> b l (h d)"))


class FusionLayer(nn.Module):
    """Pre-norm self-attention → cross-attention → MLP, each residual.

    Example:
        >>> layer = FusionLayer(16, 4)
        >>> layer(torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 5, 16)).shape
        torch.Size([2, 3, 16])
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1, backend: str | None = None):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = MultiHeadAttention(width, heads, dropout, backend)
        self.cross_attn = MultiHeadAttention(width, heads, dropout, backend)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor | None, image: torch.Tensor, image_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = self.norm1(text)
        text = text + self.drop(self.self_attn(t, t, text_mask))
        text = text + self.drop(self.cross_attn(self.norm2(text), image, image_mask))
        return text + self.drop(self.mlp(self.norm3(text)))


class FusionEncoder(nn.Module):
    """A stack of :class:`FusionLayer` plus an input projection of the image tokens to the text width.

    Example:
        >>> enc = FusionEncoder(width=16, image_width=8, layers=2, heads=4)
        >>> enc(torch.randn(2, 3, 16), torch.ones(2, 3), torch.randn(2, 5, 8)).shape
        torch.Size([2, 3, 16])
    """

    def __init__(
        self,
        width: int,
        image_width: int,
        layers: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.image_in = nn.Identity() if image_width == width else nn.Linear(image_width, width)
        self.layers = nn.ModuleList(FusionLayer(width, heads, mlp_ratio, dropout, backend) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        image: torch.Tensor,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fuse (B, Lt, W) text states with (B, Li, Wi) image tokens; masks are True where valid."""
        if text.shape[0] != image.shape[0]:
            raise ValueError(f"text and image batches differ: text{tuple(text.shape)}, image{tuple(image.shape)}")
        text_mask = None if text_mask is None else text_mask.to(torch.bool)
        image = self.image_in(image)
        for layer in self.layers:
            text = layer(text, text_mask, image, image_mask)
        return self.norm(text)
