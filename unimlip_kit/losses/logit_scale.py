"""CLIP's learnable temperature, log-parameterised and clamped (Radford et al. 2021, arXiv 2103.00020), and SigLIP's logit bias."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LogitBias", "LogitScale"]


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


class LogitBias(nn.Module):
    r"""A learnable additive logit bias :math:`b` for SigLIP's sigmoid loss, initialised to ``init`` (SigLIP: −10).

    With :math:`N - 1` negatives per positive, a strongly negative start keeps the
    pairwise classifiers near the prior (almost every pair is a negative), so the
    first steps need no large correction (Zhai et al. 2023, arXiv 2303.15343, §3.2).

    Example:
        >>> bias = LogitBias()
        >>> float(bias().detach()), bias().requires_grad
        (-10.0, True)
    """

    def __init__(self, init: float = -10.0, learnable: bool = True) -> None:
        super().__init__()
        value = float(init)
        if value != value or abs(value) == float("inf"):
            raise ValueError(f"init must be finite, got {init}")
        t = torch.tensor(value, dtype=torch.float32)
        if learnable:
            self.bias = nn.Parameter(t)
        else:
            self.register_buffer("bias", t)

    def forward(self) -> torch.Tensor:
        return self.bias

    def extra_repr(self) -> str:
        return f"value={float(self.bias.detach()):.4g}"
