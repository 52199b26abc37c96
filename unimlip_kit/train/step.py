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

Non-finite values never reach the weights: a NaN or infinity in a model output or a loss term (checked for
every term at every micro-batch, agreed across ranks before the backward so no rank is left in a
collective), or in the gradient norm, raises :class:`NonFiniteLossError` naming the step, the term and the
learning rate, with the gradients zeroed and the optimizer not stepped (the recipe's ``train.on_nonfinite``
then stops or skips the step).

With ``grad_accum > 1`` and ``accumulation="gradcache"`` (the default, ``train.accumulation``) the
usable micro-batches are instead made first (their views built on the CPU, moved to the device one
at a time) and handed to :func:`~unimlip_kit.gradcache.grad_cache_step` (Gao et al. 2021): every
contrastive term and ITM's hard negatives then cover the whole accumulated batch, exactly as one
batch of ``grad_accum × batch_size`` would, while the towers hold one micro-batch's graph. Its
``reseed(m)`` restarts the streams of step 1 for the ``m``-th kept micro-batch, the group ids come
from all micro-batches' keys after the flip (same-meaning pairs of different micro-batches are never
each other's negative), and DDP's average is done by ``grad_cache_step`` (the plain model, no
``no_sync``). ``accumulation="plain"`` keeps the per-micro-batch losses above. ``grad_accum=1``
always runs the plain path (bit for bit as before).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from unimlip_kit.data import group_ids_from_keys, regroup_after_flip
from unimlip_kit.distributed import any_rank
from unimlip_kit.gradcache import grad_cache_step
from unimlip_kit.losses import DEFAULT_WEIGHTS
from unimlip_kit.train.views import BatchMaker
from unimlip_kit.utils import derive_seed
from unimlip_kit.utils.checks import NonFiniteError

__all__ = ["NonFiniteLossError", "StepOutput", "TrainParts", "train_step", "use_bf16"]


class NonFiniteLossError(FloatingPointError):
    """A step met NaN or infinity; the weights were not updated. Names the step, the terms and the learning rate.

    Attributes: ``step`` (1-based, the step that failed), ``terms`` (the loss terms, or ``["gradient"]``),
    ``what`` (the tensor or quantity), ``lr``.

    Example:
        >>> str(NonFiniteLossError(3, ["itm"], "logits contains NaN or infinite values", 0.5))
        'step 3: NaN or infinity in the loss term itm (logits contains NaN or infinite values) at learning rate 0.5; the weights were not updated'
    """

    def __init__(self, step: int, terms: list[str], what: str, lr: float) -> None:
        self.step, self.terms, self.what, self.lr = step, list(terms), what, lr
        if all(t in DEFAULT_WEIGHTS for t in self.terms):  # UniMlipLoss's terms by name
            where = f"the loss term{'s' if len(self.terms) > 1 else ''} {', '.join(self.terms)}"
        else:  # "the gradient", "the total", "the model's forward"
            where = ", ".join(t if t.startswith("the ") else f"the {t}" for t in self.terms)
        super().__init__(f"step {step}: NaN or infinity in {where} ({what}) at learning rate {lr:.3g}; "
                         f"the weights were not updated")


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
    ``terms`` default to ``loss_fn.enabled_terms``; ``generator`` lives on ``device``;
    ``accumulation`` is ``"gradcache"`` (whole-batch contrastive terms when ``grad_accum > 1``) or ``"plain"``.

    Example:
        >>> parts = TrainParts(model=nn.Linear(1, 1), loss_fn=None, maker=None, optimizer=None, scheduler=None,
        ...                    seed=0, device=torch.device("cpu"))
        >>> parts.train_model is parts.model, parts.grad_accum, parts.world_size, parts.accumulation
        (True, 1, 1, 'gradcache')
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
    accumulation: str = "gradcache"

    def __post_init__(self) -> None:
        if self.accumulation not in ("gradcache", "plain"):
            raise ValueError(f"accumulation must be 'gradcache' or 'plain', got {self.accumulation!r}")
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
    # a batch emptied by skipped images has nothing to contrast; skip together: a rank alone would leave
    # the others hanging
    return not any_rank(len(raw["ids"]) < 2, parts.device)


