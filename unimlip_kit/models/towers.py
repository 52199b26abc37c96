"""Image and text towers from Hugging Face transformers: built from a config, or loaded with ``from_pretrained``.

Two kinds of image backbone sit behind one interface, :class:`ImageTower`, which
always yields a token sequence ``(B, T, W)`` for the pooling and the fusion encoder:

* ViT-like (ViT, DeiT, BEiT, CLIP's vision model): ``last_hidden_state`` is
  ``[CLS] + patches`` with the backbone's own position embeddings;
* convolutional (``ResNetModel``, ``ConvNextModel``, or any model whose
  ``last_hidden_state`` is a ``(B, C, h, w)`` feature map, as ConVIRT, GLoRIA,
  MedCLIP and PMC-CLIP's ResNet-50): the map is flattened row-major to ``h·w``
  tokens and a learned 2-D position table is added, so a pooling that attends
  (or the fusion encoder) knows where each token lies.

Text towers are BERT-like models whose first token is [CLS]. Nothing is
downloaded unless a hub id is given.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from unimlip_kit.models.config import UniMlipModelConfig

__all__ = ["CNN_MODEL_TYPES", "IMAGE_TOWERS", "ImageTower", "build_image_tower", "build_text_tower", "keep_tokens", "tower_width"]

#: Tower kinds the model can build from its config without a download.
IMAGE_TOWERS = ("vit", "resnet", "convnext")
#: transformers ``model_type`` values whose ``last_hidden_state`` is a (B, C, h, w) feature map.
CNN_MODEL_TYPES = ("resnet", "convnext", "convnextv2", "regnet", "bit", "efficientnet", "mobilenet_v2")


def build_image_tower(cfg: UniMlipModelConfig) -> nn.Module:
    """The Hugging Face image backbone: built from ``cfg`` (no download), or ``AutoModel.from_pretrained(cfg.image_model)``.

    ``cfg.image_tower`` picks the built kind: ``"vit"`` (patch size ``patch_size``, width
    ``vision_width``, ``vision_layers`` blocks), ``"resnet"`` (He et al. 2016, basic blocks,
    stage widths ``cnn_hidden_sizes`` and depths ``cnn_depths``) or ``"convnext"`` (Liu et al.
    2022, same stage fields, patchify stem of 4). Wrap it in :class:`ImageTower` for tokens.

    Example:
        >>> tower = build_image_tower(UniMlipModelConfig(vision_layers=1, vision_width=32, vision_heads=2))
        >>> tower(pixel_values=torch.randn(2, 1, 64, 64)).last_hidden_state.shape
        torch.Size([2, 65, 32])
        >>> cnn = build_image_tower(UniMlipModelConfig(image_tower="resnet", cnn_hidden_sizes=[8, 16], cnn_depths=[1, 1]))
        >>> cnn(pixel_values=torch.randn(2, 1, 64, 64)).last_hidden_state.shape  # a (B, C, h, w) feature map
        torch.Size([2, 16, 8, 8])
    """
    if cfg.image_model:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(cfg.image_model)
        return getattr(model, "vision_model", model)  # a CLIP checkpoint: keep its vision tower
    if cfg.image_tower not in IMAGE_TOWERS:
        raise ValueError(f"image_tower must be one of {list(IMAGE_TOWERS)}, got {cfg.image_tower!r}")
    if cfg.image_tower in ("resnet", "convnext"):
        if not cfg.cnn_hidden_sizes or len(cfg.cnn_hidden_sizes) != len(cfg.cnn_depths):
            raise ValueError(f"cnn_hidden_sizes and cnn_depths must be non-empty and of one length, "
                             f"got {cfg.cnn_hidden_sizes} and {cfg.cnn_depths}")
        if cfg.image_tower == "resnet":
            from transformers import ResNetConfig, ResNetModel

            rc = ResNetConfig(num_channels=cfg.image_channels, embedding_size=cfg.cnn_hidden_sizes[0],
                              hidden_sizes=list(cfg.cnn_hidden_sizes), depths=list(cfg.cnn_depths), layer_type="basic")
            return ResNetModel(rc)
        from transformers import ConvNextConfig, ConvNextModel

        cc = ConvNextConfig(num_channels=cfg.image_channels, hidden_sizes=list(cfg.cnn_hidden_sizes),
                            depths=list(cfg.cnn_depths), num_stages=len(cfg.cnn_depths), patch_size=4,
                            drop_path_rate=0.0)
        return ConvNextModel(cc)
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


def _is_cnn(backbone: nn.Module) -> bool:
    return getattr(getattr(backbone, "config", None), "model_type", None) in CNN_MODEL_TYPES


class ImageTower(nn.Module):
    """One interface over ViT-like and convolutional backbones: pixels in, ``(B, T, W)`` tokens out.

    * ViT-like: the tokens are ``last_hidden_state`` (``has_cls``: token 0 is [CLS]).
      ``keep_index`` (B, K) keeps [CLS] plus those patches *before* the encoder (FLIP,
      Li et al. 2023, arXiv 2212.00794): fewer tokens, a faster pass.
    * Convolutional: the (B, C, h, w) map becomes ``h·w`` row-major tokens plus a learned
      position table (std 0.02, ViT's init). ``keep_index`` keeps those spatial positions
      *after* the backbone (spatial token dropping on the feature map): a feature-level view
      that hides part of the image from the pooling and the fusion, without FLIP's speed-up.

    Example:
        >>> cfg = UniMlipModelConfig(image_tower="resnet", cnn_hidden_sizes=[8, 16], cnn_depths=[1, 1])
        >>> tower = ImageTower(build_image_tower(cfg), image_size=64, channels=1)
        >>> tower(torch.rand(2, 1, 64, 64)).shape, tower.num_patches, tower.has_cls, tower.width
        (torch.Size([2, 64, 16]), 64, False, 16)
        >>> tower(torch.rand(2, 1, 64, 64), keep_index=torch.tensor([[0, 9], [5, 63]])).shape
        torch.Size([2, 2, 16])
    """

    def __init__(self, backbone: nn.Module, image_size: int, channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.is_cnn = _is_cnn(backbone)
        self.has_cls = not self.is_cnn
        cfg = backbone.config
        self.channels = int(getattr(cfg, "num_channels", channels))
        if self.is_cnn:
            was = backbone.training
            backbone.eval()
            with torch.no_grad():  # one dry pass finds the feature map's grid and width
                fmap = backbone(pixel_values=torch.zeros(1, self.channels, image_size, image_size)).last_hidden_state
            backbone.train(was)
            if fmap.dim() != 4:
                raise ValueError(f"{type(backbone).__name__} is listed as convolutional but returned "
                                 f"last_hidden_state of shape {tuple(fmap.shape)}")
            self.width, self.grid = int(fmap.shape[1]), (int(fmap.shape[2]), int(fmap.shape[3]))
            self.num_patches = self.grid[0] * self.grid[1]
            self.position = nn.Parameter(torch.randn(1, self.num_patches, self.width) * 0.02)
        else:
            self.width = int(cfg.hidden_size)
            emb = getattr(backbone, "embeddings", None)
            n = getattr(getattr(emb, "patch_embeddings", None), "num_patches", None)
            self.num_patches = int(n) if n is not None else 0

    @property
    def config(self):  # the backbone's transformers config (num_channels, model_type, ...)
        return self.backbone.config

    def forward(self, pixel_values: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, W) tokens of normalised ``pixel_values``; see the class docstring for ``keep_index``."""
        if not self.is_cnn:
            if keep_index is not None and not self.num_patches:
                raise ValueError(f"cannot find the number of patches of {type(self.backbone).__name__} for token keeping")
            with keep_tokens(self.backbone, keep_index):
                return self.backbone(pixel_values=pixel_values).last_hidden_state
        fmap = self.backbone(pixel_values=pixel_values).last_hidden_state
        if tuple(fmap.shape[2:]) != self.grid:
            raise ValueError(f"images of {tuple(pixel_values.shape[2:])} give a {tuple(fmap.shape[2:])} feature map; "
                             f"the tower was built for {self.grid} (set model.image_size to the image size)")
        tokens = fmap.flatten(2).transpose(1, 2) + self.position
        if keep_index is None:
            return tokens
        idx = keep_index.to(tokens.device)[..., None].expand(-1, -1, tokens.shape[-1])
        return torch.gather(tokens, 1, idx)


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
    """The hidden size of a transformers tower (or an :class:`ImageTower`'s token width).

    Example:
        >>> tower_width(build_text_tower(UniMlipModelConfig(text_layers=1, text_width=32, text_heads=2)))
        32
    """
    if isinstance(tower, ImageTower):
        return tower.width
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
