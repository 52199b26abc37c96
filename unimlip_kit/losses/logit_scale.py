"""CLIP's learnable temperature, log-parameterised and clamped (Radford et al. 2021, arXiv 2103.00020)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LogitScale"]


class LogitScale(nn.Module):
    r"""A learnable multiplier :math:`s = \exp(\min(\theta, \log s_{max}))`, initialised to ``init``.

    CLIP starts at :math:`1/0.07` and clamps :math:`s \le 100` so training does
    not become unstable; the clamp happens in ``forward`` (no gradient past it),
    so the parameter itself never needs to be edited by the training loop.

    Example:
        >>> scale = LogitScale()
        >>> round(float(scale().detach()), 4)
        14.2857
        >>> with torch.no_grad(): _ = scale.log_scale.fill_(10.0)
        >>> float(scale().detach())
        100.0...
    """

    def __init__(self, init: float = 1 / 0.07, max_scale: float = 100.0, learnable: bool = True) -> None:
        super().__init__()
        if not (init > 0 and max_scale > 0):
            raise ValueError(f"init and max_scale must be > 0, got init={init}, max_scale={max_scale}")
        if init > max_scale:
            raise ValueError(f"init={init} exceeds max_scale={max_scale}")
        self.max_scale = float(max_scale)
        log = torch.tensor(math.log(init), dtype=torch.float32)
        if learnable:
            self.log_scale = nn.Parameter(log)
        else:
            self.register_buffer("log_scale", log)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(self.max_scale)).exp()

    def extra_repr(self) -> str:
        return f"value={float(self().detach()):.4g}, max_scale={self.max_scale}"
