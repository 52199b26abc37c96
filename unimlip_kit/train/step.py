"""One optimizer step of Uni-Mlip pre-training, as the recipe runs it and the throughput benchmark times it.

:func:`train_step` takes ``grad_accum`` micro-batches from ``next_batch()`` and, for each usable one
(at least 2 readable pairs, agreed across ranks so that collectives never hang):

1. re-seeds every random stream from ``(seed, step, micro, rank)``: torch's global RNG (dropout) and
   ``parts.generator`` (token masking, hard negatives, token keeping); the :class:`BatchMaker` re-seeds
   the augmentations from the same keys. A resumed run therefore replays any step bit for bit;
2. builds the data-level views (:class:`~unimlip_kit.train.BatchMaker`);
3. runs the forward of the enabled terms and :class:`~unimlip_kit.losses.UniMlipLoss` under bf16
   autocast when asked, and back-propagates ``total / grad_accum`` (DDP syncs on the last micro-batch);

then clips the global gradient norm, steps AdamW and the schedule and zeroes the gradients.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from unimlip_kit.train.views import BatchMaker
from unimlip_kit.utils import derive_seed

__all__ = ["StepOutput", "TrainParts", "train_step", "use_bf16"]


def use_bf16(amp: str, device: torch.device) -> bool:
    """Whether ``train.amp`` means bf16 autocast on ``device`` (``auto``: on CUDA only).

    Example:
        >>> use_bf16("auto", torch.device("cpu")), use_bf16("bf16", torch.device("cpu")), use_bf16("off", torch.device("cpu"))
        (False, True, False)
    """
    return amp == "bf16" or (amp == "auto" and device.type == "cuda")


@dataclass
class TrainParts:
    """What one training step needs: the model (and its DDP wrapper), loss, views, optimizer, schedule, settings.

    ``train_model`` is the module called for the forward (the DDP wrapper; default ``model``);
    ``terms`` default to ``loss_fn.enabled_terms``; ``generator`` lives on ``device``.

    Example:
        >>> parts = TrainParts(model=nn.Linear(1, 1), loss_fn=None, maker=None, optimizer=None, scheduler=None,
        ...                    seed=0, device=torch.device("cpu"))
        >>> parts.train_model is parts.model, parts.grad_accum, parts.world_size
        (True, 1, 1)
    """

    model: nn.Module
    loss_fn: Any
    maker: BatchMaker | None
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    seed: int
    device: torch.device
    grad_accum: int = 1
    grad_clip: float = 1.0
    bf16: bool = False
    rank: int = 0
    world_size: int = 1
    train_model: nn.Module | None = None
    terms: tuple[str, ...] | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.train_model is None:
            self.train_model = self.model
        if self.terms is None and self.loss_fn is not None:
            self.terms = tuple(self.loss_fn.enabled_terms)
        if self.generator is None:
            self.generator = torch.Generator(device=self.device)


@dataclass
class StepOutput:
    """What a step did: mean losses per term over its micro-batches (``{}`` if none was usable), pair ids, pairs.

    ``pairs`` counts the pairs of the usable micro-batches over all ranks; ``raw_batches`` every batch taken.

    Example:
        >>> StepOutput().losses, StepOutput(pairs=8).pairs
        ({}, 8)
    """

    losses: dict[str, float] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    pairs: int = 0
    raw_batches: int = 0


def _usable(raw: dict[str, Any], parts: TrainParts) -> bool:
    usable = len(raw["ids"]) >= 2  # a batch emptied by skipped images has nothing to contrast
    if parts.world_size > 1 and dist.is_initialized():  # skip together: a rank alone would leave the others hanging
        flag = torch.tensor([int(usable)], device=parts.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        usable = bool(flag.item())
    return usable


def train_step(parts: TrainParts, step: int, next_batch: Callable[[], dict[str, Any]],
               on_batch: Callable[[dict[str, Any]], None] | None = None) -> StepOutput:
    """Run optimizer step ``step`` (0-based) over ``parts.grad_accum`` micro-batches from ``next_batch()``.

    ``on_batch(raw)`` sees every raw batch first (the recipe counts its skipped pairs there). Returns a
    :class:`StepOutput`; ``losses`` holds ``total`` and each enabled term, averaged over the micro-batches.

    Example:
        >>> from unimlip_kit.data import SyntheticConfig, ImageTextDataset, build_dataloader, StepStream, load_synthetic_records
        >>> from unimlip_kit.losses import UniMlipLoss
        >>> from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
        >>> from unimlip_kit.text import train_wordpiece_tokenizer
        >>> from unimlip_kit.train import RecipeConfig, build_optimizer
        >>> import tempfile
        >>> recs = load_synthetic_records(SyntheticConfig(n_train=8, n_validation=1, n_test=1, image_size=16),
        ...                               "train", cache_dir=tempfile.mkdtemp())
        >>> tok = train_wordpiece_tokenizer([r.caption for r in recs], vocab_size=80)
        >>> cfg = RecipeConfig()
        >>> mcfg = UniMlipModelConfig(image_size=16, vision_layers=1, text_layers=1, vision_width=16, text_width=16,
        ...     vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=8, ssl_dim=8, vocab_size=len(tok),
        ...     mask_token_id=tok.mask_token_id, special_token_ids=sorted(tok.all_special_ids))
        >>> model = UniMlipModel(mcfg); opt, sched = build_optimizer(model, cfg.train)
        >>> stream = StepStream(build_dataloader(ImageTextDataset(recs, image_size=16), 4, drop_last=True))
        >>> parts = TrainParts(model, UniMlipLoss(), BatchMaker(cfg, tok, torch.device("cpu")), opt, sched,
        ...                    seed=0, device=torch.device("cpu"))
        >>> out = train_step(parts, 0, stream.next)
        >>> sorted(out.losses), out.pairs
        (['image_ssl', 'itc', 'itc_feature', 'itm', 'mlm', 'text_ssl', 'total'], 4)
    """
    acc: dict[str, float] = {}
    out = StepOutput(losses=acc)
    n = parts.grad_accum
    distributed = parts.world_size > 1 and dist.is_initialized()
    for micro in range(n):
        raw = next_batch()
        out.raw_batches += 1
        if on_batch is not None:
            on_batch(raw)
        if not _usable(raw, parts):
            continue
        # Every random stream of this micro-batch restarts from (seed, step, micro, rank): resumable exactly.
        torch.manual_seed(derive_seed(parts.seed, "global", step, micro, parts.rank))  # dropout and anything unseeded
        parts.generator.manual_seed(derive_seed(parts.seed, "model", step, micro, parts.rank))  # masking, negatives, keeping
        batch = parts.maker(raw, step, micro, parts.rank)
        sync = micro == n - 1 or not distributed
        ctx = parts.train_model.no_sync() if not sync else contextlib.nullcontext()
        with ctx, torch.autocast(parts.device.type, dtype=torch.bfloat16, enabled=parts.bf16):
            outputs = parts.train_model(batch, parts.terms, generator=parts.generator)
            total, terms = parts.loss_fn(outputs)
            (total / n).backward()
        out.pairs += len(raw["ids"]) * parts.world_size
        out.ids.extend(raw["ids"])
        for k, v in {"total": total.detach(), **terms}.items():
            acc[k] = acc.get(k, 0.0) + float(v) / n
    if parts.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.grad_clip)
    parts.optimizer.step()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    return out
