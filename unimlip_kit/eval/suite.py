"""The downstream evaluation suite of a trained image-text model, shared by the training and evaluation recipes.

Tasks (:data:`TASKS`), each over one model that has ``encode_image``/``encode_text``
(and, for VQA, ``image_tokens``/``text_hidden``/``fusion``):

* ``retrieval``: image↔text R@1/5/10 and median rank (:func:`retrieval_metrics`), plus, when the
  records carry meaning groups, meaning-level R@1 and the ceiling of plain R@1
  (:func:`meaning_level_metrics`).
* ``zero_shot``: the class whose prompt-ensemble embedding is most similar (CLIP, Radford et al.
  2021). On the synthetic benchmark each of the 17 finding classes is described by captions
  the generator writes for that finding in every scene type.
* ``linear_probe``: L2 multinomial logistic regression on frozen image embeddings.
* ``vqa``: fine-tune the fusion encoder with an answer head, accuracy overall / closed / open.
  ``vqa_question_types`` restricts the questions (the synthetic lesion questions need the
  image's detail, see :func:`unimlip_kit.data.synth_text.make_qa`), and ``vqa_floor`` trains the
  same head on a freshly initialised copy of the model (no pre-training): the floor that shows
  what pre-training adds.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from unimlip_kit.eval.zero_shot import prompt_ensemble, zero_shot_classifier, zero_shot_evaluate
from unimlip_kit.eval.embed import encode_loader, encode_texts
from unimlip_kit.eval.linear_probe import linear_probe_evaluate
from unimlip_kit.eval.retrieval import meaning_level_metrics, retrieval_metrics
from unimlip_kit.eval.vqa import AnswerVocab, VQAClassifier, VQADataset, evaluate_vqa, train_vqa
from unimlip_kit.utils.seeding import derive_seed, make_generator, seed_everything

__all__ = ["EvalConfig", "SYNTHETIC_IMAGE_QUESTIONS", "TASKS", "evaluate_model", "format_table", "seeded_subset",
           "synthetic_class_prompts"]

TASKS = ("retrieval", "zero_shot", "linear_probe", "vqa")
#: The synthetic benchmark's question types that need the lesion's detail, not just the scene type.
SYNTHETIC_IMAGE_QUESTIONS = ("side", "level", "size", "density")
Tokenize = Callable[[list[str]], Mapping[str, torch.Tensor]]


@dataclasses.dataclass
class EvalConfig:
    """Evaluation settings (``eval.key=value`` in ``recipes/evaluate.py`` and in the training recipe).

    Example:
        >>> EvalConfig(tasks=["retrieval"]).tasks, EvalConfig().vqa_floor
        (['retrieval'], True)
    """

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
    #: keep only these question types (None: all); the training recipe asks the synthetic lesion questions
    vqa_question_types: list[str] | None = None
    #: also fine-tune the same VQA head on a freshly initialised model (the no-pre-training floor)
    vqa_floor: bool = True


def synthetic_class_prompts(prompts_per_scene: int = 3, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Class names and, per finding class, the captions the synthetic generator writes for it in every scene type.

    Example:
        >>> names, prompts = synthetic_class_prompts(1)
        >>> len(names), names[0], len(prompts[1]) >= 1
        (17, 'no_finding', True)
    """
    from unimlip_kit.data.synth_render import SceneSpec
    from unimlip_kit.data.synth_text import make_caption
    from unimlip_kit.data.synthetic import FINDING_CLASSES, SCENE_TYPES

    rng = np.random.default_rng(seed)
    prompts: list[list[str]] = []
    for name in FINDING_CLASSES:
        attrs = () if name == "no_finding" else tuple(name.split("_"))
        group = [make_caption(SceneSpec(mod, reg, *attrs), rng, 0.0) for mod, reg in SCENE_TYPES
                 for _ in range(prompts_per_scene)]
        prompts.append(sorted(set(group)))
    return list(FINDING_CLASSES), prompts


def seeded_subset(items: Sequence[Any], limit: int | None, seed: int, key: str) -> list[Any]:
    """A deterministic random subset of at most ``limit`` items, in their original order.

    Example:
        >>> seeded_subset(range(10), 3, 0, "x") == seeded_subset(range(10), 3, 0, "x"), len(seeded_subset(range(10), 3, 0, "x"))
        (True, 3)
        >>> seeded_subset([1, 2], None, 0, "x")
        [1, 2]
    """
    items = list(items)
    if limit is None or len(items) <= limit:
        return items
    g = torch.Generator().manual_seed(derive_seed(seed, key))
    keep = torch.randperm(len(items), generator=g)[:limit].sort().values.tolist()
    return [items[i] for i in keep]


def _loader(records: Sequence[Any], image_size: int, channels: int, cfg: EvalConfig):
    from torch.utils.data import DataLoader

    from unimlip_kit.data import ImageTextDataset

    ds = ImageTextDataset(list(records), image_size=image_size, channels=channels)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers, collate_fn=ds.collate_fn)


