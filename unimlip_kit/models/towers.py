"""Image and text towers from Hugging Face transformers: built from a config, or loaded with ``from_pretrained``.

A tower is any transformers model whose ``last_hidden_state`` is a token
sequence with a [CLS]-style first token (ViT/DeiT/BEiT-style vision models,
BERT-style text models). Nothing is downloaded unless a hub id is given.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from unimlip_kit.models.config import UniMlipModelConfig

__all__ = ["build_image_tower", "build_text_tower", "keep_tokens", "tower_width"]


def build_image_tower(cfg: UniMlipModelConfig) -> nn.Module:
    """A ViT built from ``cfg`` (no download), or ``AutoModel.from_pretrained(cfg.image_model)``.

    Example:
        >>> tower = build_image_tower(UniMlipModelConfig(vision_layers=1, vision_width=32, vision_heads=2))
        >>> tower(pixel_values=torch.randn(2, 1, 64, 64)).last_hidden_state.shape
        torch.Size([2, 65, 32])
    """
    if cfg.image_model:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(cfg.image_model)
        return getattr(model, "vision_model", model)  # a CLIP checkpoint: keep its vision tower
    from transformers import ViTConfig, ViTModel

    vc = ViTConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.image_channels,
        hidden_size=cfg.vision_width,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        intermediate_size=4 * cfg.vision_width,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=0.0,
    )
    return ViTModel(vc, add_pooling_layer=False)


def build_text_tower(cfg: UniMlipModelConfig) -> nn.Module:
    """A BERT built from ``cfg`` (vocabulary from the tokenizer), or ``AutoModel.from_pretrained(cfg.text_model)``.

    Example:
        >>> tower = build_text_tower(UniMlipModelConfig(text_layers=1, text_width=32, text_heads=2, vocab_size=50))
        >>> tower(input_ids=torch.randint(0, 50, (2, 7))).last_hidden_state.shape
        torch.Size([2, 7, 32])
    """
    if cfg.text_model:
        from transformers import AutoModel

        return AutoModel.from_pretrained(cfg.text_model, add_pooling_layer=False)
    from transformers import BertConfig, BertModel

    bc = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.text_width,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        intermediate_size=4 * cfg.text_width,
        max_position_embeddings=cfg.max_text_len,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=cfg.pad_token_id,
    )
    return BertModel(bc, add_pooling_layer=False)


def tower_width(tower: nn.Module) -> int:
    """The hidden size of a transformers tower.

    Example:
        >>> tower_width(build_text_tower(UniMlipModelConfig(text_layers=1, text_width=32, text_heads=2)))
        32
    """
    return int(tower.config.hidden_size)


@contextlib.contextmanager
def keep_tokens(tower: nn.Module, keep_index: torch.Tensor | None) -> Iterator[None]:
    """Inside the block, the tower's embedding output keeps [CLS] plus the patch tokens in ``keep_index``.

    FLIP (Li et al. 2023, arXiv 2212.00794): the encoder sees fewer tokens, so
    it runs faster. ``keep_index`` is (B, K) indices into the P patch tokens.
    Works for any tower with an ``embeddings`` submodule whose output is
    ``[CLS] + patches`` (ViT, DeiT, BEiT, CLIP's vision model).

    Example:
        >>> tower = build_image_tower(UniMlipModelConfig(vision_layers=1, vision_width=32, vision_heads=2))
        >>> with keep_tokens(tower, torch.tensor([[0, 5], [1, 2]])):
        ...     tower(pixel_values=torch.randn(2, 1, 64, 64)).last_hidden_state.shape
        torch.Size([2, 3, 32])
    """
    if keep_index is None:
        yield
        return
    emb = getattr(tower, "embeddings", None)
    if emb is None:
        raise ValueError(f"{type(tower).__name__} has no 'embeddings' submodule: feature-level token keeping needs one")

    def hook(_module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
        idx = keep_index.to(out.device)[..., None].expand(-1, -1, out.shape[-1]) + 1
        return torch.cat([out[:, :1], torch.gather(out, 1, idx)], dim=1)

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
