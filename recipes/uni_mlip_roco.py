"""Uni-Mlip pre-training on ROCO (or the embedded synthetic benchmark), end to end, in one readable file.

Uni-Mlip (Bawazir, Wu, Li, BMVC 2024, arXiv 2411.15207): a CLIP-style image/text
model trained with cross-modal (ITC), uni-modal (image NT-Xent or SimSiam, text
SimCSE) and fused-modal (ITM with hard negatives, image-conditioned MLM)
self-supervision, at the data level (medical augmentations, caption
augmentation, laterality-aware flips) and the feature level (dropout, FLIP
token keeping). Every term is on by default.

Run it::

    python recipes/uni_mlip_roco.py                       # synthetic benchmark, tiny model, CPU, < 10 min
    python recipes/uni_mlip_roco.py --max-steps 50 --output-dir runs/quick
    python recipes/uni_mlip_roco.py --resume --output-dir runs/quick          # continue from the last checkpoint
    python recipes/uni_mlip_roco.py --config my.yaml train.lr=3e-4 loss.weights.itm=0.5
    python recipes/uni_mlip_roco.py --data-root /data/roco --image-model google/vit-base-patch16-224-in21k \\
        --text-model microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract --batch-size 64 --amp bf16
    torchrun --nproc_per_node 2 recipes/uni_mlip_roco.py --max-steps 20        # DDP (gloo on CPU, NCCL on GPU)

The run folder (``--output-dir``, default ``runs/uni_mlip_roco``) receives
``config.yaml`` (the resolved config), ``tokenizer/``, ``checkpoints/step_*``
(``model.safetensors`` + ``state.pt`` with optimizer, scheduler, RNG and
data position), ``log.csv`` (one row per logged step, one column per term),
``loss_curves.png``, ``metrics.json`` and ``summary.md``.

Reproducibility: every random stream of step ``s`` (data order, image and
caption augmentation, token masking, hard negatives, token keeping, dropout)
is derived from ``(seed, s, micro-batch, rank)``, so a run killed and resumed
with ``--resume`` ends with exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from unimlip_kit.augment import CaptionAugment, LateralityAwareFlip, preset, swap_laterality
from unimlip_kit.data import (ImageTextDataset, SkipCounter, SyntheticConfig, build_dataloader, build_synthetic_dataset,
                              group_ids_from_keys, normalize_caption, read_roco)
from unimlip_kit.distributed import get_rank, get_world_size, is_distributed
from unimlip_kit.eval import (SYNTHETIC_IMAGE_QUESTIONS, EvalConfig, evaluate_model, format_table, fused_metrics,
                              read_synthetic_vqa, synthetic_class_prompts)
from unimlip_kit.losses import DEFAULT_WEIGHTS, UniMlipLoss
from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
from unimlip_kit.models.hub import Preprocessing
from unimlip_kit.text import load_bundled_tokenizer, train_wordpiece_tokenizer
from unimlip_kit.utils import derive_seed, load_config, run_metadata, save_config, save_json, seed_everything
from unimlip_kit.utils.config import PathOrHubId
from unimlip_kit.utils.io import atomic_write

# ----------------------------------------------------------------------------- config


@dataclass
class DataConfig:
    """Where the pairs come from.

    ``root=None`` builds the synthetic benchmark (``synthetic``) in ``cache_dir``
    (default ``$UNIMLIP_CACHE`` or ``~/.cache/unimlip_kit``) and reads it with the
    ROCO reader; otherwise ``root`` is a ROCO checkout
    (``<root>/data/{train,validation,test}/radiology/captions.txt``).
    """

    root: str | None = None
    cache_dir: str | None = None
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(n_train=2000, n_validation=100, n_test=300))
    train_split: Literal["train", "validation", "test"] = "train"
    eval_split: Literal["train", "validation", "test"] = "test"
    limit_train: int | None = None  # keep only the first N training pairs (quick runs)
    limit_eval: int | None = 1000  # retrieval gallery size (chance R@1 = 1 / gallery)
    num_workers: int = 0


@dataclass
class AugmentConfig:
    """Data-level views: per-modality medical presets, the laterality-aware flip, caption EDA."""

    enabled: bool = True
    strength: Literal["light", "medium", "strong"] = "medium"  # the second (self-supervised, feature-level) view
    # the first view, which the cross-modal and fused terms see (ITC, ITM, MLM; SLIP's weak view): "none" = clean
    view1_strength: Literal["none", "light", "medium", "strong"] = "none"
    flip: Literal["swap", "allow", "forbid"] = "swap"  # LateralityAwareFlip mode: swap (flip + fix left/right)
    flip_p: float = 0.5
    text: bool = True  # negation- and laterality-safe caption augmentation for the second text view
    text_p: float = 0.5
    text_alpha: float = 0.1


@dataclass
class LossConfig:
    """UniMlipLoss: a weight per term (0 switches a term and its forward passes off)."""

    weights: dict[Literal["itc", "itc_feature", "image_ssl", "text_ssl", "itm", "mlm"], float] = field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS))
    image_ssl: Literal["ntxent", "simsiam"] = "ntxent"
    image_temperature: float = 0.1
    text_temperature: float = 0.05


@dataclass
class TrainConfig:
    """Optimisation. ``max_steps`` counts optimizer steps (each ``grad_accum`` micro-batches of ``batch_size`` per rank)."""

    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU (fp16 is not supported)
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 2


@dataclass
class RecipeConfig:
    """Everything a run needs; saved as ``config.yaml`` in the run folder."""

    seed: int = 0
    output_dir: str = "runs/uni_mlip_roco"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # wordpiece (trained on the training captions) | bundled (BERT, 30522) | an existing folder | a hub id owner/name
    tokenizer: Literal["wordpiece", "bundled"] | PathOrHubId = "wordpiece"
    wordpiece_vocab: int = 1000
    threads: int = 0  # torch CPU threads (0 = torch's default)
    progress: bool = True
    model: UniMlipModelConfig = field(default_factory=UniMlipModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(
        batch_size=128, vqa_epochs=2, vqa_train_limit=2000, vqa_question_types=list(SYNTHETIC_IMAGE_QUESTIONS)))


def parse_args(argv: list[str] | None) -> tuple[RecipeConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value (after --config)")
    p.add_argument("--config", help="YAML file with any subset of the config")
    p.add_argument("--data-root", help="ROCO folder (default: the synthetic benchmark)")
    p.add_argument("--output-dir")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", nargs="?", const="latest", help="resume from the last checkpoint in the run folder, or a given one")
    p.add_argument("--image-model", help="hub id or local folder of a pretrained vision tower")
    p.add_argument("--text-model", help="hub id or local folder of a pretrained text tower (its tokenizer too)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--amp", choices=["auto", "bf16", "off"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_intermixed_args(argv)
    flags = {
        "data.root": args.data_root, "output_dir": args.output_dir, "train.max_steps": args.max_steps,
        "seed": args.seed, "model.image_model": args.image_model, "model.text_model": args.text_model,
        "train.batch_size": args.batch_size, "train.grad_accum": args.grad_accum, "train.amp": args.amp,
        "device": args.device,
    }
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.no_progress:
        overrides.append("progress=false")
    if args.text_model and not any(o.startswith("tokenizer=") for o in overrides):
        overrides.append(f"tokenizer={args.text_model}")
    return load_config(RecipeConfig, args.config, overrides), args


# ----------------------------------------------------------------------------- set-up helpers


def setup_distributed(device_pref: str) -> torch.device:
    """Initialise torch.distributed under torchrun (gloo on CPU, NCCL on GPU) and pick the device."""
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def log0(*msg: Any) -> None:
    if get_rank() == 0:
        print(*msg, flush=True)


def load_records(cfg: RecipeConfig, split: str, skips: SkipCounter, limit: int | None):
    """Records of ``split`` from ROCO or the synthetic benchmark (rank 0 builds it, the others wait)."""
    root = cfg.data.root
    if root is None:
        if get_rank() == 0:
            root = build_synthetic_dataset(cfg.data.synthetic, cfg.data.cache_dir, progress=cfg.progress)
        if is_distributed():
            dist.barrier()
        root = build_synthetic_dataset(cfg.data.synthetic, cfg.data.cache_dir)
    return read_roco(root, split, skips=skips, limit=limit)


def build_tokenizer(cfg: RecipeConfig, captions: list[str], run_dir: Path):
    """The tokenizer: WordPiece trained on the training captions (saved in the run), the bundled BERT, or a path."""
    if cfg.tokenizer == "bundled":
        return load_bundled_tokenizer()
    if cfg.tokenizer != "wordpiece":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cfg.tokenizer)
    saved = run_dir / "tokenizer"
    if (saved / "tokenizer.json").is_file():  # resume / other ranks: the exact same vocabulary
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(saved))
    tok = train_wordpiece_tokenizer(captions, vocab_size=cfg.wordpiece_vocab)
    if get_rank() == 0:
        tok.save_pretrained(str(saved))
    return tok


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases, norms, embeddings' position tables and the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name or "position" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- data-level views


def regroup_after_flip(keys: list[list[str]], flipped: list[bool], captions: list[str]) -> torch.Tensor:
    """Group ids (same meaning = never each other's ITM negative) after the laterality-aware flip.

    A flipped "right lower lobe" sample now means "left lower lobe": its image is a new image,
    its caption key is the swapped caption and its record group has left and right swapped, so it
    joins the unflipped left-sided samples of its kind and leaves the right-sided ones.
    """
    if len(flipped) == 1 and len(keys) > 1:
        flipped = flipped * len(keys)
    out = []
    for ks, f, cap in zip(keys, flipped, captions):
        if not f:
            out.append(ks)
            continue
        new = []
        for k in ks:
            if k.startswith("img:"):
                k = k + "#hflip"
            elif k.startswith("cap:"):
                k = "cap:" + normalize_caption(cap)
            elif k.startswith("grp:"):
                k = "grp:" + swap_laterality(k[4:])
            new.append(k)
        out.append(new)
    return group_ids_from_keys(out)


class BatchMaker:
    """Turns a collated batch into the model's inputs: flip, two augmented views, captions, tokens.

    All randomness is re-seeded from ``(seed, step, micro, rank)`` so any step can be replayed.
    """

    def __init__(self, cfg: RecipeConfig, tokenizer, device: torch.device) -> None:
        a = cfg.augment
        self.cfg, self.tok, self.device = cfg, tokenizer, device
        self.flip = LateralityAwareFlip(p=a.flip_p, mode=a.flip if a.enabled else "forbid", generator=0)
        def make(strength: str, seed: int):
            return (lambda x: x) if strength == "none" else preset(m, strength, generator=seed)

        self.views = {}
        if a.enabled:
            for m in ("xray", "mri", "ultrasound", "generic"):
                self.views[m] = (make(a.view1_strength, 0), make(a.strength, 1))
        mask = tokenizer.mask_token or "[MASK]"
        self.text_aug = CaptionAugment(alpha=a.text_alpha, p=a.text_p, mask_token=mask, generator=0) if a.enabled and a.text else None

    def reseed(self, *keys: object) -> None:
        base = derive_seed(self.cfg.seed, "augment", *keys)
        self.flip.manual_seed(derive_seed(base, "flip"))
        for m, views in self.views.items():
            for k, v in enumerate(views, 1):
                if hasattr(v, "manual_seed"):
                    v.manual_seed(derive_seed(base, m, k))
        if self.text_aug is not None:
            self.text_aug.manual_seed(derive_seed(base, "text"))

    def _augment(self, images: torch.Tensor, modality: list[str], which: int) -> torch.Tensor:
        # CT arrives already windowed to [0, 1] (JPEG, or DICOM windowed by the reader): the HU preset does not apply.
        name = [m if m in self.views else "generic" for m in modality]
        out = torch.empty_like(images)
        for m in sorted(set(name)):
            idx = torch.tensor([i for i, n in enumerate(name) if n == m])
            out[idx] = self.views[m][which - 1](images[idx])
        return out

    def tokens(self, captions: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tok(captions, padding=True, truncation=True, max_length=self.cfg.model.max_text_len, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def __call__(self, batch: dict[str, Any], *keys: object) -> dict[str, torch.Tensor]:
        self.reseed(*keys)
        images, captions = batch["images"], list(batch["captions"])
        images, captions = self.flip(images, captions)  # left/right in the caption follows the image
        group_ids = batch["group_ids"]
        if self.flip.mode == "swap" and "group_keys" in batch:
            group_ids = regroup_after_flip(batch["group_keys"], self.flip.flipped().tolist(), captions)
        if self.views:
            view1, view2 = self._augment(images, batch["modality"], 1), self._augment(images, batch["modality"], 2)
        else:
            view1 = view2 = images
        t1 = self.tokens(captions)
        t2 = self.tokens(self.text_aug(captions)) if self.text_aug is not None else t1
        out = {"images": view1, "images_view2": view2, **t1,
               "input_ids_aug": t2["input_ids"], "attention_mask_aug": t2["attention_mask"],
               "group_ids": group_ids}
        return {k: v.to(self.device, non_blocking=True) for k, v in out.items()}


class StepStream:
    """Micro-batches in a fixed order that depends only on the seed: ``position`` (epoch, batches done) is resumable."""

    def __init__(self, loader, epoch: int = 0, batches_done: int = 0) -> None:
        self.loader, self.epoch, self.done = loader, epoch, batches_done
        self._it = None

    def next(self) -> dict[str, Any]:
        while True:
            if self._it is None:
                self.loader.sampler.set_epoch(self.epoch, start=self.done * self.loader.batch_size)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.done, self._it = self.epoch + 1, 0, None
                continue
            self.done += 1
            return batch

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.done}


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, opt, sched, stream: StepStream,
                    skips: SkipCounter, history: list[dict[str, float]], keep: int, used: set[str]) -> None:
    """``checkpoints/step_<n>/``: safetensors weights + ``state.pt``; written atomically, then the old ones pruned."""
    from safetensors.torch import save

    ckpt = run_dir / "checkpoints" / f"step_{step:07d}"
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state = {
        "step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "data": stream.position(),
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "skipped": skips.items(), "history": history, "used_pairs": sorted(used),
    }
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(ckpt / "model.safetensors", save(tensors))
    atomic_write(ckpt / "state.pt", buf.getvalue())  # written last: its presence marks a complete checkpoint
    done = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if (p / "state.pt").is_file())
    for old in done[:-keep] if keep > 0 else []:
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def find_checkpoint(run_dir: Path, resume: str) -> Path | None:
    if resume != "latest":
        return Path(resume)
    done = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if (p / "state.pt").is_file())
    return done[-1] if done else None


# ----------------------------------------------------------------------------- evaluation and reporting


def evaluate_run(model: UniMlipModel, cfg: RecipeConfig, maker: BatchMaker, train_recs, eval_recs, eval_ds,
                 vqa: tuple[list, list], device: torch.device, skips: SkipCounter) -> dict[str, Any]:
    """The held-out evaluation printed at the end of a run (eval mode, clean images, all tokens).

    Retrieval (plain and meaning-level R@1, the ceiling), zero-shot and linear-probe accuracy over the
    finding classes, VQA after fine-tuning beside the same head on an untrained model
    (:func:`unimlip_kit.eval.evaluate_model`), and held-out ITM / MLM accuracy with hard negatives drawn
    as in training (:func:`unimlip_kit.eval.fused_metrics`).
    """
    model.eval()

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


def plot_losses(history: list[dict[str, float]], path: Path) -> None:
    """One line per term (and the weighted total) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    keys = [k for k in history[0] if k not in ("step", "lr", "logit_scale", "pairs_per_s")]
    for k in keys:
        ax.plot([h["step"] for h in history], [h[k] for h in history], label=k, lw=2 if k == "total" else 1)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title("Uni-Mlip training losses"), ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def write_csv(history: list[dict[str, float]], path: Path) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    atomic_write(path, buf.getvalue())


def summary_table(metrics: dict[str, Any]) -> str:
    """The run's headline numbers as Markdown (``summary.md``)."""
    lines = []
    if "retrieval" in metrics:
        r = metrics["retrieval"]
        lines += ["| direction | R@1 | R@5 | R@10 | median rank | meaning-level R@1 |", "|---|---|---|---|---|---|"]
        for d in ("i2t", "t2i"):
            m = r[d]
            lines.append(f"| {d} | {m['R@1']:.3f} | {m['R@5']:.3f} | {m['R@10']:.3f} | {m['median_rank']:.0f} | "
                         f"{r.get(f'{d}_R@1_meaning', float('nan')):.3f} |")
        ceiling = f", ceiling R@1 {r['ceiling_R@1']:.3f} ({r['distinct_meanings']} meanings)" if "ceiling_R@1" in r else ""
        lines.append(f"\nchance R@1 = {r['chance_R@1']:.4f} (gallery {r['gallery']}){ceiling}\n")
    lines.append("```\n" + format_table(metrics["eval"]) + "\n```\n")
    lines.append(f"train pairs {metrics['data']['train_pairs']}, skipped {metrics['data']['skipped']}; "
                 f"{metrics['train']['steps']} steps in {metrics['train']['wall_s']:.0f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, args = parse_args(argv)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = setup_distributed(cfg.device)
    rank, world = get_rank(), get_world_size()
    seed_everything(cfg.seed)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # ---- data: records (skipped rows counted), tokenizer, datasets
    skips = SkipCounter()
    train_recs = load_records(cfg, cfg.data.train_split, skips, cfg.data.limit_train)
    eval_recs = load_records(cfg, cfg.data.eval_split, skips, cfg.data.limit_eval)
    vqa: tuple[list, list] = ([], [])
    if cfg.data.root is None and "vqa" in cfg.eval.tasks and rank == 0:  # the synthetic questions (cached set)
        syn_root = build_synthetic_dataset(cfg.data.synthetic, cfg.data.cache_dir)
        vqa = (read_synthetic_vqa(syn_root, cfg.data.train_split), read_synthetic_vqa(syn_root, cfg.data.eval_split))
    tokenizer = build_tokenizer(cfg, [r.caption for r in train_recs], run_dir)
    if is_distributed():
        dist.barrier()  # rank 0 saved the WordPiece vocabulary
        tokenizer = build_tokenizer(cfg, [r.caption for r in train_recs], run_dir)
    specials = sorted(set(tokenizer.all_special_ids))
    cfg.model = dataclasses.replace(
        cfg.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id, special_token_ids=specials,
    )
    size = cfg.model.image_size
    train_ds = ImageTextDataset(train_recs, image_size=size, channels=cfg.model.image_channels, skips=skips)
    eval_ds = ImageTextDataset(eval_recs, image_size=size, channels=cfg.model.image_channels, skips=skips)
    loader = build_dataloader(train_ds, cfg.train.batch_size, seed=cfg.seed, rank=rank, world_size=world,
                              num_workers=cfg.data.num_workers, drop_last=True)
    if len(loader) == 0:
        raise ValueError(f"{len(train_recs)} training pairs make no full batch of {cfg.train.batch_size} per rank "
                         f"(world size {world}); lower train.batch_size")
    if rank == 0:
        save_config(cfg, run_dir / "config.yaml")
    log0(f"[data] {len(train_recs)} train / {len(eval_recs)} eval pairs from "
         f"{cfg.data.root or 'the synthetic benchmark'}; vocab {len(tokenizer)}; world size {world}; device {device}")

    # ---- model, loss, optimizer, schedule
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = UniMlipModel(cfg.model).to(device)
    loss_fn = UniMlipLoss(cfg.loss.weights, image_ssl=cfg.loss.image_ssl,
                          image_temperature=cfg.loss.image_temperature, text_temperature=cfg.loss.text_temperature)
    terms = loss_fn.enabled_terms
    opt = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_with_warmup(s, cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.min_lr_ratio))
    n_params = sum(p.numel() for p in model.parameters())
    log0(f"[model] {n_params / 1e6:.2f} M parameters; terms {terms}")

    # ---- resume
    step, history = 0, []
    used: set[str] = set()  # ids of the training pairs that entered a usable micro-batch (this rank)
    stream = StepStream(loader)
    ckpt = find_checkpoint(run_dir, args.resume) if args.resume else None
    if args.resume and ckpt is None:
        log0(f"[resume] no checkpoint in {run_dir / 'checkpoints'}; starting from scratch")
    if ckpt is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(device)))
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        step, history = int(state["step"]), list(state["history"])
        used.update(state.get("used_pairs", []))
        stream = StepStream(loader, state["data"]["epoch"], state["data"]["batches_done"])
        for reason, ids in state["skipped"].items():
            for item_id, detail in ids.items():
                skips.add(item_id, reason, detail)
        log0(f"[resume] from {ckpt} at step {step}")

    train_model: nn.Module = model
    if is_distributed():
        # With a term switched off its heads get no gradient; DDP must then look for unused parameters.
        unused = len(terms) < len(DEFAULT_WEIGHTS) or (cfg.model.image_ssl_predictor and cfg.loss.image_ssl != "simsiam")
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused)
    maker = BatchMaker(cfg, tokenizer, device)
    use_bf16 = cfg.train.amp == "bf16" or (cfg.train.amp == "auto" and device.type == "cuda")
    gen = torch.Generator(device=device)

    # ---- train
    model.train()
    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    t_train, pairs_seen = time.time(), 0
    while step < cfg.train.max_steps:
        acc: dict[str, float] = {}
        for micro in range(cfg.train.grad_accum):
            raw = stream.next()
            skips.update_from_batch(raw)
            usable = len(raw["ids"]) >= 2  # a batch emptied by skipped images has nothing to contrast
            if is_distributed():  # skip together: a rank that skipped alone would leave the others' collectives hanging
                flag = torch.tensor([int(usable)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                usable = bool(flag.item())
            if not usable:
                continue
            # Every random stream of this micro-batch restarts from (seed, step, micro, rank): resumable exactly.
            torch.manual_seed(derive_seed(cfg.seed, "global", step, micro, rank))  # dropout and anything unseeded
            gen.manual_seed(derive_seed(cfg.seed, "model", step, micro, rank))  # masking, negatives, token keeping
            batch = maker(raw, step, micro, rank)
            sync = micro == cfg.train.grad_accum - 1 or not is_distributed()
            ctx = train_model.no_sync() if not sync else _null()
            with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                outputs = train_model(batch, terms, generator=gen)
                total, parts = loss_fn(outputs)
                (total / cfg.train.grad_accum).backward()
            pairs_seen += len(raw["ids"]) * world
            used.update(raw["ids"])
            for k, v in {"total": total.detach(), **parts}.items():
                acc[k] = acc.get(k, 0.0) + float(v) / cfg.train.grad_accum
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{acc.get('total', float('nan')):.3f}")
        if acc and (step % cfg.train.log_every == 0 or step == cfg.train.max_steps):  # acc is empty if every batch was unusable
            row = {"step": step, "lr": sched.get_last_lr()[0], "logit_scale": float(model.logit_scale().detach()), **acc}
            history.append(row)
        if not used and (step % cfg.train.ckpt_every == 0 or step == cfg.train.max_steps):
            raise RuntimeError(f"no usable training batch in {step} steps (every micro-batch had fewer than 2 readable "
                               f"pairs): {skips.summary()}; nothing was saved")
        if rank == 0 and (step % cfg.train.ckpt_every == 0 or step == cfg.train.max_steps):
            save_checkpoint(run_dir, step, model, opt, sched, stream, skips, history, cfg.train.keep_checkpoints, used)
    if bar is not None:
        bar.close()
    train_wall = time.time() - t_train
    if is_distributed():  # every rank decoded its own shard: merge what they skipped and which pairs they used
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (skips.items(), sorted(used)))
        for items, ids_used in gathered:
            used.update(ids_used)
            for reason, ids in items.items():
                for item_id, detail in ids.items():
                    skips.add(item_id, reason, detail)

    # ---- evaluate and report (rank 0)
    metrics: dict[str, Any] = {}
    if rank == 0:
        t_eval = time.time()
        evaluation = evaluate_run(model, cfg, maker, train_recs, eval_recs, eval_ds, vqa, device, skips)
        evaluation["seconds"] = time.time() - t_eval
        metrics = {
            "retrieval": evaluation.get("retrieval", {}),
            "eval": evaluation,
            "data": {"train_pairs": len(used),
                     "train_pairs_available": len(train_recs) - sum(1 for r in train_recs if r.id in skips),
                     "eval_pairs": evaluation.get("eval_images", 0), "skipped": skips.total,
                     "skipped_detail": skips.to_dict()},
            "train": {"steps": step, "wall_s": train_wall, "pairs_per_s_this_session": pairs_seen / max(train_wall, 1e-9),
                      "terms": terms, "parameters": n_params, "world_size": world, "device": str(device),
                      "final_losses": history[-1] if history else {}},
            "total_wall_s": time.time() - t_start,
            "meta": run_metadata(),
        }
        save_json(run_dir / "metrics.json", metrics)
        # the trained model as a self-contained Hugging Face folder: UniMlipModel.from_pretrained(run_dir / "model")
        model.save_pretrained(run_dir / "model", tokenizer=tokenizer, preprocessing=Preprocessing.from_config(cfg.model))
        if history:
            write_csv(history, run_dir / "log.csv")
            plot_losses(history, run_dir / "loss_curves.png")
        atomic_write(run_dir / "summary.md", summary_table(metrics) + "\n")
        print("\n" + format_table(evaluation) + "\n" + skips.summary(), flush=True)
        print(f"[done] run folder: {run_dir}", flush=True)
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
    return metrics


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main(sys.argv[1:])
