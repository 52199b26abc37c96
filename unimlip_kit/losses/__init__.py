"""Drop-in losses for medical vision-language pre-training (functions and thin nn.Modules)."""

from unimlip_kit.losses.infonce import ContrastiveOutput, info_nce
from unimlip_kit.losses.itc import ImageTextContrastiveLoss, image_text_contrastive_loss
from unimlip_kit.losses.logit_scale import LogitScale
from unimlip_kit.losses.ntxent import NTXentLoss, nt_xent_loss
from unimlip_kit.losses.simcse import SimCSELoss, simcse_loss
from unimlip_kit.ops.hard_negative_gather import HardNegatives, gather_hard_negatives
from unimlip_kit.ops.hard_negatives import sample_hard_negatives

__all__ = [
    "ContrastiveOutput",
    "HardNegatives",
    "ImageTextContrastiveLoss",
    "LogitScale",
    "NTXentLoss",
    "SimCSELoss",
    "gather_hard_negatives",
    "image_text_contrastive_loss",
    "info_nce",
    "nt_xent_loss",
    "sample_hard_negatives",
    "simcse_loss",
]
