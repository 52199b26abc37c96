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
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.distributed as dist

from unimlip_kit.data import (ImageTextDataset, ImageTextRecord, SkipCounter, build_dataloader, build_synthetic_dataset,
                              is_shard_source, open_shards, read_roco, read_shard_metadata, roco_split_dir)
from unimlip_kit.distributed import get_rank, is_distributed
from unimlip_kit.eval import (EvalConfig, evaluate_model, fused_metrics, read_slake, read_synthetic_vqa, read_vqa_rad,
                              synthetic_class_prompts)
from unimlip_kit.train.config import RecipeConfig
from unimlip_kit.train.views import BatchMaker
from unimlip_kit.utils import derive_seed

__all__ = ["RunData", "evaluate_run", "evaluate_run_folder", "load_records", "load_run_data"]


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


class RunData(NamedTuple):
    """What :func:`load_run_data` returns.

    Attributes:
        train_records: the training pairs (from shards: their metadata, ``image_path`` = ``<shard>#<key>``).
        loader: the training batches, a :func:`~unimlip_kit.data.build_dataloader` or a
            :class:`~unimlip_kit.data.ShardLoader` (both resumable by :class:`~unimlip_kit.data.StepStream`).
        eval_records: the evaluation split's pairs (``[]`` when there is no evaluation source).
        probe_records: labelled training images for the linear probe (from shards: the evaluation
            source's training split, if it has one).
        eval_dataset: ``eval_records`` as an :class:`~unimlip_kit.data.ImageTextDataset`.
        eval_skipped: why evaluation cannot run (``None``: it can).
        shards: whether training reads shards.

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


def load_run_data(cfg: RecipeConfig, skips: SkipCounter, rank: int = 0, world_size: int = 1) -> RunData:
    """Training records and loader, evaluation records: ``data.root`` (ROCO, synthetic or shards) and ``data.eval_root``.

    Shards (``data.root`` a shard folder, ``.tar`` or brace pattern) are read by
    :func:`~unimlip_kit.data.open_shards` with the run's seed, rank and world size (split by shard,
    ``drop_last``) and their captions by :func:`~unimlip_kit.data.read_shard_metadata` (the tokenizer's
    vocabulary); ``data.train_split`` and ``limit_train`` do not apply to them. Evaluation reads
    ``data.eval_root`` (a ROCO folder), by default ``data.root`` unless that is shards, where no
    ``eval_root`` means the evaluation is skipped with ``eval_skipped`` saying why.

    Example:
        >>> import tempfile
        >>> from unimlip_kit.utils import load_config
        >>> cfg = load_config(RecipeConfig, None, [f"data.cache_dir={tempfile.mkdtemp()}", "data.synthetic.n_train=4",
        ...     "data.synthetic.n_validation=1", "data.synthetic.n_test=2", "data.synthetic.image_size=16",
        ...     "progress=false", "train.batch_size=2"])
        >>> d = load_run_data(cfg, SkipCounter())
        >>> len(d.train_records), len(d.loader), len(d.eval_records), d.eval_skipped, d.shards
        (4, 2, 2, None, False)
    """
    data, size, channels = cfg.data, cfg.model.image_size, cfg.model.image_channels
    shards = data.root is not None and is_shard_source(data.root)
    if data.eval_root is not None and is_shard_source(data.eval_root):
        raise ValueError(f"data.eval_root={data.eval_root!r} is shards; evaluation reads image files: give the ROCO "
                         f"folder the shards were written from (shards are for training)")
    if shards:
        if data.limit_train is not None:
            raise ValueError(f"data.limit_train={data.limit_train} does not apply to shards (data.root={data.root!r}): "
                             f"write fewer shards or unset it")
        train_recs = [ImageTextRecord(m["id"], Path(f"{m['shard']}#{m['key']}"), m["caption"], label=m["label"],
                                      group=m["group"] or "", modality=m["modality"]) for m in read_shard_metadata(data.root)]
        loader = open_shards(data.root, cfg.train.batch_size, image_size=size, channels=channels, seed=cfg.seed,
                             rank=rank, world_size=world_size, num_workers=data.num_workers, drop_last=True, skips=skips)
    else:
        train_recs = load_records(cfg, data.train_split, skips, data.limit_train)
        loader = build_dataloader(ImageTextDataset(train_recs, image_size=size, channels=channels, skips=skips),
                                  cfg.train.batch_size, seed=cfg.seed, rank=rank, world_size=world_size,
                                  num_workers=data.num_workers, drop_last=True)
    eval_recs: list[Any] = []
    probe_recs: list[Any] = [] if shards else train_recs
    reason = None
    if data.eval_root is None and shards:
        reason = f"training reads shards ({data.root}) and data.eval_root names no evaluation folder"
    elif data.eval_root is None:
        eval_recs = load_records(cfg, data.eval_split, skips, data.limit_eval)
    elif not _has_split(Path(data.eval_root), data.eval_split):
        reason = f"data.eval_root={data.eval_root} has no {data.eval_split} split"
    else:
        eval_recs = read_roco(data.eval_root, data.eval_split, skips=skips, limit=data.limit_eval)
        if shards and _has_split(Path(data.eval_root), data.train_split):
            probe_recs = read_roco(data.eval_root, data.train_split, skips=skips)
    eval_ds = ImageTextDataset(eval_recs, image_size=size, channels=channels, skips=skips)
    return RunData(train_recs, loader, eval_recs, probe_recs, eval_ds, reason, shards)


def evaluate_run(model: torch.nn.Module, cfg: RecipeConfig, maker: BatchMaker, train_recs: Sequence[Any],
                 eval_recs: Sequence[Any], eval_ds: Any, vqa: tuple[list, list], device: torch.device,
                 skips: SkipCounter, skip_reason: str | None = None) -> dict[str, Any]:
    """The held-out evaluation printed at the end of a run (eval mode, clean images, all tokens).

    Retrieval (plain and meaning-level R@1, the ceiling), zero-shot and linear-probe accuracy over the
    finding classes, VQA after fine-tuning beside the same head on an untrained model
    (:func:`unimlip_kit.eval.evaluate_model`), and held-out ITM / MLM accuracy with hard negatives drawn
    as in training (:func:`unimlip_kit.eval.fused_metrics`). ``skip_reason`` (no evaluation source) skips
    every task, saying why.

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
    names, prompts = synthetic_class_prompts(cfg.eval.prompts_per_scene, cfg.eval.seed) if synthetic else (None, None)
    ecfg = dataclasses.replace(cfg.eval, tasks=[t for t in cfg.eval.tasks if t != "vqa" or synthetic])
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


