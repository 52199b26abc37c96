"""Records of a run's data, the evaluation at the end of a run, and the evaluation of a saved run folder.

* :func:`load_records`: a split of ROCO or of the synthetic benchmark (rank 0 builds it, the others wait).
* :func:`load_run_data`: what a training run reads: training records and loader (a ROCO folder, the
  synthetic benchmark or WebDataset shards, :func:`~unimlip_kit.data.open_shards`) and the evaluation
  records (``data.eval_root``, by default ``data.root`` unless that is shards).
* :func:`evaluate_run`: what ``recipes/uni_mlip_roco.py`` prints at the end (the downstream suite of
  :func:`unimlip_kit.eval.evaluate_model` plus held-out ITM/MLM accuracy, :func:`unimlip_kit.eval.fused_metrics`).
* :func:`evaluate_run_folder`: what ``recipes/evaluate.py`` runs on a saved run folder. It reads only the
  splits its tasks use: retrieval and zero-shot the evaluation split, the linear probe the training split
  (skipped, saying why, when the folder has none), VQA the question files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.distributed as dist

from unimlip_kit.data import (FOLDER_LABELS, ImageTextDataset, ImageTextRecord, SkipCounter, align_labels, build_dataloader,
                              build_synthetic_dataset, conversion_skips, describe_source, hold_out, open_shards,
                              read_roco, read_shard_metadata, read_source, roco_split_dir, source_kind)
from unimlip_kit.distributed import get_rank, is_distributed
from unimlip_kit.eval import (EvalConfig, evaluate_model, fused_metrics, read_slake, read_synthetic_vqa, read_vqa_rad,
                              read_vqa_source, synthetic_class_prompts)
from unimlip_kit.train.config import RecipeConfig
from unimlip_kit.train.views import BatchMaker
from unimlip_kit.eval.suite import seeded_subset
from unimlip_kit.utils import derive_seed, save_json

__all__ = ["BEST_MODEL", "RunData", "RunPairs", "VAL_KEYS", "Validation", "evaluate_run", "evaluate_run_folder", "load_records", "load_run_data",
           "load_run_vqa", "read_run_pairs", "validate"]


def _data_root(cfg: RecipeConfig, progress: bool = False) -> Path:
    root = cfg.data.root
    if root is not None:
        return Path(root)
    if get_rank() == 0:
        build_synthetic_dataset(cfg.data.synthetic, cfg.data.cache_dir, progress=progress and cfg.progress)
    if is_distributed():
        dist.barrier()
    return Path(build_synthetic_dataset(cfg.data.synthetic, cfg.data.cache_dir))


def load_records(cfg: RecipeConfig, split: str, skips: SkipCounter, limit: int | None) -> list[Any]:
    """Records of ``split`` from ROCO (``cfg.data.root``) or the synthetic benchmark (built once, then cached).

    Example:
        >>> import tempfile
        >>> from unimlip_kit.utils import load_config
        >>> cfg = load_config(RecipeConfig, None, [f"data.cache_dir={tempfile.mkdtemp()}", "data.synthetic.n_train=4",
        ...     "data.synthetic.n_validation=1", "data.synthetic.n_test=2", "data.synthetic.image_size=16", "progress=false"])
        >>> len(load_records(cfg, "test", SkipCounter(), None)), len(load_records(cfg, "train", SkipCounter(), 3))
        (2, 3)
    """
    return read_roco(_data_root(cfg, progress=True), split, skips=skips, limit=limit)


def _columns(cfg: RecipeConfig) -> dict[str, Any]:
    d = cfg.data
    return {"image_column": d.image_column, "caption_column": d.caption_column, "id_column": d.id_column,
            "label_column": d.label_column, "group_column": d.group_column, "image_root": d.image_root,
            "caption_suffix": d.caption_suffix}


def _read_eval_root(cfg: RecipeConfig, skips: SkipCounter) -> tuple[list[Any], str]:
    """The pairs of ``data.eval_root`` (a ROCO checkout's ``eval_split``, or all of a table or image folder)."""
    data = cfg.data
    kind = source_kind(data.eval_root)
    if kind == "shards":
        raise ValueError(f"data.eval_root={data.eval_root!r} is shards; evaluation reads image files: give a table, "
                         f"an image folder or the ROCO folder the shards were written from (shards are for training)")
    if kind == "roco":
        if not _has_split(Path(data.eval_root), data.eval_split):
            raise FileNotFoundError(f"data.eval_root={data.eval_root} has no {data.eval_split} split "
                                    f"({roco_split_dir(data.eval_root, data.eval_split)}/captions.txt)")
        return (read_roco(data.eval_root, data.eval_split, skips=skips, limit=data.limit_eval),
                f"the {data.eval_split} split of {data.eval_root}")
    columns = _columns(cfg)
    if kind == "folder" and columns["label_column"] not in (None, FOLDER_LABELS):
        columns["label_column"] = None  # a table's label column names nothing in a folder: read it unlabelled
    held = read_source(data.eval_root, skips=skips, **columns)
    what = f"all of {data.eval_root} ({describe_source(kind)})"
    if data.limit_eval is not None and len(held) > data.limit_eval:
        held = seeded_subset(held, data.limit_eval, cfg.seed, "limit_eval")
        what = f"{len(held)} pairs of {data.eval_root} ({describe_source(kind)}, a seeded data.limit_eval subset)"
    return held, what


class RunPairs(NamedTuple):
    """What :func:`read_run_pairs` returns: the run's training and held-out pairs, the class names, where they came from.

    Attributes:
        train_records: the training pairs (``data.limit_train`` applied).
        eval_records: the held-out pairs (``data.limit_eval`` applied); ``[]`` for shards without ``eval_root``.
        class_names: class names by label index when the labels came from names (a label column of names,
            class folders), else ``None``.
        info: ``{"source": kind, "validation": how the held-out pairs were chosen, ...}`` for logs and
            ``metrics.json``.

    Example:
        >>> RunPairs([], [], None, {"source": "roco"}).info["source"]
        'roco'
    """

    train_records: list[Any]
    eval_records: list[Any]
    class_names: list[str] | None
    info: dict[str, Any]


def read_run_pairs(cfg: RecipeConfig, skips: SkipCounter) -> RunPairs:
    """The training and held-out pairs of a run on any non-shard source (:class:`~unimlip_kit.train.DataConfig`).

    ROCO and the synthetic benchmark give ``train_split`` and ``eval_split``. A table or image folder
    (``data.root``) trains on all of it when ``data.eval_root`` names the held-out pairs, else on what is
    left after :func:`~unimlip_kit.data.hold_out` keeps ``data.val_fraction`` of it (seed ``cfg.seed``):
    the same split every time, in training and in ``recipes/evaluate.py``. Named labels are aligned
    across the two (:func:`~unimlip_kit.data.align_labels`).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from unimlip_kit.utils import load_config
        >>> d = Path(tempfile.mkdtemp())
        >>> for i in range(10): Image.new("L", (4, 4)).save(d / f"{i}.png")
        >>> _ = (d / "p.csv").write_text("image,caption,dx\\n" + "".join(f"{i}.png,CT {i}.,{'ab'[i % 2]}\\n" for i in range(10)))
        >>> cfg = load_config(RecipeConfig, None, [f"data.root={d / 'p.csv'}", "data.label_column=dx", "data.val_fraction=0.2"])
        >>> pairs = read_run_pairs(cfg, SkipCounter())
        >>> len(pairs.train_records), len(pairs.eval_records), pairs.class_names, pairs.info["validation"]
        (8, 2, ['a', 'b'], 'held out: 2 of 10 pairs (data.val_fraction=0.2, seed 0)')
    """
    data = cfg.data
    kind = source_kind(data.root)
    if kind == "shards":
        raise ValueError(f"data.root={data.root!r} is shards: they are streamed (load_run_data), not read as records")
    info: dict[str, Any] = {"source": kind, "root": data.root, "eval_root": data.eval_root}
    if kind in ("synthetic", "roco"):
        train = load_records(cfg, data.train_split, skips, data.limit_train)
    else:
        train = read_source(data.root, skips=skips, **_columns(cfg))
    if data.eval_root is not None:
        held, info["validation"] = _read_eval_root(cfg, skips)
    elif kind in ("table", "folder"):
        everything = train
        train, held = hold_out(everything, data.val_fraction, cfg.seed)
        info["validation"] = (f"held out: {len(held)} of {len(everything)} pairs (data.val_fraction={data.val_fraction}, "
                              f"seed {cfg.seed})")
        if data.group_column and kind == "table":
            info["validation"] += f", by {data.group_column}"
        if data.limit_eval is not None and len(held) > data.limit_eval:  # the rest trains: no pair is left unused
            kept = {r.id for r in seeded_subset(held, data.limit_eval, cfg.seed, "limit_eval")}
            train = [r for r in everything if r.id not in kept]
            info["validation"] += (f"; {len(kept)} of them evaluated (data.limit_eval), {len(held) - len(kept)} "
                                   f"returned to training")
            held = [r for r in held if r.id in kept]
    else:
        held = load_records(cfg, data.eval_split, skips, data.limit_eval)
        info["validation"] = f"the {data.eval_split} split of {data.root or 'the synthetic benchmark'}"
    if kind in ("table", "folder") and data.limit_train is not None:  # after the hold-out: it never moves the split
        train = seeded_subset(train, data.limit_train, cfg.seed, "limit_train")
    (train, held), names = align_labels(train, held)
    return RunPairs(train, held, names, info)


class RunData(NamedTuple):
    """What :func:`load_run_data` returns.

    Attributes:
        train_records: the training pairs (from shards: their metadata, ``image_path`` = ``<shard>#<key>``).
        loader: the training batches, a :func:`~unimlip_kit.data.build_dataloader` or a
            :class:`~unimlip_kit.data.ShardLoader` (both resumable by :class:`~unimlip_kit.data.StepStream`).
        eval_records: the held-out pairs (``[]`` when there is no evaluation source).
        probe_records: labelled training images for the linear probe (from shards: the evaluation
            source's training split, if it has one).
        eval_dataset: ``eval_records`` as an :class:`~unimlip_kit.data.ImageTextDataset`.
        eval_skipped: why evaluation cannot run (``None``: it can).
        shards: whether training reads shards.
        class_names: class names by label index for zero-shot (:attr:`RunPairs.class_names`).
        info: where the pairs came from (:attr:`RunPairs.info`, plus ``skipped_while_converting`` for shards,
            ``validated_on`` for validation during training).
        val_records: the pairs validation during training uses (``train.val_every``): ROCO's and the synthetic
            benchmark's ``validation`` split, so that ``model_best`` is not chosen on the test split; a table's
            or folder's held-out pairs (they are also the final evaluation's); ``None`` when not validating.

    Example:
        >>> RunData([], None, [], [], None, "no eval source", True).eval_skipped
        'no eval source'
    """

    train_records: list[Any]
    loader: Any
    eval_records: list[Any]
    probe_records: list[Any]
    eval_dataset: Any
    eval_skipped: str | None
    shards: bool
    class_names: list[str] | None = None
    info: dict[str, Any] | None = None
    val_records: list[Any] | None = None


def load_run_data(cfg: RecipeConfig, skips: SkipCounter, rank: int = 0, world_size: int = 1) -> RunData:
    """Training records and loader, held-out records: ``data.root`` (any source) and ``data.eval_root``.

    Every source but shards is read by :func:`read_run_pairs` (the hold-out of a table or folder is
    defined there). Shards (``data.root`` a shard folder, ``.tar`` or brace pattern) are read by
    :func:`~unimlip_kit.data.open_shards` with the run's seed, rank and world size (split by shard,
    ``drop_last``) and their captions by :func:`~unimlip_kit.data.read_shard_metadata` (the tokenizer's
    vocabulary); ``data.train_split`` and ``limit_train`` do not apply to them, and what the conversion
    skipped (their ``index.json``) is added to ``skips``. With shards, evaluation reads ``data.eval_root``
    (a ROCO folder, a table or an image folder); none means the evaluation is skipped with ``eval_skipped``
    saying why.

    Example:
        >>> import tempfile
        >>> from unimlip_kit.utils import load_config
        >>> cfg = load_config(RecipeConfig, None, [f"data.cache_dir={tempfile.mkdtemp()}", "data.synthetic.n_train=4",
        ...     "data.synthetic.n_validation=1", "data.synthetic.n_test=2", "data.synthetic.image_size=16",
        ...     "progress=false", "train.batch_size=2"])
        >>> d = load_run_data(cfg, SkipCounter())
        >>> len(d.train_records), len(d.loader), len(d.eval_records), d.eval_skipped, d.shards, d.info["source"]
        (4, 2, 2, None, False, 'synthetic')
    """
    data, size, channels = cfg.data, cfg.model.image_size, cfg.model.image_channels
    shards = source_kind(data.root) == "shards"
    reason = None
    if shards:
        if data.limit_train is not None:
            raise ValueError(f"data.limit_train={data.limit_train} does not apply to shards (data.root={data.root!r}): "
                             f"write fewer shards or unset it")
        train_recs = [ImageTextRecord(m["id"], Path(f"{m['shard']}#{m['key']}"), m["caption"], label=m["label"],
                                      group=m["group"] or "", modality=m["modality"]) for m in read_shard_metadata(data.root)]
        loader = open_shards(data.root, cfg.train.batch_size, image_size=size, channels=channels, seed=cfg.seed,
                             rank=rank, world_size=world_size, num_workers=data.num_workers, drop_last=True, skips=skips)
        converted = conversion_skips(data.root, skips)
        eval_recs: list[Any] = []
        probe_recs: list[Any] = []
        names = None
        info: dict[str, Any] = {"source": "shards", "root": data.root, "eval_root": data.eval_root,
                                "skipped_while_converting": converted}
        if data.eval_root is None:
            reason = f"training reads shards ({data.root}) and data.eval_root names no evaluation folder"
            info["validation"] = None
        else:
            eval_recs, info["validation"] = _read_eval_root(cfg, skips)
            (eval_recs,), names = align_labels(eval_recs)
            if source_kind(data.eval_root) == "roco" and _has_split(Path(data.eval_root), data.train_split):
                probe_recs = read_roco(data.eval_root, data.train_split, skips=skips)
    else:
        pairs = read_run_pairs(cfg, skips)
        train_recs, eval_recs, names, info = pairs
        probe_recs = train_recs
        loader = build_dataloader(ImageTextDataset(train_recs, image_size=size, channels=channels, skips=skips),
                                  cfg.train.batch_size, seed=cfg.seed, rank=rank, world_size=world_size,
                                  num_workers=data.num_workers, drop_last=True)
    eval_ds = ImageTextDataset(eval_recs, image_size=size, channels=channels, skips=skips)
    val_recs = None
    if cfg.train.val_every is not None or cfg.train.val_every_minutes is not None:
        val_recs, info["validated_on"] = eval_recs, f"the evaluation pairs ({info.get('validation')})"
        kind = info["source"]
        if kind in ("synthetic", "roco") and data.eval_root is None and data.eval_split != "validation":
            root = _data_root(cfg) if kind == "synthetic" else Path(data.root)
            if _has_split(root, "validation"):
                val_recs = read_roco(root, "validation", skips=skips)
                info["validated_on"] = f"the validation split of {data.root or 'the synthetic benchmark'}"
    return RunData(train_recs, loader, eval_recs, probe_recs, eval_ds, reason, shards, names, info, val_recs)


def evaluate_run(model: torch.nn.Module, cfg: RecipeConfig, maker: BatchMaker, train_recs: Sequence[Any],
                 eval_recs: Sequence[Any], eval_ds: Any, vqa: tuple[list, list], device: torch.device,
                 skips: SkipCounter, skip_reason: str | None = None,
                 class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The held-out evaluation printed at the end of a run (eval mode, clean images, all tokens).

    Retrieval (plain and meaning-level R@1, the ceiling), zero-shot and linear-probe accuracy over the
    finding classes, VQA after fine-tuning beside the same head on an untrained model
    (:func:`unimlip_kit.eval.evaluate_model`), and held-out ITM / MLM accuracy with hard negatives drawn
    as in training (:func:`unimlip_kit.eval.fused_metrics`). ``skip_reason`` (no evaluation source) skips
    every task, saying why. On the user's data, zero-shot uses ``class_names`` (:attr:`RunData.class_names`)
    as prompts and VQA the questions of ``data.vqa`` (``vqa``), all question types.

    Example:
        >>> from unimlip_kit.utils import load_config
        >>> cfg = load_config(RecipeConfig, None, ["eval.tasks=[]", "loss.weights.itm=0", "loss.weights.mlm=0"])
        >>> sorted(evaluate_run(torch.nn.Linear(1, 1), cfg, None, [], [], None, ([], []), torch.device("cpu"), SkipCounter()))
        ['seconds', 'skipped']
    """
    model.eval()
    if skip_reason is not None:
        fused = [t for t in ("itm", "mlm") if cfg.loss.weights.get(t, 0) > 0]
        return {"skipped": {t: skip_reason for t in list(cfg.eval.tasks) + (["fused"] if fused else [])}}

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        return maker.tokens(list(texts))

    synthetic = cfg.data.root is None
    names, prompts = synthetic_class_prompts(cfg.eval.prompts_per_scene, cfg.eval.seed) if synthetic else \
        (list(class_names) if class_names else None, None)
    own_vqa = cfg.data.vqa is not None
    ecfg = dataclasses.replace(cfg.eval, tasks=[t for t in cfg.eval.tasks if t != "vqa" or synthetic or own_vqa],
                               vqa_question_types=cfg.eval.vqa_question_types if not own_vqa else None)
    out = evaluate_model(model, tokenize, train_records=train_recs, eval_records=eval_recs,
                         image_size=cfg.model.image_size, channels=cfg.model.image_channels, class_names=names,
                         class_prompts=prompts, vqa_train=vqa[0], vqa_test=vqa[1], cfg=ecfg, progress=cfg.progress)
    if "retrieval" in out:
        out["retrieval"]["gallery"] = out["eval_images"]
    fused = [t for t in ("itm", "mlm") if cfg.loss.weights.get(t, 0) > 0]
    if fused:
        loader = build_dataloader(eval_ds, cfg.train.batch_size, shuffle=False, num_workers=cfg.data.num_workers)

        def batches():
            for raw in loader:
                skips.update_from_batch(raw)
                if len(raw["ids"]) >= 2:
                    t = maker.tokens(list(raw["captions"]))
                    yield {"images": raw["images"].to(device), "group_ids": raw["group_ids"].to(device),
                           **{k: v.to(device) for k, v in t.items()}}

        gen = torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, "eval-fused"))
        out["fused"] = fused_metrics(model, batches(), terms=tuple(fused), generator=gen)
    return out


def load_run_vqa(cfg: RecipeConfig, skips: SkipCounter) -> tuple[list[Any], list[Any]]:
    """``(train, test)`` VQA questions of a run: the synthetic benchmark's, or ``data.vqa``'s (any VQA source).

    Only read when ``vqa`` is among ``eval.tasks``; a real-data run without ``data.vqa`` has none.

    Example:
        >>> from unimlip_kit.utils import load_config
        >>> load_run_vqa(load_config(RecipeConfig, None, ["eval.tasks=[retrieval]"]), SkipCounter())
        ([], [])
    """
    if "vqa" not in cfg.eval.tasks:
        return [], []
    if cfg.data.vqa is not None:
        return read_vqa_source(cfg.data.vqa, skips=skips)
    if cfg.data.root is None:  # the synthetic questions (cached set)
        root = build_synthetic_dataset(cfg.data.synthetic, cfg.data.cache_dir)
        return read_synthetic_vqa(root, cfg.data.train_split), read_synthetic_vqa(root, cfg.data.eval_split)
    return [], []


#: ``train.keep_best``: the run folder's copy of the model at the best ``val_R@1``.
BEST_MODEL = "model_best"
#: The keys :func:`validate` adds to a history row.
VAL_KEYS = ("val_R@1", "val_R@1_i2t", "val_R@1_t2i", "val_itc")


def validate(model: torch.nn.Module, maker: BatchMaker, records: Sequence[Any], cfg: RecipeConfig,
             skips: SkipCounter | None = None) -> dict[str, float]:
    """Validation during training on ``records`` (a bounded, seeded subset of the held-out pairs): :data:`VAL_KEYS`.

    Clean images and captions in eval mode: image→text and text→image R@1 (:func:`~unimlip_kit.eval.retrieval_metrics`),
    their mean ``val_R@1`` (what ``train.keep_best`` ranks by), and ``val_itc``, the symmetric InfoNCE
    ``½ (CE(s·I·Tᵀ) + CE(s·T·Iᵀ))`` at the model's logit scale ``s`` (CLIP's validation loss). The random
    streams are forked, so validating never changes the training that follows (bit-identical resume holds).

    Example:
        >>> from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
        >>> from unimlip_kit.text import train_wordpiece_tokenizer
        >>> from unimlip_kit.utils import load_config
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp())
        >>> for i in range(4): Image.new("L", (16, 16), 60 * i).save(d / f"{i}.png")
        >>> recs = [ImageTextRecord(str(i), d / f"{i}.png", f"CT scan number {i}.") for i in range(4)]
        >>> cfg = load_config(RecipeConfig, None, ["model.image_size=16", "model.patch_size=8"])
        >>> tok = train_wordpiece_tokenizer([r.caption for r in recs], 60)
        >>> model = UniMlipModel(dataclasses.replace(cfg.model, vocab_size=len(tok), vision_layers=1, text_layers=1))
        >>> v = validate(model, BatchMaker(cfg, tok, torch.device("cpu")), recs, cfg)
        >>> sorted(v), 0 <= v["val_R@1"] <= 1, v["val_itc"] > 0
        (['val_R@1', 'val_R@1_i2t', 'val_R@1_t2i', 'val_itc'], True, True)
    """
    from unimlip_kit.eval import retrieval_metrics
    from unimlip_kit.eval.embed import encode_loader

    ds = ImageTextDataset(list(records), image_size=cfg.model.image_size, channels=cfg.model.image_channels,
                          skips=skips if skips is not None else SkipCounter())
    loader = build_dataloader(ds, cfg.eval.batch_size, shuffle=False, num_workers=0)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        ev = encode_loader(model, lambda t: maker.tokens(list(t)), loader, text=True, progress=False, desc="validate")
        img, txt = ev["image_emb"].double(), ev["text_emb"].double()
        r = retrieval_metrics(img, txt)
        scale = float(model.logit_scale().detach()) if hasattr(model, "logit_scale") else 1.0
        logits = scale * torch.nn.functional.normalize(img, dim=1) @ torch.nn.functional.normalize(txt, dim=1).T
        target = torch.arange(len(logits))
        itc = 0.5 * (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target))
    i2t, t2i = float(r["i2t"]["R@1"]), float(r["t2i"]["R@1"])
    return {"val_R@1": (i2t + t2i) / 2, "val_R@1_i2t": i2t, "val_R@1_t2i": t2i, "val_itc": float(itc)}


class Validation:
    """Validation during training: when it is due (``train.val_every`` steps, ``train.val_every_minutes``), on what
    (a seeded subset of ``train.val_pairs`` held-out pairs) and the best model so far (``train.keep_best``).

    The best is the highest ``val_R@1`` in the run's history, so a resumed run knows it from its checkpoint (and
    from ``model_best/best.json``, for validations after the last checkpoint); ``save_best(folder)`` writes the
    model into a hidden folder that then replaces ``<run>/model_best/`` (a ``from_pretrained`` folder with
    ``best.json``: step and metrics) by renames, the old best kept until the new one is in place, so a killed
    run leaves one complete best. ``seconds`` is the time spent validating, which a time budget leaves out.

    Example:
        >>> from unimlip_kit.utils import load_config
        >>> cfg = load_config(RecipeConfig, None, ["train.val_every=5"])
        >>> v = Validation(cfg, [object()] * 3, history=[{"step": 5, "val_R@1": 0.25}])
        >>> v.enabled, v.due(5, last=False), v.due(7, last=False), v.due(7, last=True), v.best
        (True, True, False, True, 0.25)
    """

    def __init__(self, cfg: RecipeConfig, eval_records: Sequence[Any], *, history: Sequence[dict] = (),
                 save_best: Any = None, run_dir: str | Path | None = None, resumed: bool = False) -> None:
        t = cfg.train
        self.cfg = cfg
        self.enabled = bool(eval_records) and (t.val_every is not None or t.val_every_minutes is not None)
        self.records = seeded_subset(eval_records, t.val_pairs, cfg.seed, "validation") if self.enabled else []
        self.best = max((h["val_R@1"] for h in history if "val_R@1" in h), default=float("-inf"))
        self.save_best = save_best if t.keep_best else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seconds = 0.0  # spent validating: the recipe's time budget does not count it
        self._t_last = time.time()
        if self.run_dir is not None:
            final, old = self.run_dir / BEST_MODEL, self.run_dir / f".old-{BEST_MODEL}"
            if old.is_dir() and not final.exists():  # killed between the two renames: the old best is the best
                os.replace(old, final)
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(self.run_dir / f".tmp-{BEST_MODEL}", ignore_errors=True)
            best_json = final / "best.json"
            if resumed and best_json.is_file():  # validated after the last checkpoint: that best stands too
                try:
                    self.best = max(self.best, float(json.loads(best_json.read_text())["val_R@1"]))
                except (OSError, ValueError, KeyError, TypeError):
                    pass

    def notes(self, where: str = "") -> list[str]:
        """What the run logs before training: when and on what it validates, and what is unusual about it.

        Example:
            >>> from unimlip_kit.utils import load_config
            >>> Validation(load_config(RecipeConfig, None, ["train.keep_best=true"]), []).notes()
            ['[val] note: train.keep_best keeps the best validated model, but this run does not validate (set --val-every or train.val_every_minutes)']
        """
        t = self.cfg.train
        asked = t.val_every is not None or t.val_every_minutes is not None
        out = []
        if self.enabled:
            when = ([f"{t.val_every} steps"] if t.val_every is not None else []) + \
                ([f"{t.val_every_minutes:g} min"] if t.val_every_minutes is not None else [])
            kept = f"; the best model is kept in {self.run_dir / BEST_MODEL}" if t.keep_best and self.run_dir else ""
            out.append(f"[val] on {len(self.records)} pairs of {where} every {' or '.join(when)}{kept}")
            if len(self.records) < 10:
                out.append(f"[val] note: {len(self.records)} validation pairs make a coarse R@1 (steps of "
                           f"{1 / max(1, len(self.records)):.2f}); hold out more (data.val_fraction) for a useful one")
        elif asked:
            out.append("[val] no held-out pairs: no validation during training")
        if t.keep_best and not self.enabled:
            out.append("[val] note: train.keep_best keeps the best validated model, but this run does not validate "
                       "(set --val-every or train.val_every_minutes)")
        return out

    def due(self, step: int, last: bool) -> bool:
        """Whether to validate after ``step`` (every ``val_every`` steps, after ``val_every_minutes``, and at the end)."""
        if not self.enabled:
            return False
        t = self.cfg.train
        timed = t.val_every_minutes is not None and time.time() - self._t_last >= 60 * t.val_every_minutes
        return last or timed or (t.val_every is not None and step % t.val_every == 0)

    def __call__(self, model: torch.nn.Module, maker: BatchMaker, step: int, skips: SkipCounter | None = None
                 ) -> dict[str, float]:
        """Validate now (:func:`validate`); keep the model as the best when ``val_R@1`` beats every earlier one."""
        t0 = time.time()
        out = validate(model, maker, self.records, self.cfg, skips)
        if self.save_best is not None and self.run_dir is not None and out["val_R@1"] > self.best:
            final, tmp, old = (self.run_dir / BEST_MODEL, self.run_dir / f".tmp-{BEST_MODEL}",
                               self.run_dir / f".old-{BEST_MODEL}")
            shutil.rmtree(tmp, ignore_errors=True)
            self.save_best(tmp)
            save_json(tmp / "best.json", {"step": step, **out})
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)  # from here on the new best is in place; the old one is removed after
            shutil.rmtree(old, ignore_errors=True)
        self._t_last = time.time()
        self.seconds += self._t_last - t0
        self.best = max(self.best, out["val_R@1"])
        return out


def _has_split(root: Path, split: str) -> bool:
    return (roco_split_dir(root, split) / "captions.txt").is_file()


def evaluate_run_folder(model: torch.nn.Module, tokenize: Any, rcfg: RecipeConfig, cfg: EvalConfig, *,
                        data_root: str | Path | None = None, class_names: Sequence[str] | None = None,
                        vqa_rad: str | Path | None = None, slake: str | Path | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Evaluate a loaded run (:func:`~unimlip_kit.train.load_run`) on the tasks of ``cfg``, reading only the splits they use.

    ``data_root`` (default: the run's own data, the synthetic benchmark when it had none) is any source of
    :func:`~unimlip_kit.data.source_kind` but shards. A ROCO-layout folder gives retrieval and zero-shot
    ``cfg.eval_split`` and the linear probe the run's training split (skipped, saying so, when the folder
    has none). A table or image folder given here is evaluated as a whole, read with the run's column
    settings. Without ``data_root``, a run on a table or image folder (or with ``data.eval_root``) is
    evaluated on the very pairs it held out (:func:`read_run_pairs`), the probe trained on its training
    pairs, and zero-shot uses its class names unless ``class_names`` is given. VQA uses the synthetic
    questions, the run's ``data.vqa``, or VQA-RAD (``vqa_rad``, the JSON file) / SLAKE (``slake``, its
    folder). Returns :func:`~unimlip_kit.eval.evaluate_model`'s dict plus ``"data"`` (where the records came from).

    Example:
        >>> import tempfile
        >>> evaluate_run_folder(None, None, RecipeConfig(), EvalConfig(tasks=["retrieval"]), data_root=tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        ValueError: ... is none of: a table (.csv, .tsv, ...), shards, a ROCO checkout (data/<split>/radiology/captions.txt) or a folder of images with .txt captions
    """
    skips = SkipCounter()
    tasks = set(cfg.tasks)
    eval_records: list[Any] = []
    train_records: list[Any] = []
    missing: dict[str, str] = {}
    kind = source_kind(data_root) if data_root is not None else None
    run_kind = source_kind(rcfg.data.root) if data_root is None else None  # the run's data only when it is used
    synthetic = data_root is None and run_kind == "synthetic" and rcfg.data.eval_root is None
    names: list[str] | None = None
    root: Any = data_root
    if kind == "shards" or (kind is None and run_kind == "shards" and rcfg.data.eval_root is None):
        raise ValueError(f"{data_root or rcfg.data.root} is shards; evaluation reads image files: pass --data-root "
                         f"with a table, an image folder or a ROCO folder")
    if kind is None and (run_kind in ("table", "folder", "shards") or rcfg.data.eval_root is not None):
        if run_kind == "shards":  # the shards' own evaluation source, and ROCO's training split for the probe
            eval_records, root = _read_eval_root(rcfg, skips)
            (eval_records,), names = align_labels(eval_records)
            ev = rcfg.data.eval_root
            if "linear_probe" in tasks and source_kind(ev) == "roco" and _has_split(Path(ev), rcfg.data.train_split):
                train_records = read_roco(ev, rcfg.data.train_split, skips=skips)
            elif "linear_probe" in tasks:
                missing["linear_probe"] = f"{ev} has no training split to train the probe on (the run read shards)"
        else:
            train_records, eval_records, names, info = read_run_pairs(rcfg, skips)
            root = info["validation"]
    elif kind in ("table", "folder"):
        (eval_records,), names = align_labels(read_source(data_root, skips=skips, **_columns(rcfg)))
        if "linear_probe" in tasks:
            missing["linear_probe"] = (f"{data_root} is evaluated as a whole, so no training images for the probe: "
                                       f"evaluate without --data-root to use the run's own split")
    else:
        root = Path(data_root) if data_root is not None else (Path(rcfg.data.root) if rcfg.data.root is not None else None)
        if synthetic:
            root = Path(build_synthetic_dataset(rcfg.data.synthetic, rcfg.data.cache_dir, progress=progress))
        if tasks & {"retrieval", "zero_shot", "linear_probe"}:
            if not _has_split(root, cfg.eval_split):
                raise FileNotFoundError(f"{root} has no {cfg.eval_split!r} split ({roco_split_dir(root, cfg.eval_split)}/"
                                        f"captions.txt), needed by {sorted(tasks & {'retrieval', 'zero_shot', 'linear_probe'})}")
            eval_records = read_roco(root, cfg.eval_split, skips=skips)
        if "linear_probe" in tasks:
            if _has_split(root, rcfg.data.train_split):
                train_records = read_roco(root, rcfg.data.train_split, skips=skips)
            else:
                missing["linear_probe"] = f"{root} has no {rcfg.data.train_split!r} split to train the probe on"
    class_names = class_names or names

    class_prompts = None
    vqa_train: list[Any] = []
    vqa_test: list[Any] = []
    vqa_source = None
    if synthetic:
        class_names, class_prompts = synthetic_class_prompts(cfg.prompts_per_scene, cfg.seed)
        if "vqa" in tasks:
            vqa_train = read_synthetic_vqa(root, "train", skips=skips)
            vqa_test = read_synthetic_vqa(root, "test", skips=skips)
            vqa_source = "synthetic"
    if "vqa" in tasks and vqa_rad is not None:
        vqa_train = read_vqa_rad(vqa_rad, split="train", skips=skips)
        vqa_test = read_vqa_rad(vqa_rad, split="test", skips=skips)
        vqa_source = "vqa-rad"
    elif "vqa" in tasks and slake is not None:
        vqa_train = read_slake(Path(slake) / "train.json", skips=skips)
        vqa_test = read_slake(Path(slake) / "test.json", skips=skips)
        vqa_source = "slake"
    elif "vqa" in tasks and rcfg.data.vqa is not None:
        vqa_train, vqa_test = read_vqa_source(rcfg.data.vqa, skips=skips)
        vqa_source = str(rcfg.data.vqa)
    if vqa_source not in (None, "synthetic"):  # the synthetic lesion question types do not apply
        cfg = dataclasses.replace(cfg, vqa_question_types=None)

    ecfg = dataclasses.replace(cfg, tasks=[t for t in cfg.tasks if t not in missing])
    metrics = evaluate_model(
        model, tokenize, train_records=train_records, eval_records=eval_records,
        image_size=rcfg.model.image_size, channels=rcfg.model.image_channels,
        class_names=list(class_names) if class_names else None, class_prompts=class_prompts, vqa_train=vqa_train,
        vqa_test=vqa_test, cfg=ecfg, progress=progress,
    )
    metrics["skipped"].update(missing)
    metrics["data"] = {"root": str(root), "synthetic": synthetic, "skipped_while_reading": skips.total,
                       "vqa_source": vqa_source}
    return metrics
