"""Functional ops that dispatch between backends (the middle layer)."""

from unimlip_kit.ops.contrastive import contrastive_lse
from unimlip_kit.ops.hard_negatives import sample_hard_negatives

__all__ = ["contrastive_lse", "sample_hard_negatives"]
