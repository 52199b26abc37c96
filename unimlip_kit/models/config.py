"""The model's dataclass config (used by :class:`UniMlipModel` and nested in the recipe's config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["UniMlipModelConfig"]


@dataclass
class UniMlipModelConfig:
    """Sizes of the towers and heads; the defaults build a tiny ViT + BERT model (the recipe's default run
    overrides ``image_tower="resnet"`` and ``image_pool="attn"``, chosen by measurement: docs/ARCHITECTURE.md).

    Attributes:
        image_model: Hugging Face hub id or local folder of a pretrained vision model
            (``AutoModel``, e.g. a ViT); ``None`` builds a ViT from the fields below.
        text_model: hub id or local folder of a pretrained BERT-like text model; ``None`` builds one.
        image_tower: the built image backbone, ``"vit"``, ``"resnet"`` or ``"convnext"``
            (:func:`~unimlip_kit.models.towers.build_image_tower`); ignored when ``image_model`` is set.
        image_size, patch_size, image_channels: the built tower's input (grey radiographs: 1 channel).
        vision_width, vision_layers, vision_heads: the built ViT's size.
        cnn_hidden_sizes, cnn_depths: the built ResNet/ConvNeXt's stage widths and blocks per stage.
        image_pool, text_pool: the tower's global feature for ITC and the SSL heads: ``"attn"``
            (learned-query attention pooling, :class:`~unimlip_kit.models.pooling.AttentionPool`),
            ``"mean"`` of the patch tokens / real text tokens, or ``"cls"`` (the first token; ViT only
            for images). Measurements behind the defaults are in docs/ARCHITECTURE.md.
        pool_heads: heads of the attention pooling.
        vocab_size, max_text_len: the built text model's vocabulary (set from the tokenizer) and positions.
        text_width, text_layers, text_heads: the built text model's size.
        pad_token_id: the tokenizer's padding id (the built text model's embedding padding index).
        embed_dim: the joint image-text embedding size (ITC).
        proj_hidden: hidden size of the projection MLPs (0 = linear projection).
        ssl_dim: output size of the image self-supervision projector (NT-Xent / SimSiam).
        fusion_layers, fusion_heads: the cross-attention fusion encoder (width = text width).
        fusion_global: the pooled image feature joins the fusion's image tokens and the pooled text
            feature replaces the text [CLS] state (:meth:`UniMlipModel.fuse`).
        dropout: dropout of the built towers and of the fusion encoder (SimCSE needs > 0).
        logit_scale_init, logit_scale_max: CLIP's temperature, clamped at ``logit_scale_max`` (≤ 100).
        logit_bias_init: SigLIP's learnable logit bias (output ``logit_bias``), started here (SigLIP: −10);
            ``None`` builds none (InfoNCE needs none). The recipe sets −10 when ``loss.itc_loss`` is ``"siglip"``.
        image_keep_ratio: FLIP-style fraction of patch tokens kept in the feature-level image view
            (1.0 = keep all, no speed-up).
        attention_backend: ``None`` (automatic), ``"sdpa"`` or ``"xformers"`` for the fusion encoder.
        image_ssl_predictor: add SimSiam's predictor (outputs ``image_p1``/``image_p2``).
        pixel_mean, pixel_std: images in [0, 1] are normalised as ``(x - mean) / std`` inside the model.
        mask_token_id, special_token_ids: the tokenizer's [MASK] and special ids (MLM masking
            inside ``forward``; set by the recipe from the tokenizer).
        mlm_probability: BERT's selection rate for image-conditioned MLM.
        gradient_checkpointing: recompute the towers' activations in backward instead of keeping them
            (:func:`~unimlip_kit.models.checkpointing.enable_gradient_checkpointing`): less memory, one
            more tower forward per step.

    Example:
        >>> cfg = UniMlipModelConfig(vision_width=32, text_width=32, embed_dim=16, special_token_ids=[0, 1])
        >>> (cfg.image_size // cfg.patch_size) ** 2, cfg.embed_dim, cfg.image_pool, cfg.image_model is None
        (64, 16, 'mean', True)
        >>> from dataclasses import asdict
        >>> UniMlipModelConfig(**asdict(cfg)) == cfg  # round-trips through a plain dict (YAML/JSON configs)
        True
    """

    image_model: str | None = None
    text_model: str | None = None
    image_tower: str = "vit"
    image_size: int = 64
    patch_size: int = 8
    image_channels: int = 1
    vision_width: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    cnn_hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 128])
    cnn_depths: list[int] = field(default_factory=lambda: [1, 1, 1])
    image_pool: Literal["attn", "mean", "cls"] = "mean"
    text_pool: Literal["attn", "mean", "cls"] = "mean"
    pool_heads: int = 4
    vocab_size: int = 1000
    max_text_len: int = 64
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    pad_token_id: int = 0
    embed_dim: int = 128
    proj_hidden: int = 0
    ssl_dim: int = 128
    fusion_layers: int = 1
    fusion_heads: int = 4
    fusion_global: bool = True
    dropout: float = 0.1
    logit_scale_init: float = 1 / 0.07
    logit_scale_max: float = 100.0
    logit_bias_init: float | None = None
    image_keep_ratio: float = 0.5
    attention_backend: Literal["sdpa", "xformers"] | None = None
    image_ssl_predictor: bool = False
    pixel_mean: float = 0.5
    pixel_std: float = 0.25
    mask_token_id: int | None = None
    special_token_ids: list[int] = field(default_factory=list)
    mlm_probability: float = 0.15
    gradient_checkpointing: bool = False
