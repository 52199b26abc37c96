"""Evaluate a trained Uni-Mlip run on the three downstream tasks of the paper.

    python recipes/evaluate.py --run-dir runs/uni_mlip_roco                 # synthetic benchmark (default)
    python recipes/evaluate.py --run-dir RUN --data-root /data/roco         # retrieval on real ROCO (test split)
    python recipes/evaluate.py --run-dir RUN --vqa-rad "/data/VQA_RAD/VQA_RAD Dataset Public.json"
    python recipes/evaluate.py --run-dir RUN --slake /data/Slake1.0 --tasks vqa
    python recipes/evaluate.py --run-dir RUN --set vqa_epochs=10 --set probe_train_limit=null

Tasks (``--tasks``, default all four):

* ``retrieval``: image↔text Recall@1/5/10 and median rank on the held-out split
  (:func:`unimlip_kit.eval.retrieval_metrics`, computed tile by tile).
* ``zero_shot``: classification by the most similar class prompt. On the synthetic
  benchmark each of the 17 finding classes is described by captions the generator
  writes for that finding in every scene type (prompt ensembling); on real data it
  needs labelled records and ``--class-names``.
* ``linear_probe``: L2 multinomial logistic regression on frozen image embeddings
  (train split → test split, λ swept on a validation fraction).
* ``vqa``: fine-tune the fusion encoder with an answer-classification head on the
  training questions, report accuracy overall / closed / open on the test questions
  (synthetic QA by default, or VQA-RAD / SLAKE). The run's weights are copied first;
  the checkpoint on disk is never modified.

Writes ``<run-dir>/eval.json`` (or ``--output``) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python recipes/evaluate.py` from a checkout
    sys.path.insert(0, str(REPO))

from unimlip_kit.eval import (  # noqa: E402
    AnswerVocab,
    VQAClassifier,
    VQADataset,
    encode_loader,
    evaluate_vqa,
    linear_probe_evaluate,
    prompt_ensemble,
    read_slake,
    read_synthetic_vqa,
    read_vqa_rad,
    retrieval_metrics,
    train_vqa,
    zero_shot_classifier,
    zero_shot_evaluate,
)
from unimlip_kit.utils.config import apply_overrides  # noqa: E402
from unimlip_kit.utils.io import run_metadata, save_json  # noqa: E402
from unimlip_kit.utils.seeding import make_generator, seed_everything  # noqa: E402

TASKS = ("retrieval", "zero_shot", "linear_probe", "vqa")
Tokenize = Callable[[list[str]], Mapping[str, torch.Tensor]]


@dataclasses.dataclass
class EvalConfig:
    """Evaluation settings (override with ``--set key=value``)."""

    tasks: list[str] = dataclasses.field(default_factory=lambda: list(TASKS))
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 0
    #: split used for retrieval, zero-shot and as the probe's test split
    eval_split: str = "test"
    #: at most this many training images for the linear probe (None: all)
    probe_train_limit: int | None = 2000
    chunk_size: int = 2048
    #: zero-shot prompts per (class, scene type) on the synthetic benchmark
    prompts_per_scene: int = 3
    vqa_epochs: int = 3
    vqa_batch_size: int = 32
    vqa_lr: float = 5e-5
    vqa_head_lr: float = 1e-3
    vqa_max_steps: int | None = None
    #: at most this many training / test questions (None: all)
    vqa_train_limit: int | None = 3000
    vqa_test_limit: int | None = None


# --------------------------------------------------------------------------- data
def synthetic_class_prompts(prompts_per_scene: int = 3, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Class names and, per finding class, captions the synthetic generator writes for it in every scene type."""
    from unimlip_kit.data.synth_render import SceneSpec
    from unimlip_kit.data.synth_text import make_caption
    from unimlip_kit.data.synthetic import FINDING_CLASSES, SCENE_TYPES

    rng = np.random.default_rng(seed)
    prompts: list[list[str]] = []
    for name in FINDING_CLASSES:
        attrs = () if name == "no_finding" else tuple(name.split("_"))
        group = [
            make_caption(SceneSpec(mod, reg, *attrs), rng, 0.0) for mod, reg in SCENE_TYPES for _ in range(prompts_per_scene)
        ]
        prompts.append(sorted(set(group)))
    return list(FINDING_CLASSES), prompts