def _has_split(root: Path, split: str) -> bool:
    return (roco_split_dir(root, split) / "captions.txt").is_file()


def evaluate_run_folder(model: torch.nn.Module, tokenize: Any, rcfg: RecipeConfig, cfg: EvalConfig, *,
                        data_root: str | Path | None = None, class_names: Sequence[str] | None = None,
                        vqa_rad: str | Path | None = None, slake: str | Path | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Evaluate a loaded run (:func:`~unimlip_kit.train.load_run`) on the tasks of ``cfg``, reading only the splits they use.

    ``data_root`` (default: the run's own data, the synthetic benchmark when it had none) is a ROCO-layout
    folder. Retrieval and zero-shot read ``cfg.eval_split``; the linear probe reads the run's training
    split and is skipped, saying so, when the folder has none; VQA uses the synthetic questions, or
    VQA-RAD (``vqa_rad``, the JSON file) / SLAKE (``slake``, its folder). Returns
    :func:`~unimlip_kit.eval.evaluate_model`'s dict plus ``"data"`` (where the records came from).

    Example:
        >>> import tempfile
        >>> evaluate_run_folder(None, None, RecipeConfig(), EvalConfig(tasks=["retrieval"]), data_root=tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... has no 'test' split (.../data/test/radiology/captions.txt), needed by ['retrieval']
    """
    skips = SkipCounter()
    root = Path(data_root) if data_root is not None else (Path(rcfg.data.root) if rcfg.data.root is not None else None)
    synthetic = root is None
    if synthetic:
        root = Path(build_synthetic_dataset(rcfg.data.synthetic, rcfg.data.cache_dir, progress=progress))
    tasks = set(cfg.tasks)
    eval_records: list[Any] = []
    train_records: list[Any] = []
    missing: dict[str, str] = {}
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

    class_prompts = None
    vqa_train: list[Any] = []
    vqa_test: list[Any] = []
    if synthetic:
        class_names, class_prompts = synthetic_class_prompts(cfg.prompts_per_scene, cfg.seed)
        if "vqa" in tasks:
            vqa_train = read_synthetic_vqa(root, "train", skips=skips)
            vqa_test = read_synthetic_vqa(root, "test", skips=skips)
    if vqa_rad is not None and "vqa" in tasks:
        vqa_train = read_vqa_rad(vqa_rad, split="train", skips=skips)
        vqa_test = read_vqa_rad(vqa_rad, split="test", skips=skips)
    elif slake is not None and "vqa" in tasks:
        vqa_train = read_slake(Path(slake) / "train.json", skips=skips)
        vqa_test = read_slake(Path(slake) / "test.json", skips=skips)

    ecfg = dataclasses.replace(cfg, tasks=[t for t in cfg.tasks if t not in missing])
    metrics = evaluate_model(
        model, tokenize, train_records=train_records, eval_records=eval_records,
        image_size=rcfg.model.image_size, channels=rcfg.model.image_channels,
        class_names=list(class_names) if class_names else None, class_prompts=class_prompts, vqa_train=vqa_train,
        vqa_test=vqa_test, cfg=ecfg, progress=progress,
    )
    metrics["skipped"].update(missing)
    metrics["data"] = {"root": str(root), "synthetic": synthetic, "skipped_while_reading": skips.total,
                       "vqa_source": "vqa-rad" if vqa_rad else "slake" if slake else ("synthetic" if synthetic else None)}
    return metrics
