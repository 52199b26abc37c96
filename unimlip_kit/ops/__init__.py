"""Functional ops that dispatch between backends (the middle layer)."""

from unimlip_kit.ops.contrastive import contrastive_lse
from unimlip_kit.ops.hard_negative_gather import HardNegatives, gather_hard_negatives
from unimlip_kit.ops.hard_negatives import sample_hard_negatives
from unimlip_kit.ops.siglip import sigmoid_pair_loss

__all__ = ["HardNegatives", "contrastive_lse", "gather_hard_negatives", "sample_hard_negatives", "sigmoid_pair_loss"]