def _vqa(model: torch.nn.Module, tokenize: Tokenize, train_q: Sequence[Any], test_q: Sequence[Any], image_size: int,
         channels: int, cfg: EvalConfig, progress: bool) -> dict[str, Any]:
    from unimlip_kit.data import SkipCounter

    vocab = AnswerVocab.from_samples(train_q)
    skips = SkipCounter()
    backbone = copy.deepcopy(model)  # fine-tuning must not touch the caller's model
    torch.manual_seed(derive_seed(cfg.seed, "vqa-head"))
    clf = VQAClassifier(backbone, len(vocab)).to(next(model.parameters()).device)
    kw = dict(image_size=image_size, channels=channels, skips=skips)
    losses = train_vqa(
        clf, tokenize, VQADataset(train_q, vocab, **kw), epochs=cfg.vqa_epochs, batch_size=cfg.vqa_batch_size,
        lr=cfg.vqa_lr, head_lr=cfg.vqa_head_lr, max_steps=cfg.vqa_max_steps,
        generator=make_generator(cfg.seed), progress=progress,
    )
    m, _ = evaluate_vqa(clf, tokenize, VQADataset(test_q, vocab, **kw), batch_size=cfg.vqa_batch_size, progress=progress)
    m.update(answers=len(vocab), train_questions=len(train_q), steps=len(losses),
             final_train_loss=losses[-1] if losses else float("nan"), skipped_images=skips.total,
             unseen_answer_fraction=sum(vocab.index(s.answer) < 0 for s in test_q) / len(test_q))
    return m


