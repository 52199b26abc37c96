"""Downstream evaluation: image–text retrieval, zero-shot and linear-probe classification, VQA."""

from unimlip_kit.eval.retrieval import DEFAULT_CHUNK_SIZE, retrieval_metrics, retrieval_ranks, summarize_ranks

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "retrieval_metrics",
    "retrieval_ranks",
    "summarize_ranks",
]