def _loader(records: Sequence[Any], image_size: int, channels: int, cfg: EvalConfig):
    from torch.utils.data import DataLoader

    from unimlip_kit.data import ImageTextDataset

    ds = ImageTextDataset(list(records), image_size=image_size, channels=channels)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers, collate_fn=ds.collate_fn)


def _subset(items: Sequence[Any], limit: int | None, seed: int, key: str) -> list[Any]:
    """A deterministic random subset (order kept) of at most ``limit`` items."""
    items = list(items)
    if limit is None or len(items) <= limit:
        return items
    from unimlip_kit.utils.seeding import derive_seed

    g = torch.Generator().manual_seed(derive_seed(seed, key))
    keep = torch.randperm(len(items), generator=g)[:limit].sort().values.tolist()
    return [items[i] for i in keep]


# --------------------------------------------------------------------------- tasks
def evaluate_model(
    model: torch.nn.Module,
    tokenize: Tokenize,
    *,
    train_records: Sequence[Any],
    eval_records: Sequence[Any],
    image_size: int,
    channels: int = 1,
    class_names: Sequence[str] | None = None,
    class_prompts: Sequence[Sequence[str]] | None = None,
    vqa_train: Sequence[Any] = (),
    vqa_test: Sequence[Any] = (),
    cfg: EvalConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the enabled tasks and return ``{task: metrics}`` (a task that cannot run says why under ``"skipped"``)."""
    cfg = cfg or EvalConfig()
    unknown = set(cfg.tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; known: {list(TASKS)}")
    seed_everything(cfg.seed)
    out: dict[str, Any] = {"skipped": {}}
    t0 = time.perf_counter()

    need_eval = bool({"retrieval", "zero_shot", "linear_probe"} & set(cfg.tasks))
    ev = None
    if need_eval:
        ev = encode_loader(model, tokenize, _loader(eval_records, image_size, channels, cfg),
                           text="retrieval" in cfg.tasks, progress=progress, desc=f"embed {cfg.eval_split}")
        out["eval_images"] = int(ev["image_emb"].shape[0])
        out["eval_skipped"] = len(ev["skipped"])

    if "retrieval" in cfg.tasks:
        m = retrieval_metrics(ev["image_emb"], ev["text_emb"], chunk_size=cfg.chunk_size)
        m["chance_R@1"] = 1.0 / ev["image_emb"].shape[0]
        out["retrieval"] = m

    labelled = ev is not None and bool((ev["labels"] >= 0).all()) and ev["labels"].numel() > 0
    if "zero_shot" in cfg.tasks:
        if not labelled:
            out["skipped"]["zero_shot"] = "the evaluation records have no class labels"
        elif class_prompts is None and class_names is None:
            out["skipped"]["zero_shot"] = "no class names or prompts (pass --class-names)"
        else:
            from unimlip_kit.eval import encode_texts

            def enc(texts: list[str]) -> torch.Tensor:
                return encode_texts(model, tokenize, texts, batch_size=cfg.batch_size)

            w = prompt_ensemble(enc, class_prompts) if class_prompts is not None else zero_shot_classifier(enc, class_names)
            m = zero_shot_evaluate(ev["image_emb"], ev["labels"], w)
            m["chance"] = 1.0 / w.shape[0]
            out["zero_shot"] = m

    if "linear_probe" in cfg.tasks:
        train_sub = _subset(train_records, cfg.probe_train_limit, cfg.seed, "probe")
        if not labelled or not train_sub:
            out["skipped"]["linear_probe"] = "the records have no class labels"
        else:
            tr = encode_loader(model, tokenize, _loader(train_sub, image_size, channels, cfg), text=False,
                               progress=progress, desc="embed probe train")
            if bool((tr["labels"] < 0).any()):
                out["skipped"]["linear_probe"] = "some training records have no class label"
            else:
                c = int(max(int(tr["labels"].max()), int(ev["labels"].max()))) + 1
                out["linear_probe"] = linear_probe_evaluate(
                    tr["image_emb"], tr["labels"], ev["image_emb"], ev["labels"], num_classes=c,
                    generator=make_generator(cfg.seed),
                )
                out["linear_probe"]["train_images"] = int(tr["image_emb"].shape[0])

    if "vqa" in cfg.tasks:
        train_q = _subset(vqa_train, cfg.vqa_train_limit, cfg.seed, "vqa-train")
        test_q = _subset(vqa_test, cfg.vqa_test_limit, cfg.seed, "vqa-test")
        if not train_q or not test_q:
            out["skipped"]["vqa"] = "no VQA questions (synthetic benchmark, --vqa-rad or --slake)"
        else:
            from unimlip_kit.data import SkipCounter

            vocab = AnswerVocab.from_samples(train_q)
            skips = SkipCounter()
            backbone = copy.deepcopy(model)  # fine-tuning must not touch the caller's model
            clf = VQAClassifier(backbone, len(vocab)).to(next(model.parameters()).device)
            kw = dict(image_size=image_size, channels=channels, skips=skips)
            losses = train_vqa(
                clf, tokenize, VQADataset(train_q, vocab, **kw), epochs=cfg.vqa_epochs, batch_size=cfg.vqa_batch_size,
                lr=cfg.vqa_lr, head_lr=cfg.vqa_head_lr, max_steps=cfg.vqa_max_steps,
                generator=make_generator(cfg.seed), progress=progress,
            )
            m, _ = evaluate_vqa(clf, tokenize, VQADataset(test_q, vocab, **kw), batch_size=cfg.vqa_batch_size,
                                progress=progress)
            m.update(answers=len(vocab), train_questions=len(train_q), steps=len(losses),
                     final_train_loss=losses[-1] if losses else float("nan"), skipped_images=skips.total,
                     unseen_answer_fraction=sum(vocab.index(s.answer) < 0 for s in test_q) / len(test_q))
            out["vqa"] = m
    out["seconds"] = time.perf_counter() - t0
    return out


def format_table(metrics: Mapping[str, Any]) -> str:
    """A small text table of the headline numbers."""
    rows = []
    if "retrieval" in metrics:
        r = metrics["retrieval"]
        for d in ("i2t", "t2i"):
            rows.append((f"retrieval {d}", f"R@1 {r[d]['R@1']:.3f}  R@5 {r[d]['R@5']:.3f}  R@10 {r[d]['R@10']:.3f}  "
                                           f"MedR {r[d]['median_rank']:.1f}  (chance R@1 {r['chance_R@1']:.4f})"))
    if "zero_shot" in metrics:
        z = metrics["zero_shot"]
        rows.append(("zero-shot", f"acc {z['accuracy']:.3f}  balanced {z['balanced_accuracy']:.3f}  (chance {z['chance']:.3f})"))
    if "linear_probe" in metrics:
        p = metrics["linear_probe"]
        rows.append(("linear probe", f"acc {p['accuracy']:.3f}  balanced {p['balanced_accuracy']:.3f}  (l2 {p['l2']:g})"))
    if "vqa" in metrics:
        v = metrics["vqa"]
        rows.append(("VQA", f"acc {v['accuracy']:.3f}  closed {v['closed_accuracy']:.3f}  open {v['open_accuracy']:.3f}  "
                            f"({v['n']} questions, {v['answers']} answers)"))
    for task, why in metrics.get("skipped", {}).items():
        rows.append((task, f"skipped: {why}"))
    width = max((len(a) for a, _ in rows), default=0)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


# --------------------------------------------------------------------------- run folder
def _load_recipe_module():
    from unimlip_kit.utils.io import load_script

    return load_script(REPO / "recipes" / "uni_mlip_roco.py")


def find_weights(run_dir: Path, checkpoint: str | None = None) -> Path:
    """``model.safetensors`` of ``checkpoint`` (a folder or file) or of the run's last complete checkpoint."""
    if checkpoint is not None:
        p = Path(checkpoint)
        return p / "model.safetensors" if p.is_dir() else p
    done = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if (p / "model.safetensors").is_file())
    if not done:
        raise FileNotFoundError(f"no checkpoint with model.safetensors under {run_dir / 'checkpoints'}")
    return done[-1] / "model.safetensors"


