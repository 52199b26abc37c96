"""Drop-in losses for medical vision-language pre-training (functions and thin nn.Modules)."""

from unimlip_kit.losses.feature_views import (
    KeptTokens,
    dropout_views,
    feature_dropout,
    gather_tokens,
    random_token_keep,
)
from unimlip_kit.losses.infonce import ContrastiveOutput, info_nce
from unimlip_kit.losses.itc import ImageTextContrastiveLoss, image_text_contrastive_loss
from unimlip_kit.losses.itm import (
    ImageTextMatchingLoss,
    ITMPairs,
    build_itm_pairs,
    image_text_matching_loss,
    sample_itm_pairs,
)
from unimlip_kit.losses.logit_scale import LogitBias, LogitScale
from unimlip_kit.losses.memory_bank import MemoryBank, MemoryBankNTXentLoss, memory_bank_nt_xent_loss
from unimlip_kit.losses.mlm import (
    IGNORE_INDEX,
    MaskedLanguageModelingLoss,
    mask_tokens,
    masked_language_modeling_loss,
)
from unimlip_kit.losses.mlm_collator import ImageTextMLMCollator
from unimlip_kit.losses.ntxent import NTXentLoss, nt_xent_loss
from unimlip_kit.losses.siglip import SigLIPLoss, siglip_loss
from unimlip_kit.losses.simcse import SimCSELoss, simcse_loss
from unimlip_kit.losses.simsiam import SimSiamLoss, simsiam_loss
from unimlip_kit.losses.unimlip import (
    DEFAULT_WEIGHTS,
    TERM_KEYS,
    MissingLossInputsError,
    UniMlipLoss,
    UniMlipOutput,
)
# Importable here for older code; public (in __all__) only in their home, unimlip_kit.ops.
from unimlip_kit.ops.hard_negative_gather import HardNegatives, gather_hard_negatives  # noqa: F401
from unimlip_kit.ops.hard_negatives import sample_hard_negatives  # noqa: F401

__all__ = [
    "ContrastiveOutput",
    "DEFAULT_WEIGHTS",
    "IGNORE_INDEX",
    "ITMPairs",
    "ImageTextContrastiveLoss",
    "ImageTextMLMCollator",
    "ImageTextMatchingLoss",
    "KeptTokens",
    "LogitBias",
    "LogitScale",
    "MaskedLanguageModelingLoss",
    "MemoryBank",
    "MemoryBankNTXentLoss",
    "MissingLossInputsError",
    "NTXentLoss",
    "SigLIPLoss",
    "SimCSELoss",
    "SimSiamLoss",
    "TERM_KEYS",
    "UniMlipLoss",
    "UniMlipOutput",
    "build_itm_pairs",
    "dropout_views",
    "feature_dropout",
    "gather_tokens",
    "image_text_contrastive_loss",
    "image_text_matching_loss",
    "info_nce",
    "mask_tokens",
    "masked_language_modeling_loss",
    "memory_bank_nt_xent_loss",
    "nt_xent_loss",
    "random_token_keep",
    "sample_itm_pairs",
    "siglip_loss",
    "simcse_loss",
    "simsiam_loss",
]
