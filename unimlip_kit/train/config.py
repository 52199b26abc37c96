"""The pre-training recipe's config: one dataclass per section, saved as ``config.yaml`` in the run folder.

``recipes/configs/default.yaml`` writes out every default below and ``recipes/configs/tiny.yaml`` is the
seconds-long config of the tests; any subset of the keys can be given as a YAML file (``--config``) or
as ``section.key=value`` overrides (:func:`unimlip_kit.utils.load_config`, typed by the annotations:
an enumerated option is a ``Literal`` and a bad value fails when the config loads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from unimlip_kit.data import SyntheticConfig
from unimlip_kit.eval.suite import SYNTHETIC_IMAGE_QUESTIONS, EvalConfig
from unimlip_kit.losses import DEFAULT_WEIGHTS
from unimlip_kit.models import UniMlipModelConfig
from unimlip_kit.utils.config import PathOrHubId

__all__ = ["LOGGERS", "AugmentConfig", "DataConfig", "LossConfig", "RecipeConfig", "TrainConfig"]

#: Where training curves go (``train.loggers``): ``csv`` = ``log.csv`` + ``loss_curves.png`` in the run folder,
#: ``tensorboard`` = ``<run>/tensorboard/`` (extra ``[tensorboard]``), ``wandb`` = Weights & Biases (extra ``[wandb]``).
LOGGERS = ("csv", "tensorboard", "wandb")


@dataclass
class DataConfig:
    """Where the pairs come from: the synthetic benchmark, a table, an image folder, ROCO or shards.

    ``root`` (``--data-root`` / ``--train-data``) is any source of :func:`~unimlip_kit.data.source_kind`:

    * ``None``: the synthetic benchmark (``synthetic``), built once in ``cache_dir`` (default
      ``$UNIMLIP_CACHE`` or ``~/.cache/unimlip_kit``) and read with the ROCO reader;
    * a CSV/TSV/JSONL table of image paths and captions: columns ``image_column`` (default ``image``) and
      ``caption_column`` (default ``caption``), optionally ``id_column``, ``label_column`` and
      ``group_column`` (e.g. a patient id); image paths relative to the table's folder or ``image_root``;
    * a folder of images with sidecar captions (``x.png`` + ``x.txt``, ``caption_suffix``), DICOM too;
    * a ROCO checkout (``<root>/data/{train,validation,test}/radiology/captions.txt``): ``train_split``;
    * WebDataset tar shards (a folder of ``*.tar`` or a brace pattern; ``python -m unimlip_kit.data shards``
      writes them): streamed, ``train_split`` ignored; what the conversion skipped is counted in the run.

    ``eval_root`` (``--val-data``) is the held-out pairs that evaluation (and validation during training)
    reads: a ROCO checkout (its ``eval_split``), a table or an image folder (all of it). ``None`` means:
    ROCO and the synthetic benchmark use their own ``eval_split``; a table or an image folder holds out a
    seeded ``val_fraction`` of its pairs (by group when ``group_column`` is set,
    :func:`~unimlip_kit.data.hold_out`); shards have no held-out pairs, so evaluation is skipped, saying why.

    ``label_column`` (``--zeroshot-labels``) gives the classes for zero-shot and the linear probe: a column
    of the table (class names, used as the zero-shot prompts, or indices), or ``folder`` for an image
    folder's class sub-folders (``root/<class>/x.png``). ``vqa`` names VQA questions for the VQA task: a
    VQA-RAD JSON, a SLAKE folder or a JSON list with ``image``, ``question``, ``answer`` and ``split``
    (:func:`~unimlip_kit.eval.read_vqa_source`).

    Example:
        >>> DataConfig().root is None, DataConfig().eval_root, DataConfig().synthetic.n_train, DataConfig().eval_split
        (True, None, 2000, 'test')
        >>> DataConfig().image_column, DataConfig().caption_column, DataConfig().val_fraction
        ('image', 'caption', 0.1)
        >>> DataConfig(val_fraction=1.0)
        Traceback (most recent call last):
        ...
        ValueError: data.val_fraction must be in (0, 1), got 1.0
    """

    root: str | None = None
    eval_root: str | None = None
    cache_dir: str | None = None
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(n_train=2000, n_validation=100, n_test=300))
    train_split: Literal["train", "validation", "test"] = "train"
    eval_split: Literal["train", "validation", "test"] = "test"
    limit_train: int | None = None  # keep only the first N training pairs (quick runs)
    limit_eval: int | None = 1000  # retrieval gallery size (chance R@1 = 1 / gallery)
    num_workers: int = 0
    # a table's columns (and an image folder's labels: label_column=folder)
    image_column: str = "image"
    caption_column: str = "caption"
    id_column: str | None = None
    label_column: str | None = None
    group_column: str | None = None
    image_root: str | None = None  # a table's image paths are relative to this (default: the table's folder)
    caption_suffix: str = ".txt"  # an image folder's sidecar captions
    val_fraction: float = 0.1  # held out of a table or image folder when eval_root is None (seeded by `seed`)
    vqa: str | None = None  # VQA questions for eval task vqa (the synthetic benchmark has its own)

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class AugmentConfig:
    """Data-level views: per-modality medical presets, the laterality-aware flip, caption EDA.

    Example:
        >>> a = AugmentConfig(); a.strength, a.view1_strength, a.flip
        ('light', 'none', 'swap')
    """

    enabled: bool = True
    # the second (self-supervised, feature-level) view; medium keeps ITM 0.2 higher at 500 steps (docs/ARCHITECTURE.md)
    strength: Literal["light", "medium", "strong"] = "light"
    # the first view, which the cross-modal and fused terms see (ITC, ITM, MLM; SLIP's weak view): "none" = clean
    view1_strength: Literal["none", "light", "medium", "strong"] = "none"
    flip: Literal["swap", "allow", "forbid"] = "swap"  # LateralityAwareFlip mode: swap (flip + fix left/right)
    flip_p: float = 0.5
    text: bool = True  # negation- and laterality-safe caption augmentation for the second text view
    text_p: float = 0.5
    text_alpha: float = 0.1


@dataclass
class LossConfig:
    """UniMlipLoss: a weight per term (0 switches a term and its forward passes off).

    Example:
        >>> sorted(LossConfig().weights) == sorted(DEFAULT_WEIGHTS), LossConfig().image_ssl
        (True, 'ntxent')
    """

    weights: dict[Literal["itc", "itc_feature", "image_ssl", "text_ssl", "itm", "mlm"], float] = field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS))
    image_ssl: Literal["ntxent", "simsiam"] = "ntxent"
    itc_loss: Literal["infonce", "siglip"] = "infonce"  # siglip: the sigmoid loss with the model's logit_bias
    image_temperature: float = 0.1
    text_temperature: float = 0.2  # SimCSE at 0.05 falls to ~0.01 in a few dozen steps here (no signal left)


@dataclass
class TrainConfig:
    """Optimisation. ``max_steps`` counts optimizer steps (each ``grad_accum`` micro-batches of ``batch_size`` per rank).

    ``loggers`` (:data:`LOGGERS`) choose where the logged rows go besides the checkpointed history;
    ``wandb_project`` names the Weights & Biases project (``WANDB_MODE=offline`` works without network).
    ``accumulation`` says what ``grad_accum > 1`` means: ``gradcache`` (one big batch's loss, exactly) or
    ``plain`` (the mean of the micro-batches' losses).

    ``max_seconds`` (optional) is a training wall-time budget: the run stops at the first step boundary at
    or past ``max_seconds`` of training (evaluation excluded), or at ``max_steps``, whichever comes first.
    The warm-up + cosine schedule is then defined over the budget: its progress is
    ``max(step / max_steps, elapsed / max_seconds)`` (the multiplier of
    :func:`~unimlip_kit.train.cosine_with_warmup` at step ``max(step, elapsed / max_seconds · max_steps)``),
    so the lr reaches ``lr · min_lr_ratio`` when the budget runs out. A budgeted run depends on the machine's
    speed and is not reproducible step for step; resumed, the budget counts from the resume.

    ``warmup_steps=None`` (the default) warms up over 5% of ``max_steps``, at most 50 steps
    (:func:`~unimlip_kit.train.resolve_warmup`): 50 at the default 1000 steps, 3 for a 50-step run, whose
    learning rate would otherwise still be rising at its last step. The run writes the number it used into
    its ``config.yaml``, so ``--resume train.max_steps=...`` keeps it; the recipe logs the schedule and says
    when it is unusual (:func:`~unimlip_kit.train.schedule_notes`).

    Example:
        >>> t = TrainConfig(); t.batch_size, t.max_steps, t.lr, t.loggers, t.max_seconds
        (32, 1000, 0.001, ['csv'], None)
        >>> TrainConfig(max_seconds=0)
        Traceback (most recent call last):
        ...
        ValueError: train.max_seconds must be > 0 seconds or None (no budget), got 0
    """

    batch_size: int = 32
    grad_accum: int = 1
    # grad_accum > 1: gradcache = contrastive terms and ITM negatives over the whole accumulated batch
    # (unimlip_kit.gradcache, Gao et al. 2021); plain = each micro-batch's loss on its own
    accumulation: Literal["gradcache", "plain"] = "gradcache"
    max_steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.05
    # None: 5% of max_steps, at most 50 (resolve_warmup); the run saves the resolved number in config.yaml
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU (fp16 is not supported)
    log_every: int = 10
    ckpt_every: int = 100
    ckpt_every_minutes: float | None = None  # also checkpoint when this many minutes passed since the last one
    keep_checkpoints: int = 2
    loggers: list[Literal["csv", "tensorboard", "wandb"]] = field(default_factory=lambda: ["csv"])
    wandb_project: str = "unimlip_kit"
    max_seconds: float | None = None  # training wall-time budget (None: max_steps only); see the docstring
    # A NaN/inf loss term, model output or gradient (never applied to the weights): "stop" (checkpoint the
    # last good weights, then raise naming the step, term and lr) or "skip" the step, stopping after
    # max_nonfinite_steps such steps in a row.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_nonfinite_steps: int = 3
    # Validation during training on a seeded subset of val_pairs held-out pairs (retrieval R@1 and the
    # contrastive loss, logged as val_* beside the losses): every val_every steps and/or val_every_minutes.
    # keep_best: also save <run>/model_best/ (a from_pretrained folder) at the best mean val R@1.
    val_every: int | None = None
    val_every_minutes: float | None = None
    val_pairs: int = 256
    keep_best: bool = False

    def __post_init__(self) -> None:
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"train.max_seconds must be > 0 seconds or None (no budget), got {self.max_seconds}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"train.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0 or None (5% of max_steps, at most 50), "
                             f"got {self.warmup_steps}")
        if self.val_every is not None and self.val_every < 1:
            raise ValueError(f"train.val_every must be >= 1 step or None (no validation by steps), got {self.val_every}")
        if self.val_every_minutes is not None and not self.val_every_minutes > 0:
            raise ValueError(f"train.val_every_minutes must be > 0 or None, got {self.val_every_minutes}")
        if self.val_pairs < 2:
            raise ValueError(f"train.val_pairs must be >= 2 (retrieval needs a gallery), got {self.val_pairs}")
        if self.ckpt_every_minutes is not None and not self.ckpt_every_minutes > 0:
            raise ValueError(f"train.ckpt_every_minutes must be > 0 minutes or None (steps only), "
                             f"got {self.ckpt_every_minutes}")


def _default_eval() -> EvalConfig:
    return EvalConfig(batch_size=128, vqa_epochs=2, vqa_train_limit=2000, vqa_question_types=list(SYNTHETIC_IMAGE_QUESTIONS))


@dataclass
class RecipeConfig:
    """Everything a run needs; saved as ``config.yaml`` in the run folder.

    ``tokenizer``: ``wordpiece`` (trained on the training captions), ``bundled`` (BERT, 30522 tokens),
    an existing folder or a hub id ``owner/name``. Whichever it is, the run saves it in
    ``<run>/tokenizer/``; a folder or hub id is then recorded in ``config.yaml`` as ``tokenizer``, a path
    relative to the run folder, so the folder can be moved (:mod:`unimlip_kit.train.run`).

    Example:
        >>> from unimlip_kit.utils import load_config
        >>> cfg = load_config(RecipeConfig, None, ["train.lr=3e-4", "loss.weights.itm=0"])
        >>> cfg.train.lr, cfg.loss.weights["itm"], cfg.eval.batch_size, cfg.model.image_size
        (0.0003, 0.0, 128, 64)
    """

    seed: int = 0
    output_dir: str = "runs/uni_mlip_roco"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # wordpiece (trained on the training captions) | bundled (BERT, 30522) | an existing folder | a hub id owner/name
    tokenizer: Literal["wordpiece", "bundled"] | PathOrHubId = "wordpiece"
    wordpiece_vocab: int = 1000
    threads: int = 0  # torch CPU threads (0 = torch's default)
    progress: bool = True
    # the embedded run's towers, chosen by measurement (docs/ARCHITECTURE.md): a small ResNet with attention pooling
    model: UniMlipModelConfig = field(default_factory=lambda: UniMlipModelConfig(image_tower="resnet", image_pool="attn"))
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=_default_eval)