def load_run(run_dir: str | Path, *, checkpoint: str | None = None, device: str | torch.device = "cpu"):
    """``(model, tokenize, recipe_config)`` of a ``recipes/uni_mlip_roco.py`` run folder, model in eval mode."""
    from safetensors.torch import load_file

    from unimlip_kit.models import UniMlipModel
    from unimlip_kit.utils.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    recipe = _load_recipe_module()
    rcfg = load_config(recipe.RecipeConfig, run_dir / "config.yaml")
    model = UniMlipModel(rcfg.model)
    model.load_state_dict(load_file(str(find_weights(run_dir, checkpoint)), device="cpu"))
    model.to(device).eval()
    if (run_dir / "tokenizer" / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    elif rcfg.tokenizer == "bundled":
        from unimlip_kit.text import load_bundled_tokenizer

        tok = load_bundled_tokenizer()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(rcfg.tokenizer)
    max_len = rcfg.model.max_text_len

    def tokenize(texts: list[str]) -> Mapping[str, torch.Tensor]:
        enc = tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return model, tokenize, rcfg


def parse_args(argv: list[str] | None) -> tuple[EvalConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a recipes/uni_mlip_roco.py run folder")
    p.add_argument("--checkpoint", help="a checkpoints/step_* folder (default: the last one)")
    p.add_argument("--data-root", help="ROCO-layout folder for retrieval/classification (default: the run's data)")
    p.add_argument("--class-names", nargs="+", help="class names for zero-shot on labelled real data")
    p.add_argument("--vqa-rad", help="VQA-RAD JSON (VQA_RAD Dataset Public.json); trains on freeform/para, tests on test_*")
    p.add_argument("--slake", help="SLAKE folder with train.json, test.json and imgs/ (English questions)")
    p.add_argument("--tasks", nargs="+", choices=TASKS)
    p.add_argument("--output", help="where to write the metrics JSON (default <run-dir>/eval.json)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="EvalConfig override, repeatable")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from unimlip_kit.utils.config import config_from_dict, config_to_dict

    data = apply_overrides(config_to_dict(EvalConfig()), args.set)
    if args.tasks:
        data["tasks"] = list(args.tasks)
    if args.seed is not None:
        data["seed"] = args.seed
    return config_from_dict(EvalConfig, data), args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, args = parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    run_dir = Path(args.run_dir)
    model, tokenize, rcfg = load_run(run_dir, checkpoint=args.checkpoint, device=device)
    progress = not args.no_progress and rcfg.progress

    from unimlip_kit.data import SkipCounter, build_synthetic_dataset, read_roco

    skips = SkipCounter()
    data_root = args.data_root or rcfg.data.root
    synthetic = data_root is None
    if synthetic:
        data_root = build_synthetic_dataset(rcfg.data.synthetic, rcfg.data.cache_dir, progress=progress)
    train_records = read_roco(data_root, rcfg.data.train_split, skips=skips)
    eval_records = read_roco(data_root, cfg.eval_split, skips=skips)

    class_names = class_prompts = None
    vqa_train: list[Any] = []
    vqa_test: list[Any] = []
    if synthetic:
        class_names, class_prompts = synthetic_class_prompts(cfg.prompts_per_scene, cfg.seed)
        vqa_train = read_synthetic_vqa(data_root, "train", skips=skips)
        vqa_test = read_synthetic_vqa(data_root, "test", skips=skips)
    elif args.class_names:
        class_names = list(args.class_names)
    if args.vqa_rad:
        vqa_train = read_vqa_rad(args.vqa_rad, split="train", skips=skips)
        vqa_test = read_vqa_rad(args.vqa_rad, split="test", skips=skips)
    elif args.slake:
        vqa_train = read_slake(Path(args.slake) / "train.json", skips=skips)
        vqa_test = read_slake(Path(args.slake) / "test.json", skips=skips)

    metrics = evaluate_model(
        model, tokenize, train_records=train_records, eval_records=eval_records,
        image_size=rcfg.model.image_size, channels=rcfg.model.image_channels,
        class_names=class_names, class_prompts=class_prompts, vqa_train=vqa_train, vqa_test=vqa_test,
        cfg=cfg, progress=progress,
    )
    metrics["data"] = {"root": str(data_root), "synthetic": synthetic, "skipped_while_reading": skips.total,
                       "vqa_source": "vqa-rad" if args.vqa_rad else "slake" if args.slake else
                       ("synthetic" if synthetic else None)}
    metrics["config"] = dataclasses.asdict(cfg)
    metrics["run_dir"] = str(run_dir)
    metrics["meta"] = run_metadata()
    out = Path(args.output) if args.output else run_dir / "eval.json"
    save_json(out, metrics)
    print(format_table(metrics), flush=True)
    print(f"[done] {out}", flush=True)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
