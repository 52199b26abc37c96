r"""VQA fine-tuning as answer classification on the fusion encoder (ALBEF/METER-style classifier head).

The question's tokens attend to the image's tokens through the pre-trained fusion
encoder; the fused [CLS] concatenated with the mean of the fused question tokens
goes through an MLP over the *training* answer set
(the usual formulation for VQA-RAD and SLAKE, e.g. MEVF, M3AE and Uni-Mlip's
VQA evaluation). A test answer outside that set can never be predicted and
counts as wrong. Accuracy is exact match of normalised answers, reported overall
and split into closed (yes/no) and open questions.

``backbone`` is anything with ``image_tokens(images)``, ``text_hidden(ids, mask)``
and ``fusion(text, mask, image_tokens)``, such as
:class:`unimlip_kit.models.UniMlipModel`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unimlip_kit.eval.vqa_data import VQASample, normalize_answer
from unimlip_kit.utils.optim import cosine_with_warmup, param_groups  # the pre-training schedule, shared

__all__ = [
    "AnswerVocab",
    "VQAClassifier",
    "VQADataset",
    "evaluate_vqa",
    "train_vqa",
    "vqa_accuracy",
]

Tokenize = Callable[[list[str]], Mapping[str, torch.Tensor]]


class AnswerVocab:
    """The answer classes: every distinct training answer seen at least ``min_count`` times, sorted.

    Example:
        >>> v = AnswerVocab(["yes", "no", "yes", "liver"])
        >>> v.answers, v.index("liver"), v.index("spleen")
        (['liver', 'no', 'yes'], 0, -1)
    """

    def __init__(self, answers: Iterable[str], min_count: int = 1) -> None:
        counts: dict[str, int] = {}
        for a in answers:
            counts[a] = counts.get(a, 0) + 1
        self.answers = sorted(a for a, c in counts.items() if c >= min_count)
        if not self.answers:
            raise ValueError("the answer vocabulary is empty (no training answers)")
        self._index = {a: i for i, a in enumerate(self.answers)}

    def __len__(self) -> int:
        return len(self.answers)

    def index(self, answer: str) -> int:
        """Class index of ``answer``, ``-1`` when it is not a training answer."""
        return self._index.get(answer, -1)

    @classmethod
    def from_samples(cls, samples: Sequence[VQASample], min_count: int = 1) -> "AnswerVocab":
        """The vocabulary of ``samples``' answers."""
        return cls((s.answer for s in samples), min_count)


