"""Downstream evaluation: image–text retrieval, zero-shot and linear-probe classification, VQA."""

from unimlip_kit.eval.classification import classification_metrics
from unimlip_kit.eval.embed import encode_loader, encode_texts
from unimlip_kit.eval.fused import fused_metrics
from unimlip_kit.eval.linear_probe import DEFAULT_L2_GRID, LinearProbe, linear_probe_evaluate
from unimlip_kit.eval.retrieval import (DEFAULT_CHUNK_SIZE, meaning_level_metrics, retrieval_metrics, retrieval_ranks,
                                       summarize_ranks)
from unimlip_kit.eval.vqa import AnswerVocab, VQAClassifier, VQADataset, evaluate_vqa, train_vqa, vqa_accuracy
from unimlip_kit.eval.vqa_data import (VQASample, answer_type_of, normalize_answer, read_slake, read_synthetic_vqa, read_vqa_json,
                                      read_vqa_rad, read_vqa_source)
from unimlip_kit.eval.suite import (SYNTHETIC_IMAGE_QUESTIONS, TASKS, EvalConfig, evaluate_model, format_table, seeded_subset,
                                   synthetic_class_prompts)
from unimlip_kit.eval.zero_shot import DEFAULT_TEMPLATES, prompt_ensemble, zero_shot_classifier, zero_shot_evaluate, zero_shot_logits

__all__ = [
    "AnswerVocab",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_L2_GRID",
    "DEFAULT_TEMPLATES",
    "EvalConfig",
    "LinearProbe",
    "SYNTHETIC_IMAGE_QUESTIONS",
    "TASKS",
    "VQAClassifier",
    "VQADataset",
    "VQASample",
    "answer_type_of",
    "classification_metrics",
    "encode_loader",
    "encode_texts",
    "evaluate_model",
    "evaluate_vqa",
    "format_table",
    "fused_metrics",
    "linear_probe_evaluate",
    "meaning_level_metrics",
    "normalize_answer",
    "prompt_ensemble",
    "read_slake",
    "read_synthetic_vqa",
    "read_vqa_json",
    "read_vqa_rad",
    "read_vqa_source",
    "retrieval_metrics",
    "retrieval_ranks",
    "seeded_subset",
    "summarize_ranks",
    "synthetic_class_prompts",
    "train_vqa",
    "vqa_accuracy",
    "zero_shot_classifier",
    "zero_shot_evaluate",
    "zero_shot_logits",
]
