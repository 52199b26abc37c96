"""Fine-tune a pre-trained Uni-Mlip run for medical VQA (answer classification on the fusion encoder).

    python recipes/finetune_vqa.py --run-dir runs/uni_mlip_roco                      # synthetic QA pairs
    python recipes/finetune_vqa.py --run-dir RUN --vqa-rad "/data/VQA_RAD/VQA_RAD Dataset Public.json" --epochs 40
    python recipes/finetune_vqa.py --run-dir RUN --slake /data/Slake1.0 --epochs 30 --lr 2e-5 --head-lr 1e-3
    python recipes/finetune_vqa.py --run-dir RUN min_answer_count=2 train_limit=500   # any FinetuneVQAConfig key

Training answers define the classes (:class:`unimlip_kit.eval.AnswerVocab`); the
fused [CLS] of question tokens attending to image tokens feeds an MLP head
(:class:`unimlip_kit.eval.VQAClassifier`). AdamW with cosine decay (the pre-training
schedule of :mod:`unimlip_kit.train.optim`), separate learning rates for the
pre-trained backbone and the new head, gradient clipping. Reports accuracy overall
and split into closed (yes/no) and open questions, and writes
``<output_dir>/vqa_model.safetensors``, ``answers.json`` and ``vqa_metrics.json``.

Departures from the paper: Uni-Mlip reports VQA-RAD/SLAKE after fine-tuning a
full-size model for many epochs on a GPU; the defaults here are sized for the tiny
CPU model and the synthetic benchmark.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from unimlip_kit.data import SkipCounter, build_synthetic_dataset
from unimlip_kit.eval import (AnswerVocab, VQAClassifier, VQADataset, evaluate_vqa, read_slake, read_synthetic_vqa,
                              read_vqa_rad, seeded_subset, train_vqa)
from unimlip_kit.train import load_run, parse_recipe_args, resolve_device
from unimlip_kit.utils import atomic_write, load_config, make_generator, run_metadata, save_json, seed_everything


@dataclass
class FinetuneVQAConfig:
    """The run to fine-tune, the questions (synthetic, ``vqa_rad`` or ``slake``) and the optimisation."""

    run_dir: str | None = None  # a recipes/uni_mlip_roco.py run folder (required)
    checkpoint: str | None = None  # a checkpoints/step_* folder (default: the last one)
    vqa_rad: str | None = None  # VQA-RAD JSON; freeform/para questions train, test_* questions test
    slake: str | None = None  # SLAKE folder (train.json, test.json, imgs/); English questions
    output_dir: str | None = None  # default <run_dir>/vqa_<source>
    epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 5e-5  # backbone learning rate
    head_lr: float = 1e-3
    min_answer_count: int = 1  # answers seen fewer times in training are not classes
    train_limit: int | None = None  # at most this many training questions
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parse_recipe_args("finetune_vqa", argv, description=__doc__.split("\n\n")[0])
    cfg = load_config(FinetuneVQAConfig, p.config, p.overrides)
    if cfg.run_dir is None:
        raise SystemExit("finetune_vqa.py needs a run folder: --run-dir RUN (or run_dir=RUN)")
    if cfg.vqa_rad and cfg.slake:
        raise SystemExit("pass one question source: vqa_rad or slake, not both")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.run_dir)
    model, tokenize, rcfg = load_run(run_dir, checkpoint=cfg.checkpoint, device=device)

    skips = SkipCounter()
    if cfg.vqa_rad:
        source, train_q, test_q = "vqa-rad", read_vqa_rad(cfg.vqa_rad, split="train", skips=skips), \
            read_vqa_rad(cfg.vqa_rad, split="test", skips=skips)
    elif cfg.slake:
        source = "slake"
        train_q = read_slake(Path(cfg.slake) / "train.json", skips=skips)
        test_q = read_slake(Path(cfg.slake) / "test.json", skips=skips)
    else:
        if rcfg.data.root is not None:
            raise SystemExit("this run trained on real data: pass --vqa-rad or --slake")
        root = build_synthetic_dataset(rcfg.data.synthetic, rcfg.data.cache_dir, progress=cfg.progress)
        source, train_q, test_q = "synthetic", read_synthetic_vqa(root, "train", skips=skips), \
            read_synthetic_vqa(root, "test", skips=skips)
    train_q = seeded_subset(train_q, cfg.train_limit, cfg.seed, "vqa-train")
    if not train_q or not test_q:
        raise SystemExit(f"no {source} questions found (train {len(train_q)}, test {len(test_q)})")

    vocab = AnswerVocab.from_samples(train_q, cfg.min_answer_count)
    clf = VQAClassifier(model, len(vocab)).to(device)
    kw = dict(image_size=rcfg.model.image_size, channels=rcfg.model.image_channels, skips=skips)
    print(f"[vqa] {source}: {len(train_q)} train / {len(test_q)} test questions, {len(vocab)} answer classes", flush=True)
    t0 = time.perf_counter()
    losses = train_vqa(clf, tokenize, VQADataset(train_q, vocab, **kw), epochs=cfg.epochs, batch_size=cfg.batch_size,
                       lr=cfg.lr, head_lr=cfg.head_lr, max_steps=cfg.max_steps,
                       generator=make_generator(cfg.seed), progress=cfg.progress)
    metrics, preds = evaluate_vqa(clf, tokenize, VQADataset(test_q, vocab, **kw), batch_size=cfg.batch_size,
                                  progress=cfg.progress)
    metrics.update(source=source, answers=len(vocab), train_questions=len(train_q), steps=len(losses),
                   train_loss_first=losses[0], train_loss_last=losses[-1], wall_s=time.perf_counter() - t0,
                   skipped=skips.counts(), unseen_answer_fraction=sum(vocab.index(s.answer) < 0 for s in test_q) / len(test_q),
                   run_dir=str(run_dir), meta=run_metadata())

    out = Path(cfg.output_dir) if cfg.output_dir else run_dir / f"vqa_{source}"
    from safetensors.torch import save

    atomic_write(out / "vqa_model.safetensors",
                 save({k: v.detach().contiguous().cpu() for k, v in clf.state_dict().items()}))
    save_json(out / "answers.json", vocab.answers)
    save_json(out / "vqa_metrics.json", metrics)
    print(f"VQA {source}: accuracy {metrics['accuracy']:.3f} (closed {metrics['closed_accuracy']:.3f} on "
          f"{metrics['n_closed']}, open {metrics['open_accuracy']:.3f} on {metrics['n_open']}); "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; {out}", flush=True)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
