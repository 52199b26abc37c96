"""UniMlipModel and its parts: Hugging Face towers, projections, fusion encoder, ITM and MLM heads."""

from unimlip_kit.models.attention import attention
from unimlip_kit.models.checkpointing import enable_gradient_checkpointing
from unimlip_kit.models.config import UniMlipModelConfig
from unimlip_kit.models.fusion import FusionEncoder, FusionLayer, MultiHeadAttention
from unimlip_kit.models.heads import ITMHead, MLMHead, ProjectionHead
from unimlip_kit.models.pooling import POOLINGS, AttentionPool, TokenPool
from unimlip_kit.models.towers import IMAGE_TOWERS, ImageTower, build_image_tower, build_text_tower, keep_tokens
from unimlip_kit.models.unimlip import TERMS, UniMlipModel

__all__ = [
    "AttentionPool",
    "FusionEncoder",
    "FusionLayer",
    "IMAGE_TOWERS",
    "ITMHead",
    "ImageTower",
    "MLMHead",
    "MultiHeadAttention",
    "POOLINGS",
    "ProjectionHead",
    "TERMS",
    "TokenPool",
    "UniMlipModel",
    "UniMlipModelConfig",
    "attention",
    "build_image_tower",
    "build_text_tower",
    "enable_gradient_checkpointing",
    "keep_tokens",
]