def train_step(parts: TrainParts, step: int, next_batch: Callable[[], dict[str, Any]],
               on_batch: Callable[[dict[str, Any]], None] | None = None) -> StepOutput:
    """Run optimizer step ``step`` (0-based) over ``parts.grad_accum`` micro-batches from ``next_batch()``.

    ``on_batch(raw)`` sees every raw batch first (the recipe counts its skipped pairs there). Returns a
    :class:`StepOutput`; ``losses`` holds ``total`` and each enabled term, averaged over the micro-batches
    (plain accumulation) or over the whole accumulated batch (gradient caching, ``grad_accum > 1``).

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
    if n > 1 and parts.accumulation == "gradcache":
        try:
            _grad_cache(parts, step, next_batch, on_batch, out)
        except NonFiniteError as err:
            _fail(parts, step, [err.term] if err.term else ["the model's forward"], str(err))
        bad = [k for k, v in out.losses.items() if k != "total" and not math.isfinite(v)]
        if bad or ("total" in out.losses and not math.isfinite(out.losses["total"])):
            _fail(parts, step, bad or ["total"], "the loss is NaN or infinite")
        _optimizer_step(parts, step)
        return out
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
            problem: tuple[list[str], str] | None = None
            try:
                outputs = parts.train_model(batch, parts.terms, generator=parts.generator)
                total, terms = parts.loss_fn(outputs)
            except NonFiniteError as err:  # a model output, a scale or logits held NaN/inf: the term says which
                problem = ([err.term] if err.term else ["the model's forward"], str(err))
            else:  # every term, one device sync
                values = torch.stack([total.detach().float().reshape(())] + [v.float().reshape(()) for v in terms.values()])
                if not bool(torch.isfinite(values).all()):
                    bad = [k for k, v in zip(terms, values[1:].tolist()) if not math.isfinite(v)]
                    problem = (bad or ["total"], "the loss is NaN or infinite")
            if any_rank(problem is not None, parts.device):  # every rank stops here together, before the backward
                _fail(parts, step, *(problem or (["the loss of another rank"], "a non-finite loss on another rank")))
            (total / n).backward()
        out.pairs += len(raw["ids"]) * parts.world_size
        out.ids.extend(raw["ids"])
        for k, v in {"total": total.detach(), **terms}.items():
            acc[k] = acc.get(k, 0.0) + float(v) / n
    _optimizer_step(parts, step)
    return out


def _fail(parts: TrainParts, step: int, terms: list[str], what: str) -> None:
    """Zero the gradients (the optimizer never sees them) and raise :class:`NonFiniteLossError` for ``step``."""
    if parts.optimizer is not None:
        parts.optimizer.zero_grad(set_to_none=True)
    lr = parts.scheduler.get_last_lr()[0] if parts.scheduler is not None else float("nan")
    raise NonFiniteLossError(step + 1, terms, what, lr)


def _optimizer_step(parts: TrainParts, step: int) -> None:
    # the norm is taken even without clipping (max_norm=inf): a NaN/inf gradient must not reach the weights
    norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.grad_clip if parts.grad_clip > 0 else float("inf"))
    if not bool(torch.isfinite(norm)):  # DDP and gradient caching all-reduce the gradients: every rank agrees
        _fail(parts, step, ["gradient"], f"the gradient norm is {float(norm)}")
    parts.optimizer.step()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)


class _OnDevice(Sequence):
    """Micro-batches kept on the CPU, each moved to the device when ``grad_cache_step`` reads it."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], device: torch.device) -> None:
        self.batches, self.device = batches, device

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, m: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {k: v.to(self.device, non_blocking=True) for k, v in self.batches[m].items()}


def _accumulated_group_ids(maker: BatchMaker, raws: list[dict[str, Any]],
                           flips: list[tuple[list[bool], list[str]]]) -> torch.Tensor | None:
    """Group ids over all micro-batches (components of shared image/caption/record keys, after the flip)."""
    if not all("group_keys" in r for r in raws):
        return None  # grad_cache_step then keeps each micro-batch's groups apart
    keys = [list(k) for r in raws for k in r["group_keys"]]
    if maker.flip.mode != "swap":
        return group_ids_from_keys(keys)
    return regroup_after_flip(keys, [f for fl, _ in flips for f in fl], [c for _, caps in flips for c in caps])


def _grad_cache(parts: TrainParts, step: int, next_batch: Callable[[], dict[str, Any]],
                on_batch: Callable[[dict[str, Any]], None] | None, out: StepOutput) -> None:
    """The gradient-cached accumulation of one step (module docstring); fills ``out``, leaves the gradients."""
    kept: list[int] = []
    raws: list[dict[str, Any]] = []
    batches: list[dict[str, torch.Tensor]] = []
    flips: list[tuple[list[bool], list[str]]] = []
    cpu = torch.device("cpu")
    for micro in range(parts.grad_accum):
        raw = next_batch()
        out.raw_batches += 1
        if on_batch is not None:
            on_batch(raw)
        if not _usable(raw, parts):
            continue
        kept.append(micro)
        raws.append(raw)
        batches.append(parts.maker(raw, step, micro, parts.rank, device=cpu))
        flips.append(parts.maker.last_flip)
    if not kept:
        return

    def reseed(m: int) -> None:  # the m-th kept micro-batch's streams, as the plain path seeds them
        torch.manual_seed(derive_seed(parts.seed, "global", step, kept[m], parts.rank))
        parts.generator.manual_seed(derive_seed(parts.seed, "model", step, kept[m], parts.rank))

    group_ids = _accumulated_group_ids(parts.maker, raws, flips)
    with torch.autocast(parts.device.type, dtype=torch.bfloat16, enabled=parts.bf16):
        res = grad_cache_step(parts.model, parts.loss_fn, _OnDevice(batches, parts.device), terms=parts.terms,
                              generator=parts.generator, reseed=reseed, group_ids=group_ids)
    out.pairs = res.pairs * parts.world_size
    for raw in raws:
        out.ids.extend(raw["ids"])
    out.losses.update({"total": float(res.total), **{k: float(v) for k, v in res.terms.items()}})
