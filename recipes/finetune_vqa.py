"""Fine-tune a pre-trained Uni-Mlip run for medical VQA (answer classification on the fusion encoder).

    python recipes/finetune_vqa.py --run-dir runs/uni_mlip_roco                      # synthetic QA pairs
    python recipes/finetune_vqa.py --run-dir RUN --vqa-rad "/data/VQA_RAD/VQA_RAD Dataset Public.json" --epochs 40
    python recipes/finetune_vqa.py --run-dir RUN --slake /data/Slake1.0 --epochs 30 --lr 2e-5 --head-lr 1e-3

Training answers define the classes (:class:`unimlip_kit.eval.AnswerVocab`); the
fused [CLS] of question tokens attending to image tokens feeds an MLP head
(:class:`unimlip_kit.eval.VQAClassifier`). AdamW with cosine decay, separate
learning rates for the pre-trained backbone and the new head, gradient clipping.
Reports accuracy overall and split into closed (yes/no) and open questions, and
writes ``<output-dir>/vqa_model.safetensors``, ``answers.json`` and ``vqa_metrics.json``.

Departures from the paper: Uni-Mlip reports VQA-RAD/SLAKE after fine-tuning a
full-size model for many epochs on a GPU; the defaults here are sized for the tiny
CPU model and the synthetic benchmark.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from unimlip_kit.eval import (  # noqa: E402
    AnswerVocab,
    VQAClassifier,
    VQADataset,
    evaluate_vqa,
    read_slake,
    read_synthetic_vqa,
    read_vqa_rad,
    seeded_subset,
    train_vqa,
)
from unimlip_kit.utils.io import atomic_write, run_metadata, save_json  # noqa: E402
from unimlip_kit.utils.seeding import make_generator, seed_everything  # noqa: E402


def _evaluate_module():
    from unimlip_kit.utils.io import load_script

    return load_script(REPO / "recipes" / "evaluate.py")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a recipes/uni_mlip_roco.py run folder")
    p.add_argument("--checkpoint", help="a checkpoints/step_* folder (default: the last one)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--vqa-rad", help="VQA-RAD JSON; freeform/para questions train, test_* questions test")
    src.add_argument("--slake", help="SLAKE folder (train.json, test.json, imgs/); English questions")
    p.add_argument("--output-dir", help="default <run-dir>/vqa_<source>")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5, help="backbone learning rate")
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--min-answer-count", type=int, default=1, help="answers seen fewer times in training are not classes")
    p.add_argument("--train-limit", type=int, help="at most this many training questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    seed_everything(args.seed)
    ev = _evaluate_module()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    run_dir = Path(args.run_dir)
    model, tokenize, rcfg = ev.load_run(run_dir, checkpoint=args.checkpoint, device=device)
    progress = not args.no_progress

    from unimlip_kit.data import SkipCounter, build_synthetic_dataset

    skips = SkipCounter()
    if args.vqa_rad:
        source, train_q, test_q = "vqa-rad", read_vqa_rad(args.vqa_rad, split="train", skips=skips), \
            read_vqa_rad(args.vqa_rad, split="test", skips=skips)
    elif args.slake:
        source = "slake"
        train_q = read_slake(Path(args.slake) / "train.json", skips=skips)
        test_q = read_slake(Path(args.slake) / "test.json", skips=skips)
    else:
        if rcfg.data.root is not None:
            raise SystemExit("this run trained on real data: pass --vqa-rad or --slake")
        root = build_synthetic_dataset(rcfg.data.synthetic, rcfg.data.cache_dir, progress=progress)
        source, train_q, test_q = "synthetic", read_synthetic_vqa(root, "train", skips=skips), \
            read_synthetic_vqa(root, "test", skips=skips)
    train_q = seeded_subset(train_q, args.train_limit, args.seed, "vqa-train")
    if not train_q or not test_q:
        raise SystemExit(f"no {source} questions found (train {len(train_q)}, test {len(test_q)})")

    vocab = AnswerVocab.from_samples(train_q, args.min_answer_count)
    clf = VQAClassifier(model, len(vocab)).to(device)
    kw = dict(image_size=rcfg.model.image_size, channels=rcfg.model.image_channels, skips=skips)
    print(f"[vqa] {source}: {len(train_q)} train / {len(test_q)} test questions, {len(vocab)} answer classes", flush=True)
    t0 = time.perf_counter()
    losses = train_vqa(clf, tokenize, VQADataset(train_q, vocab, **kw), epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, head_lr=args.head_lr, max_steps=args.max_steps,
                       generator=make_generator(args.seed), progress=progress)
    metrics, preds = evaluate_vqa(clf, tokenize, VQADataset(test_q, vocab, **kw), batch_size=args.batch_size,
                                  progress=progress)
    metrics.update(source=source, answers=len(vocab), train_questions=len(train_q), steps=len(losses),
                   train_loss_first=losses[0], train_loss_last=losses[-1], wall_s=time.perf_counter() - t0,
                   skipped=skips.counts(), unseen_answer_fraction=sum(vocab.index(s.answer) < 0 for s in test_q) / len(test_q),
                   run_dir=str(run_dir), meta=run_metadata())

    out = Path(args.output_dir) if args.output_dir else run_dir / f"vqa_{source}"
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
