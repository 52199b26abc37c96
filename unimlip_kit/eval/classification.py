"""Classification scores shared by zero-shot, linear-probe and VQA evaluation."""

from __future__ import annotations

import torch

__all__ = ["classification_metrics"]


def classification_metrics(pred: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean per-class recall over classes present in ``labels``).

    Balanced accuracy is the number medical benchmarks report next to accuracy
    because their classes are rarely balanced: a model that always answers the
    majority class gets accuracy = its frequency but balanced accuracy = 1/C.

    Example:
        >>> classification_metrics(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]))
        {'accuracy': 0.75, 'balanced_accuracy': 0.75, 'n': 4}
        >>> classification_metrics(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))
        {'accuracy': 0.75, 'balanced_accuracy': 0.5, 'n': 4}
    """
    pred, labels = torch.as_tensor(pred).reshape(-1).long(), torch.as_tensor(labels).reshape(-1).long()
    if pred.shape != labels.shape:
        raise ValueError(f"pred and labels must have the same length, got {tuple(pred.shape)} and {tuple(labels.shape)}")
    n = labels.numel()
    if n == 0:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "n": 0}
    c = int(num_classes) if num_classes is not None else int(max(int(labels.max()), int(pred.max())) + 1)
    correct = (pred == labels).double()
    support = torch.bincount(labels, minlength=c).double()
    hits = torch.bincount(labels, weights=correct, minlength=c)
    present = support > 0
    return {
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float((hits[present] / support[present]).mean()),
        "n": n,
    }
