"""Small heads on top of the towers: projection to the joint space, ITM (2-way) and MLM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ITMHead", "MLMHead", "ProjectionHead"]


class ProjectionHead(nn.Module):
    """Linear (``hidden=0``) or 2-layer MLP projection; ``normalize=True`` returns unit vectors (CLIP).

    Example:
        >>> head = ProjectionHead(8, 4)
        >>> float(head(torch.randn(3, 8)).detach().norm(dim=-1).mean())
        1.0...
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        else:
            self.net = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return F.normalize(y, dim=-1) if self.normalize else y


class ITMHead(nn.Module):
    """Image-text matching: 2-way logits (0 = not matched, 1 = matched) from the fused [CLS].

    Example:
        >>> ITMHead(8)(torch.randn(3, 8)).shape
        torch.Size([3, 2])
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 2)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.fc(cls)


class MLMHead(nn.Module):
    """BERT's prediction head: dense → GELU → LayerNorm → vocabulary logits.

    Example:
        >>> MLMHead(8, 30)(torch.randn(5, 8)).shape
        torch.Size([5, 30])
    """

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        self.decoder = nn.Linear(width, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))
