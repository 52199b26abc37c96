"""Optimizer parameter groups and the warm-up + cosine schedule, shared by pre-training and VQA fine-tuning.

They live below both ``unimlip_kit.train`` (the recipe's optimizer, :func:`unimlip_kit.train.build_optimizer`)
and ``unimlip_kit.eval`` (VQA fine-tuning, :func:`unimlip_kit.eval.train_vqa`), so that the library never
imports the training layer.

* :func:`param_groups`: AdamW groups; by default biases, norms (every tensor with fewer than 2 dims),
  position tables and the logit scale get no weight decay (the usual BERT/CLIP rule).
* :func:`cosine_with_warmup`: linear warm-up, then cosine decay to ``min_ratio`` (SGDR, Loshchilov &
  Hutter 2017, without restarts); VQA fine-tuning uses it with no warm-up and ``min_ratio = 0``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["cosine_with_warmup", "default_no_decay", "param_groups"]


def default_no_decay(name: str, param: torch.Tensor) -> bool:
    """True for parameters that take no weight decay: ``ndim < 2``, position tables, the logit scale.

    Example:
        >>> default_no_decay("fc.bias", torch.zeros(3)), default_no_decay("fc.weight", torch.zeros(3, 3))
        (True, False)
        >>> default_no_decay("embeddings.position_embeddings.weight", torch.zeros(8, 3))
        True
    """
    return param.ndim < 2 or "logit_scale" in name or "position" in name


def param_groups(model: nn.Module, weight_decay: float, *, lr: float | None = None,
                 no_decay: Callable[[str, torch.Tensor], bool] | None = default_no_decay) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``model``'s trainable parameters, in ``named_parameters`` order.

    With ``no_decay`` (default :func:`default_no_decay`) two groups: ``[decay, no decay (weight_decay 0)]``;
    with ``no_decay=None`` one group where every parameter decays. ``lr`` (optional) is set on each group,
    e.g. a smaller rate for a pre-trained backbone than for a new head.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        >>> [(len(g["params"]), g["weight_decay"]) for g in param_groups(m, 0.05)]
        [(1, 0.05), (3, 0.0)]
        >>> [(len(g["params"]), g["lr"]) for g in param_groups(m, 0.01, lr=1e-4, no_decay=None)]
        [(4, 0.0001)]
    """
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (keep if no_decay is not None and no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay is not None:
        groups.append({"params": keep, "weight_decay": 0.0})
    if lr is not None:
        for g in groups:
            g["lr"] = lr
    return groups


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier at ``step`` (0-based): ``(step + 1) / warmup`` during warm-up, then cosine from 1 to ``min_ratio``.

    ``min_ratio + (1 - min_ratio) · ½ (1 + cos(π · p))`` with ``p = (step - warmup) / (total - warmup)``,
    clamped at 1 after ``total`` steps.

    Example:
        >>> [round(cosine_with_warmup(s, 2, 10, 0.1), 3) for s in (0, 1, 2, 6, 10, 20)]
        [0.5, 1.0, 1.0, 0.55, 0.1, 0.1]
        >>> cosine_with_warmup(5, 0, 10, 0.0) == 0.5 * (1 + math.cos(math.pi * 5 / 10))
        True
    """
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
