"""The recipe's optimizer and schedule: AdamW over :func:`~unimlip_kit.utils.optim.param_groups` and the warm-up + cosine.

:func:`param_groups`, :func:`default_no_decay` and :func:`cosine_with_warmup` live in
:mod:`unimlip_kit.utils.optim` (VQA fine-tuning in ``unimlip_kit.eval`` uses them too, and the library never
imports this training layer); they are re-exported here.

* :func:`build_optimizer`: the recipe's AdamW (``betas = (0.9, 0.98)``, CLIP's) and its ``LambdaLR``.
* :func:`resolve_warmup` / :func:`schedule_notes`: the warm-up a run uses (5% of ``max_steps``, at most 50,
  unless set) and what is unusual about a schedule, said before the run starts.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from unimlip_kit.utils.optim import cosine_with_warmup, default_no_decay, param_groups

__all__ = ["WARMUP_CAP", "WARMUP_FRACTION", "build_optimizer", "cosine_with_warmup", "default_no_decay", "lr_multiplier",
           "param_groups", "resolve_warmup", "schedule_notes"]

#: ``warmup_steps=None``: warm up over this fraction of ``max_steps`` ...
WARMUP_FRACTION = 0.05
#: ... and at most this many steps (the recipe's fixed warm-up before it scaled with the run).
WARMUP_CAP = 50


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


def lr_multiplier(step: int, train: Any, elapsed_s: float | None = None) -> float:
    """The recipe's learning-rate multiplier at ``step``: :func:`cosine_with_warmup` over ``train``'s schedule.

    With a wall-time budget (``train.max_seconds``) and ``elapsed_s`` seconds of training so far, the schedule's
    progress is ``max(step / max_steps, elapsed_s / max_seconds)``: the multiplier at step
    ``max(step, elapsed_s / max_seconds · max_steps)``, so the lr reaches its floor when the budget runs out.

    Example:
        >>> from unimlip_kit.train import TrainConfig
        >>> t = TrainConfig(max_steps=100, warmup_steps=0, min_lr_ratio=0.0, max_seconds=10.0)
        >>> lr_multiplier(0, t), lr_multiplier(50, t), lr_multiplier(0, t, elapsed_s=5.0), lr_multiplier(0, t, 10.0)
        (1.0, 0.5, 0.5, 0.0)
    """
    at = step
    if elapsed_s is not None and train.max_seconds is not None:
        at = max(step, elapsed_s / train.max_seconds * train.max_steps)
    return cosine_with_warmup(at, resolve_warmup(train), train.max_steps, train.min_lr_ratio)


def build_optimizer(model: nn.Module, train: Any, clock: Callable[[], float] | None = None
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The recipe's AdamW over :func:`param_groups` and its warm-up + cosine ``LambdaLR`` (:func:`lr_multiplier`).

    ``clock`` (optional) returns the seconds trained so far; with ``train.max_seconds`` set the schedule then
    follows the time budget as well as the steps. Without it, or without a budget, the schedule is the steps'.

    ``train`` is a :class:`~unimlip_kit.train.TrainConfig` (``lr``, ``weight_decay``, ``warmup_steps``
    (:func:`resolve_warmup`), ``max_steps``, ``min_lr_ratio``).

    Example:
        >>> from unimlip_kit.train import TrainConfig
        >>> opt, sched = build_optimizer(nn.Linear(2, 2), TrainConfig(lr=0.1, warmup_steps=2, max_steps=4))
        >>> opt.param_groups[0]["betas"], sched.get_last_lr()
        ((0.9, 0.98), [0.05, 0.05])
    """
    opt = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr, betas=(0.9, 0.98))
    budgeted = clock is not None and train.max_seconds is not None
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_multiplier(s, train, clock() if budgeted else None))
    return opt, sched
