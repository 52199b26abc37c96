"""Classification scores shared by zero-shot, linear-probe and VQA evaluation."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["classification_metrics"]


def _class_indices(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must be integer class indices, got dtype {t.dtype}; convert with .long() after rounding")
    return t.reshape(-1).long().cpu()


def classification_metrics(pred: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean per-class recall over classes present in ``labels``).

    Balanced accuracy is the number medical benchmarks report next to accuracy
    because their classes are rarely balanced: a model that always answers the
    majority class gets accuracy = its frequency but balanced accuracy = 1/C.

    ``labels`` of ``-1`` (the collate's "unknown") are not scored; ``n`` counts the
    scored samples and ``n_unknown`` (present only when non-zero) the others. Float or
    boolean inputs, labels below -1, and labels or predictions outside ``[0, num_classes)``
    raise ``ValueError``.

    Example:
        >>> classification_metrics(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]))
        {'accuracy': 0.75, 'balanced_accuracy': 0.75, 'n': 4}
        >>> classification_metrics(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))
        {'accuracy': 0.75, 'balanced_accuracy': 0.5, 'n': 4}
        >>> classification_metrics(torch.tensor([1, 0, 1]), torch.tensor([1, -1, 0]), num_classes=2)
        {'accuracy': 0.5, 'balanced_accuracy': 0.5, 'n': 2, 'n_unknown': 1}
    """
    pred, labels = _class_indices(pred, "pred"), _class_indices(labels, "labels")
    if pred.shape != labels.shape:
        raise ValueError(f"pred and labels must have the same length, got {tuple(pred.shape)} and {tuple(labels.shape)}")
    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if labels.numel() and int(labels.min()) < -1:
        raise ValueError(f"labels must be class indices >= 0 or -1 (unknown), got {int(labels.min())}")
    known = labels >= 0
    n_unknown = int((~known).sum())
    pred, labels = pred[known], labels[known]
    n = labels.numel()
    extra = {"n_unknown": n_unknown} if n_unknown else {}
    if n == 0:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "n": 0, **extra}
    if int(pred.min()) < 0:
        raise ValueError(f"pred must be class indices >= 0, got {int(pred.min())}")
    if num_classes is not None:
        c = int(num_classes)
        for name, t in (("labels", labels), ("pred", pred)):
            if int(t.max()) >= c:
                raise ValueError(f"{name} hold class {int(t.max())} but num_classes={c} (valid: 0..{c - 1})")
    else:
        c = int(max(int(labels.max()), int(pred.max())) + 1)
    correct = (pred == labels).double()
    support = torch.bincount(labels, minlength=c).double()
    hits = torch.bincount(labels, weights=correct, minlength=c)
    present = support > 0
    return {
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float((hits[present] / support[present]).mean()),
        "n": n,
        **extra,
    }
