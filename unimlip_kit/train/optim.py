"""Optimizer parameter groups and the learning-rate schedule, shared by pre-training and VQA fine-tuning.

* :func:`param_groups`: AdamW groups; by default biases, norms (every tensor with fewer than 2 dims),
  position tables and the logit scale get no weight decay (the usual BERT/CLIP rule).
* :func:`cosine_with_warmup`: linear warm-up, then cosine decay to ``min_ratio`` (SGDR, Loshchilov &
  Hutter 2017, without restarts); VQA fine-tuning uses it with no warm-up and ``min_ratio = 0``.
* :func:`build_optimizer`: the recipe's AdamW (``betas = (0.9, 0.98)``, CLIP's) and its ``LambdaLR``.
* :func:`resolve_warmup` / :func:`schedule_notes`: the warm-up a run uses (5% of ``max_steps``, at most 50,
  unless set) and what is unusual about a schedule, said before the run starts.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["WARMUP_CAP", "WARMUP_FRACTION", "build_optimizer", "cosine_with_warmup", "default_no_decay", "param_groups",
           "resolve_warmup", "schedule_notes"]

#: ``warmup_steps=None``: warm up over this fraction of ``max_steps`` ...
WARMUP_FRACTION = 0.05
#: ... and at most this many steps (the recipe's fixed warm-up before it scaled with the run).
WARMUP_CAP = 50


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


def resolve_warmup(train: Any) -> int:
    """The warm-up steps of ``train``: ``warmup_steps`` when set, else ``ceil(5% · max_steps)`` capped at 50.

    Example:
        >>> from unimlip_kit.train import TrainConfig
        >>> [resolve_warmup(TrainConfig(max_steps=n)) for n in (1, 50, 1000, 100_000)], resolve_warmup(TrainConfig(warmup_steps=7))
        ([1, 3, 50, 50], 7)
    """
    if train.warmup_steps is not None:
        return int(train.warmup_steps)
    return min(WARMUP_CAP, math.ceil(WARMUP_FRACTION * train.max_steps))


def schedule_notes(train: Any) -> list[str]:
    """What is unusual about a warm-up + cosine schedule, one sentence each (``[]`` when nothing is).

    Flags a warm-up that takes more than a quarter of the run (the lr peaks late, the cosine has little
    room), a warm-up longer than the run (the lr never reaches ``lr``) and runs too short for the
    cross-modal terms to learn much (under 100 steps: the R@1 of such a run is not a verdict on the model).

    Example:
        >>> from unimlip_kit.train import TrainConfig
        >>> schedule_notes(TrainConfig()), len(schedule_notes(TrainConfig(max_steps=50, warmup_steps=50)))
        ([], 2)
    """
    warm, total = resolve_warmup(train), int(train.max_steps)
    notes = []
    if warm >= total:
        notes.append(f"the warm-up ({warm} steps) is as long as the run ({total}): the lr rises for the whole run and "
                     f"never decays; unset train.warmup_steps for 5% of max_steps")
    elif warm > total / 4:
        notes.append(f"the warm-up ({warm} steps) is {warm / total:.0%} of the run ({total}): the lr peaks late")
    if total < 100:
        notes.append(f"{total} steps is a short run: expect low retrieval and ITM near chance; the default run "
                     f"trains 1000 steps")
    return notes


def build_optimizer(model: nn.Module, train: Any) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The recipe's AdamW over :func:`param_groups` and its warm-up + cosine ``LambdaLR``.

    ``train`` is a :class:`~unimlip_kit.train.TrainConfig` (``lr``, ``weight_decay``, ``warmup_steps``
    (:func:`resolve_warmup`), ``max_steps``, ``min_lr_ratio``).

    Example:
        >>> from unimlip_kit.train import TrainConfig
        >>> opt, sched = build_optimizer(nn.Linear(2, 2), TrainConfig(lr=0.1, warmup_steps=2, max_steps=4))
        >>> opt.param_groups[0]["betas"], sched.get_last_lr()
        ((0.9, 0.98), [0.05, 0.05])
    """
    opt = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr, betas=(0.9, 0.98))
    warmup = resolve_warmup(train)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_with_warmup(s, warmup, train.max_steps, train.min_lr_ratio))
    return opt, sched