def _fresh_copy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The same architecture, freshly initialised (``type(model)(model.config)``), on the model's device."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no .config: cannot build the no-pre-training VQA floor")
    torch.manual_seed(derive_seed(seed, "vqa-floor-init"))
    return type(model)(config).to(next(model.parameters()).device)


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
    """Run the enabled tasks and return ``{task: metrics}``; a task that cannot run says why under ``"skipped"``.

    Example:
        >>> out = evaluate_model(torch.nn.Linear(1, 1), lambda t: {}, train_records=[], eval_records=[], image_size=8,
        ...                      cfg=EvalConfig(tasks=["vqa"]), progress=False)
        >>> out["skipped"]
        {'vqa': 'no VQA questions (synthetic benchmark, --vqa-rad or --slake)'}
    """
    cfg = cfg or EvalConfig()
    unknown = set(cfg.tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; known: {list(TASKS)}")
    seed_everything(cfg.seed)
    out: dict[str, Any] = {"skipped": {}}
    t0 = time.perf_counter()

    ev = None
    if {"retrieval", "zero_shot", "linear_probe"} & set(cfg.tasks):
        ev = encode_loader(model, tokenize, _loader(eval_records, image_size, channels, cfg),
                           text="retrieval" in cfg.tasks, progress=progress, desc=f"embed {cfg.eval_split}")
        out["eval_images"] = int(ev["image_emb"].shape[0])
        out["eval_skipped"] = len(ev["skipped"])

    if "retrieval" in cfg.tasks:
        m: dict[str, Any] = retrieval_metrics(ev["image_emb"], ev["text_emb"], chunk_size=cfg.chunk_size)
        m["chance_R@1"] = 1.0 / ev["image_emb"].shape[0]
        group_of = {r.id: r.group for r in eval_records}
        groups = [group_of.get(i, "") for i in ev["ids"]] if "ids" in ev else []
        if groups and all(groups):
            m.update(meaning_level_metrics(ev["image_emb"], ev["text_emb"], groups, chunk_size=cfg.chunk_size))
        out["retrieval"] = m

    # zero-shot and the probe score the labelled images (label >= 0); unlabelled ones are left out, and counted
    known = ev["labels"] >= 0 if ev is not None else None
    labelled = known is not None and bool(known.any())
    if "zero_shot" in cfg.tasks:
        if not labelled:
            out["skipped"]["zero_shot"] = "the evaluation records have no class labels"
        elif class_prompts is None and class_names is None:
            out["skipped"]["zero_shot"] = "no class names or prompts (pass --class-names)"
        else:
            def enc(texts: list[str]) -> torch.Tensor:
                return encode_texts(model, tokenize, texts, batch_size=cfg.batch_size)

            w = prompt_ensemble(enc, class_prompts) if class_prompts is not None else \
                zero_shot_classifier(enc, [str(n).replace("_", " ") for n in class_names])
            if int(ev["labels"].max()) >= w.shape[0]:
                out["skipped"]["zero_shot"] = (f"label {int(ev['labels'].max())} has no class name "
                                               f"({w.shape[0]} names given)")
            else:
                m = zero_shot_evaluate(ev["image_emb"][known], ev["labels"][known], w)
                m["chance"] = 1.0 / w.shape[0]
                m["labelled_images"] = int(known.sum())
                out["zero_shot"] = m

    if "linear_probe" in cfg.tasks:
        train_sub = seeded_subset([r for r in train_records if r.label >= 0], cfg.probe_train_limit, cfg.seed, "probe")
        if not labelled or not train_sub:
            out["skipped"]["linear_probe"] = "the records have no class labels"
        else:
            tr = encode_loader(model, tokenize, _loader(train_sub, image_size, channels, cfg), text=False,
                               progress=progress, desc="embed probe train")
            if len(set(tr["labels"].tolist())) < 2:
                out["skipped"]["linear_probe"] = "the labelled training images hold fewer than 2 classes"
            else:
                c = int(max(int(tr["labels"].max()), int(ev["labels"].max()))) + 1
                out["linear_probe"] = linear_probe_evaluate(
                    tr["image_emb"], tr["labels"], ev["image_emb"][known], ev["labels"][known], num_classes=c,
                    generator=make_generator(cfg.seed),
                )
                out["linear_probe"]["train_images"] = int(tr["image_emb"].shape[0])
                out["linear_probe"]["labelled_images"] = int(known.sum())

    if "vqa" in cfg.tasks:
        keep = (lambda s: True) if cfg.vqa_question_types is None else \
            (lambda s: s.meta.get("question_type") in set(cfg.vqa_question_types))
        train_q = seeded_subset([s for s in vqa_train if keep(s)], cfg.vqa_train_limit, cfg.seed, "vqa-train")
        test_q = seeded_subset([s for s in vqa_test if keep(s)], cfg.vqa_test_limit, cfg.seed, "vqa-test")
        if not train_q or not test_q:
            out["skipped"]["vqa"] = "no VQA questions (synthetic benchmark, --vqa-rad or --slake)"
        else:
            out["vqa"] = _vqa(model, tokenize, train_q, test_q, image_size, channels, cfg, progress)
            out["vqa"]["question_types"] = cfg.vqa_question_types
            if cfg.vqa_floor:
                floor = _vqa(_fresh_copy(model, cfg.seed), tokenize, train_q, test_q, image_size, channels, cfg, progress)
                out["vqa_floor"] = floor
    out["seconds"] = time.perf_counter() - t0
    return out


def format_table(metrics: Mapping[str, Any]) -> str:
    """A small text table of the headline numbers of :func:`evaluate_model`'s result.

    Example:
        >>> print(format_table({"zero_shot": {"accuracy": 0.5, "balanced_accuracy": 0.4, "chance": 0.1}}))
        zero-shot  acc 0.500  balanced 0.400  (chance 0.100)
    """
    rows = []
    if "retrieval" in metrics:
        r = metrics["retrieval"]
        for d in ("i2t", "t2i"):
            meaning = f"  meaning R@1 {r[f'{d}_R@1_meaning']:.3f}" if f"{d}_R@1_meaning" in r else ""
            rows.append((f"retrieval {d}", f"R@1 {r[d]['R@1']:.3f}  R@5 {r[d]['R@5']:.3f}  R@10 {r[d]['R@10']:.3f}  "
                                           f"MedR {r[d]['median_rank']:.1f}{meaning}  (chance R@1 {r['chance_R@1']:.4f})"))
        if "ceiling_R@1" in r:
            rows.append(("retrieval ceiling", f"R@1 {r['ceiling_R@1']:.3f} ({r['distinct_meanings']} distinct meanings)"))
    if "zero_shot" in metrics:
        z = metrics["zero_shot"]
        rows.append(("zero-shot", f"acc {z['accuracy']:.3f}  balanced {z['balanced_accuracy']:.3f}  (chance {z['chance']:.3f})"))
    if "linear_probe" in metrics:
        p = metrics["linear_probe"]
        rows.append(("linear probe", f"acc {p['accuracy']:.3f}  balanced {p['balanced_accuracy']:.3f}  (l2 {p['l2']:g})"))
    for key, title in (("vqa", "VQA"), ("vqa_floor", "VQA, no pre-training")):
        if key in metrics:
            v = metrics[key]
            rows.append((title, f"acc {v['accuracy']:.3f}  closed {v['closed_accuracy']:.3f}  open {v['open_accuracy']:.3f}  "
                                f"({v['n']} questions, {v['answers']} answers)"))
    if "fused" in metrics:
        f = metrics["fused"]
        if "itm_accuracy" in f:
            rows.append(("ITM (held out)", f"acc {f['itm_accuracy']:.3f}  loss {f['itm_loss']:.3f}  "
                                           f"(positives {f['itm_positive_accuracy']:.3f}, hard negatives "
                                           f"{f['itm_negative_accuracy']:.3f})"))
        if "mlm_accuracy" in f:
            rows.append(("MLM (held out)", f"acc {f['mlm_accuracy']:.3f}  loss {f['mlm_loss']:.3f}  ({f['mlm_tokens']} tokens)"))
    for task, why in metrics.get("skipped", {}).items():
        rows.append((task, f"skipped: {why}"))
    width = max((len(a) for a, _ in rows), default=0)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)