class VQAClassifier(nn.Module):
    """Fusion-encoder VQA: image tokens + question states → fusion → [CLS ; mean of tokens] → MLP → answer logits.

    Pooling the token mean next to [CLS] matters after contrastive pre-training:
    ITC only shapes the *projected* [CLS], and the raw [CLS] state can end up
    nearly the same for every input (cosine > 0.999 between questions in our
    tiny runs), while the fused word tokens still differ.

    Example:
        >>> class Toy(nn.Module):
        ...     def __init__(self):
        ...         super().__init__(); self.emb = nn.Embedding(20, 8); self.img = nn.Linear(4, 8)
        ...     def image_tokens(self, x): return self.img(x.flatten(2).transpose(1, 2))
        ...     def text_hidden(self, ids, mask): return self.emb(ids)
        ...     def fusion(self, t, m, i): return t + i.mean(1, keepdim=True)
        >>> clf = VQAClassifier(Toy(), num_answers=5, width=8)
        >>> clf(torch.rand(2, 4, 3, 3), torch.randint(0, 20, (2, 6)), torch.ones(2, 6)).shape
        torch.Size([2, 5])
    """

    def __init__(self, backbone: nn.Module, num_answers: int, width: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        if num_answers < 1:
            raise ValueError(f"num_answers must be >= 1, got {num_answers}")
        if width is None:
            norm = getattr(getattr(backbone, "fusion", None), "norm", None)
            if norm is None or not hasattr(norm, "normalized_shape"):
                raise ValueError("cannot infer the fusion width from backbone.fusion.norm; pass width=")
            width = int(norm.normalized_shape[0])
        self.backbone = backbone
        # BatchNorm without affine on the pooled features, as MAE's linear probe (He et al. 2021,
        # arXiv 2111.06377): pre-trained token states can differ by ~1e-3 of their norm between
        # inputs, which a plain MLP head at a normal learning rate does not pick up.
        self.head = nn.Sequential(
            nn.BatchNorm1d(2 * width, affine=False), nn.Linear(2 * width, 2 * width), nn.GELU(), nn.LayerNorm(2 * width), nn.Dropout(dropout), nn.Linear(2 * width, num_answers)
        )

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        img = self.backbone.image_tokens(images)
        txt = self.backbone.text_hidden(input_ids, attention_mask)
        fuse = getattr(self.backbone, "fuse", None)  # UniMlipModel.fuse adds the pooled features, as in pre-training
        fused = fuse(txt, attention_mask, img) if fuse is not None else self.backbone.fusion(txt, attention_mask, img)
        if attention_mask is None:
            mean = fused.mean(1)
        else:
            m = attention_mask.to(fused.dtype).unsqueeze(-1)
            mean = (fused * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(torch.cat([fused[:, 0], mean], dim=-1))


class VQADataset(Dataset):
    """Samples with their images decoded lazily; unreadable images are skipped (``None``) and counted.

    ``load_image(path) -> (C, H, W)`` tensor; the default is
    :func:`unimlip_kit.data.load_image` with ``image_size`` and ``channels``.

    Example:
        >>> from pathlib import Path
        >>> from unimlip_kit.data import SkipCounter
        >>> ss = [VQASample("1", Path("a.png"), "Is there a mass?", "yes", "closed"),
        ...       VQASample("2", Path("gone.png"), "Which organ?", "liver", "open")]
        >>> def load(p):
        ...     if p.name == "gone.png": raise FileNotFoundError(p)
        ...     return torch.zeros(1, 4, 4)
        >>> ds = VQADataset(ss, AnswerVocab(["yes", "no"]), load_image=load, skips=SkipCounter())
        >>> ds[0]["label"], ds[0]["image"].shape, ds[1], ds.skips.counts()
        (1, torch.Size([1, 4, 4]), None, {'missing_image': 1})
        >>> batch = VQADataset.collate([ds[0], ds[1]])
        >>> batch["images"].shape, batch["questions"], batch["labels"].tolist()
        (torch.Size([1, 1, 4, 4]), ['Is there a mass?'], [1])
    """

    def __init__(
        self,
        samples: Sequence[VQASample],
        vocab: AnswerVocab,
        *,
        image_size: int = 224,
        channels: int = 1,
        load_image: Callable[[Any], torch.Tensor] | None = None,
        skips: Any = None,
    ) -> None:
        self.samples, self.vocab, self.skips = list(samples), vocab, skips
        if load_image is None:
            from unimlip_kit.data.decode import load_image as _load

            def load_image(p: Any) -> torch.Tensor:
                return _load(p, size=image_size, channels=channels)

        self.load_image = load_image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        s = self.samples[i]
        try:
            image = self.load_image(s.image_path)
        except (OSError, ValueError) as err:
            if self.skips is not None:
                self.skips.add(s.qid, "missing_image" if isinstance(err, FileNotFoundError) else "corrupt_image", str(err)[:200])
            return None
        return {"image": image, "question": s.question, "label": self.vocab.index(s.answer), "index": i}

    @staticmethod
    def collate(items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        """Stack images, keep questions as strings; drops skipped (``None``) items."""
        items = [x for x in items if x is not None]
        if not items:
            return {"images": torch.empty(0), "questions": [], "labels": torch.empty(0, dtype=torch.long), "index": []}
        return {
            "images": torch.stack([x["image"] for x in items]),
            "questions": [x["question"] for x in items],
            "labels": torch.tensor([x["label"] for x in items], dtype=torch.long),
            "index": [x["index"] for x in items],
        }


def vqa_accuracy(predicted: Sequence[str], samples: Sequence[VQASample]) -> dict[str, float]:
    """Exact-match accuracy of normalised answers: overall, closed and open, with counts.

    Predictions and reference answers both go through
    :func:`~unimlip_kit.eval.vqa_data.normalize_answer` (case, spacing, a final full
    stop), so ``"Yes."`` matches ``"yes"``.

    Example:
        >>> from pathlib import Path
        >>> ss = [VQASample("1", Path("a"), "q", "yes", "closed"), VQASample("2", Path("a"), "q", "liver", "open"),
        ...       VQASample("3", Path("a"), "q", "no", "closed")]
        >>> vqa_accuracy(["yes", "spleen", "no"], ss)
        {'accuracy': 0.6666666666666666, 'closed_accuracy': 1.0, 'open_accuracy': 0.0, 'n': 3, 'n_closed': 2, 'n_open': 1}
        >>> vqa_accuracy(["Yes.", " LIVER ", "No"], ss)["accuracy"]
        1.0
    """
    if len(predicted) != len(samples):
        raise ValueError(f"predicted has {len(predicted)} answers for {len(samples)} samples")
    hits: dict[str, list[bool]] = {"closed": [], "open": []}
    for p, s in zip(predicted, samples):
        hits.setdefault(s.answer_type, []).append(normalize_answer(p) == normalize_answer(s.answer))
    allh = [h for v in hits.values() for h in v]

    def frac(v: list[bool]) -> float:
        return sum(v) / len(v) if v else float("nan")

    return {
        "accuracy": frac(allh),
        "closed_accuracy": frac(hits["closed"]),
        "open_accuracy": frac(hits["open"]),
        "n": len(allh),
        "n_closed": len(hits["closed"]),
        "n_open": len(hits["open"]),
    }


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _encode(tokenize: Tokenize, questions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    enc = tokenize(questions)
    mask = enc.get("attention_mask")
    return enc["input_ids"].to(device), None if mask is None else mask.to(device)


@torch.no_grad()
def evaluate_vqa(
    model: VQAClassifier,
    tokenize: Tokenize,
    dataset: VQADataset,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[dict[str, float], list[str]]:
    """Predict every answer of ``dataset`` and score it with :func:`vqa_accuracy`.

    Skipped (unreadable) images are left out of the scores (and counted in
    ``dataset.skips``); returns ``(metrics, predictions)`` for the samples scored.

    Example:
        >>> from pathlib import Path
        >>> class Toy(nn.Module):  # any backbone with image_tokens / text_hidden / fusion
        ...     def __init__(self):
        ...         super().__init__(); self.emb = nn.Embedding(20, 8); self.img = nn.Linear(1, 8)
        ...     def image_tokens(self, x): return self.img(x.flatten(2).transpose(1, 2))
        ...     def text_hidden(self, ids, mask): return self.emb(ids)
        ...     def fusion(self, t, m, i): return t + i.mean(1, keepdim=True)
        >>> qa = [("is there a mass", "yes", "closed"), ("is it normal", "no", "closed"),
        ...       ("which organ is this", "liver", "open"), ("is there any fluid", "yes", "closed")]
        >>> ss = [VQASample(str(k), Path(f"{k}.png"), q, a, t) for k, (q, a, t) in enumerate(qa)]
        >>> tok = lambda qs: {"input_ids": torch.tensor([[len(w) for w in q.split()[:3]] for q in qs])}
        >>> def load(p):  # sample 3's image is missing: it is skipped, not scored
        ...     if p.stem == "3": raise FileNotFoundError(p)
        ...     return torch.full((1, 4, 4), int(p.stem) / 4)
        >>> ds = VQADataset(ss, AnswerVocab.from_samples(ss), load_image=load)
        >>> _ = torch.manual_seed(0); clf = VQAClassifier(Toy(), num_answers=len(ds.vocab), width=8)
        >>> metrics, preds = evaluate_vqa(clf, tok, ds, batch_size=2)
        >>> metrics["n"], metrics["n_closed"], metrics["n_open"], len(preds), set(preds) <= set(ds.vocab.answers)
        (3, 2, 1, 3, True)
    """
    from tqdm.auto import tqdm

    was = model.training
    model.eval()
    dev = _device_of(model)
    preds: list[str] = []
    scored: list[VQASample] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=VQADataset.collate)
    for batch in tqdm(loader, desc="vqa eval", disable=not progress, leave=False):
        if not batch["questions"]:
            continue
        ids, mask = _encode(tokenize, batch["questions"], dev)
        logits = model(batch["images"].to(dev), ids, mask)
        preds += [dataset.vocab.answers[int(k)] for k in logits.argmax(1).cpu()]
        scored += [dataset.samples[i] for i in batch["index"]]
    model.train(was)
    return vqa_accuracy(preds, scored), preds


def train_vqa(
    model: VQAClassifier,
    tokenize: Tokenize,
    dataset: VQADataset,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-4,
    head_lr: float = 1e-3,
    weight_decay: float = 0.01,
    max_steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> list[float]:
    """Fine-tune backbone (``lr``) and head (``head_lr``) with AdamW and cross-entropy; cosine decay.

    Returns the per-step training losses. Samples whose answer is not in the
    vocabulary (label −1) are ignored by the loss.

    Example:
        >>> from pathlib import Path
        >>> class Toy(nn.Module):  # any backbone with image_tokens / text_hidden / fusion
        ...     def __init__(self):
        ...         super().__init__(); self.emb = nn.Embedding(20, 8); self.img = nn.Linear(1, 8)
        ...     def image_tokens(self, x): return self.img(x.flatten(2).transpose(1, 2))
        ...     def text_hidden(self, ids, mask): return self.emb(ids)
        ...     def fusion(self, t, m, i): return t + i.mean(1, keepdim=True)
        >>> qa = [("is there a mass", "yes", "closed"), ("is it normal", "no", "closed"),
        ...       ("which organ is this", "liver", "open"), ("is there any fluid", "yes", "closed")]
        >>> ss = [VQASample(str(k), Path(f"{k}.png"), q, a, t) for k, (q, a, t) in enumerate(qa)]
        >>> tok = lambda qs: {"input_ids": torch.tensor([[len(w) for w in q.split()[:3]] for q in qs])}
        >>> ds = VQADataset(ss, AnswerVocab.from_samples(ss), load_image=lambda p: torch.full((1, 4, 4), int(p.stem) / 4))
        >>> _ = torch.manual_seed(0); clf = VQAClassifier(Toy(), num_answers=len(ds.vocab), width=8)
        >>> losses = train_vqa(clf, tok, ds, epochs=1, batch_size=2, generator=torch.Generator().manual_seed(0))
        >>> len(losses), all(math.isfinite(x) and x > 0 for x in losses)  # 4 samples / batch 2 = 2 steps
        (2, True)
    """
    from tqdm.auto import tqdm

    dev = _device_of(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=VQADataset.collate, generator=generator)
    total = epochs * len(loader) if max_steps is None else min(max_steps, epochs * len(loader))

    opt = torch.optim.AdamW(  # every fine-tuned weight decays (no_decay=None), as VQA fine-tuning always did
        param_groups(model.backbone, weight_decay, lr=lr, no_decay=None)
        + param_groups(model.head, weight_decay, lr=head_lr, no_decay=None),
        weight_decay=weight_decay,
    )
    base = [g["lr"] for g in opt.param_groups]
    losses: list[float] = []
    model.train()
    bar = tqdm(total=total, desc="vqa finetune", disable=not progress, leave=False)
    step = 0
    while step < total:
        start = step
        for batch in loader:
            if step >= total:
                break
            if len(batch["questions"]) < 2 or bool((batch["labels"] < 0).all()):
                continue  # BatchNorm needs two samples; an all-skipped or unlabelled batch has nothing to learn
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * cosine_with_warmup(step, 0, total, 0.0)  # cosine to 0, no warm-up
            ids, mask = _encode(tokenize, batch["questions"], dev)
            logits = model(batch["images"].to(dev), ids, mask)
            loss = F.cross_entropy(logits, batch["labels"].to(dev), ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step == start:
            raise ValueError("no trainable VQA batch: every image was skipped or no answer is in the vocabulary")
    bar.close()
    return losses
