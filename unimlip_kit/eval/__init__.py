"""Downstream evaluation: image–text retrieval, zero-shot and linear-probe classification, VQA."""

from unimlip_kit.eval.classification import classification_metrics
from unimlip_kit.eval.linear_probe import DEFAULT_L2_GRID, LinearProbe, linear_probe_evaluate
from unimlip_kit.eval.retrieval import DEFAULT_CHUNK_SIZE, retrieval_metrics, retrieval_ranks, summarize_ranks
from unimlip_kit.eval.zero_shot import DEFAULT_TEMPLATES, zero_shot_classifier, zero_shot_evaluate, zero_shot_logits

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_L2_GRID",
    "DEFAULT_TEMPLATES",
    "LinearProbe",
    "classification_metrics",
    "linear_probe_evaluate",
    "retrieval_metrics",
    "retrieval_ranks",
    "summarize_ranks",
    "zero_shot_classifier",
    "zero_shot_evaluate",
    "zero_shot_logits",
]
