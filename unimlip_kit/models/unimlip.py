"""UniMlipModel: image and text towers, joint projections, a cross-attention fusion encoder, ITM and MLM heads.

Uni-Mlip (Bawazir, Wu, Li, BMVC 2024, arXiv 2411.15207) on an ALBEF-style
backbone (Li et al. 2021, arXiv 2107.07651). ``forward(batch, terms)`` runs
only the passes the enabled loss terms need and returns the mapping that
:class:`unimlip_kit.losses.UniMlipLoss` consumes:

=============  ===========================================  ==============================================
term           passes                                       keys returned
=============  ===========================================  ==============================================
itc            image view 1, caption                        image_emb, text_emb, logit_scale
itc_feature    image view 2 with FLIP token keeping,        image_emb_feat, text_emb_feat, logit_scale
               augmented caption (its own dropout mask)
image_ssl      image view 1 and view 2 (data + feature)     image_z1, image_z2 (+ image_p1, image_p2)
text_ssl       caption and augmented caption (dropout)      text_h1, text_h2
itm            hard negatives → fusion on 3N pairs          itm_logits (M, 2), itm_labels (M,)
mlm            masked caption → fusion with view-1 tokens   mlm_logits (K, V), mlm_labels (K,)
=============  ===========================================  ==============================================

Every pass is shared between the terms that need it (view 1 serves itc,
image_ssl, itm and mlm), so turning a term off saves its passes. A model built
with ``logit_bias_init`` (SigLIP) also returns ``logit_bias`` with itc / itc_feature.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from unimlip_kit.losses.logit_scale import LogitBias, LogitScale
from unimlip_kit.models.config import UniMlipModelConfig
from unimlip_kit.models.fusion import FusionEncoder
from unimlip_kit.models.heads import ITMHead, MLMHead, ProjectionHead
from unimlip_kit.models.hub import UniMlipHubMixin
from unimlip_kit.models.pooling import POOLINGS, TokenPool
from unimlip_kit.models.towers import ImageTower, build_image_tower, build_text_tower, tower_width
from unimlip_kit.losses.feature_views import random_token_keep
from unimlip_kit.losses.itm import build_itm_pairs
from unimlip_kit.ops.hard_negatives import sample_hard_negatives

__all__ = ["TERMS", "UniMlipModel"]

#: Every loss term the model can feed, in :class:`unimlip_kit.losses.UniMlipLoss`'s names.
TERMS = ("itc", "itc_feature", "image_ssl", "text_ssl", "itm", "mlm")


class UniMlipModel(nn.Module, UniMlipHubMixin):
    """The Uni-Mlip dual encoder with a fusion encoder; see the module docstring for the output contract.

    Batch keys: ``images`` (B, C, H, W) in [0, 1] (view 1), optional
    ``images_view2``; ``input_ids``/``attention_mask`` (caption), optional
    ``input_ids_aug``/``attention_mask_aug`` (text-augmented caption);
    optional ``group_ids`` (B,) (pairs of one group are never each other's
    hard negative); optional ``mlm_input_ids``/``mlm_labels`` (otherwise
    masked here with :func:`unimlip_kit.losses.mask_tokens`).

    Example:
        >>> cfg = UniMlipModelConfig(vision_layers=1, text_layers=1, vision_width=32, text_width=32,
        ...                          vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16,
        ...                          vocab_size=50, mask_token_id=3, special_token_ids=[0, 1, 2, 3])
        >>> model = UniMlipModel(cfg)
        >>> batch = {"images": torch.rand(4, 1, 64, 64), "input_ids": torch.randint(4, 50, (4, 9)),
        ...          "attention_mask": torch.ones(4, 9, dtype=torch.long)}
        >>> out = model(batch, terms=("itc", "itm"), generator=torch.Generator().manual_seed(0))
        >>> sorted(out), out["image_emb"].shape, out["itm_logits"].shape
        (['image_emb', 'itm_labels', 'itm_logits', 'logit_scale', 'text_emb'], torch.Size([4, 16]), torch.Size([12, 2]))
    """

    def __init__(self, config: UniMlipModelConfig | None = None, *, image_backbone: nn.Module | None = None,
                 text_backbone: nn.Module | None = None) -> None:
        # image_backbone/text_backbone: prebuilt towers (from_pretrained rebuilds a saved folder's from their configs)
        super().__init__()
        cfg = self.config = config or UniMlipModelConfig()
        if not 0.0 < cfg.image_keep_ratio <= 1.0:
            raise ValueError(f"image_keep_ratio must be in (0, 1], got {cfg.image_keep_ratio}")
        if cfg.logit_scale_max > 100:
            raise ValueError(f"logit_scale_max must be <= 100 (CLIP's clamp), got {cfg.logit_scale_max}")
        for name in ("image_pool", "text_pool"):
            if getattr(cfg, name) not in POOLINGS:
                raise ValueError(f"{name} must be one of {', '.join(repr(p) for p in POOLINGS)}, got {getattr(cfg, name)!r}")
        backbone = image_backbone if image_backbone is not None else build_image_tower(cfg)
        self.image_tower = ImageTower(backbone, cfg.image_size, cfg.image_channels)
        if cfg.image_pool == "cls" and not self.image_tower.has_cls:
            raise ValueError("image_pool='cls' needs a ViT-like tower with a [CLS] token; "
                             "a convolutional tower pools with 'attn' or 'mean'")
        self.text_tower = text_backbone if text_backbone is not None else build_text_tower(cfg)
        vw, tw = tower_width(self.image_tower), tower_width(self.text_tower)
        self.image_pool = TokenPool(cfg.image_pool, vw, skip_first=self.image_tower.has_cls, heads=cfg.pool_heads)
        self.text_pool = TokenPool(cfg.text_pool, tw, heads=cfg.pool_heads)
        self.image_proj = ProjectionHead(vw, cfg.embed_dim, cfg.proj_hidden)
        self.text_proj = ProjectionHead(tw, cfg.embed_dim, cfg.proj_hidden)
        self.image_ssl_proj = ProjectionHead(vw, cfg.ssl_dim, hidden=vw, normalize=False)
        self.image_ssl_pred = (
            ProjectionHead(cfg.ssl_dim, cfg.ssl_dim, hidden=cfg.ssl_dim, normalize=False) if cfg.image_ssl_predictor else None
        )
        self.logit_scale = LogitScale(cfg.logit_scale_init, cfg.logit_scale_max)
        self.logit_bias = LogitBias(cfg.logit_bias_init) if cfg.logit_bias_init is not None else None  # SigLIP
        self.fusion = FusionEncoder(tw, vw, cfg.fusion_layers, cfg.fusion_heads, dropout=cfg.dropout,
                                    backend=cfg.attention_backend)
        self.itm_head = ITMHead(tw)
        vocab = int(getattr(self.text_tower.config, "vocab_size", cfg.vocab_size))
        self.mlm_head = MLMHead(tw, vocab)
        self.vocab_size = vocab
        if cfg.gradient_checkpointing:
            from unimlip_kit.models.checkpointing import enable_gradient_checkpointing

            enable_gradient_checkpointing(self)

    # ------------------------------------------------------------------ towers
    def image_tokens(self, images: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, W) image tokens (ViT: [CLS] first; CNN: the flattened feature map); ``keep_index`` (B, K) keeps those patches."""
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
        if not images.dtype.is_floating_point:
            # uint8/uint16 images are scaled to [0, 1] (x / 255, x / 65535), as the data readers do
            if images.dtype not in (torch.uint8, torch.uint16):
                raise ValueError(f"images must be float in [0, 1], uint8 or uint16, got {images.dtype}")
            images = images.float() / (255.0 if images.dtype == torch.uint8 else 65535.0)
        x = (images - self.config.pixel_mean) / self.config.pixel_std
        want = self.image_tower.channels
        if x.shape[1] != want:
            if x.shape[1] == 1:
                x = x.expand(-1, want, -1, -1)
            else:
                raise ValueError(f"images have {x.shape[1]} channels but the image tower expects {want}")
        return self.image_tower(x, keep_index)

    def text_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, L, W) text token states ([CLS] first).

        Token ids must lie in ``[0, vocab_size)`` and a caption may hold at most the text tower's
        position count (``max_text_len`` for a built tower): tokenise with ``truncation=True`` and
        ``max_length=config.max_text_len``.

        Example:
            >>> m = UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, vocab_size=40, max_text_len=8))
            >>> m.text_hidden(torch.full((1, 3), 40), None)
            Traceback (most recent call last):
            ...
            ValueError: input_ids hold ids up to 40 but the text tower's vocabulary has 40 entries (valid ids 0..39); was the caption tokenised with another tokenizer?
            >>> m.text_hidden(torch.zeros(1, 9, dtype=torch.long), None)
            Traceback (most recent call last):
            ...
            ValueError: input_ids have 9 tokens but the text tower has 8 positions; tokenise with truncation=True, max_length=8
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        if input_ids.numel() and input_ids.device.type != "meta":
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"input_ids hold ids up to {hi if hi >= self.vocab_size else lo} but the text tower's "
                                 f"vocabulary has {self.vocab_size} entries (valid ids 0..{self.vocab_size - 1}); "
                                 f"was the caption tokenised with another tokenizer?")
        positions = int(getattr(self.text_tower.config, "max_position_embeddings", input_ids.shape[1]))
        if input_ids.shape[1] > positions:
            raise ValueError(f"input_ids have {input_ids.shape[1]} tokens but the text tower has {positions} positions; "
                             f"tokenise with truncation=True, max_length={positions}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
        return self.text_tower(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def pool_image(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, W) image feature: [CLS] (``image_pool="cls"``), the mean of the patch tokens (``"mean"``) or attention pooling (``"attn"``).

        Example:
            >>> model = UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, vision_width=32, text_width=32,
            ...                                         vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16))
            >>> tokens = torch.arange(6.0).reshape(1, 3, 2)  # [CLS] + 2 patch tokens of width 2
            >>> model.pool_image(tokens).tolist()
            [[3.0, 4.0]]
        """
        return self.image_pool(tokens)

    def pool_text(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, W) text feature: [CLS] (``text_pool="cls"``), the mean over real tokens (``"mean"``, Sentence-BERT) or ``"attn"``.

        Mean pooling lets every word reach the embedding from the first step (a
        from-scratch [CLS] must first learn to attend to "left" or "hypodense").

        Example:
            >>> model = UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, vision_width=32, text_width=32,
            ...                                         vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16))
            >>> hidden = torch.tensor([[[1.0], [3.0], [100.0]]])  # 2 real tokens, then padding
            >>> model.pool_text(hidden, torch.tensor([[1, 1, 0]])).tolist()
            [[2.0]]
        """
        return self.text_pool(hidden, attention_mask)

    def random_keep_index(self, batch: int, patches: int, device: torch.device,
                          generator: torch.Generator | None = None) -> torch.Tensor | None:
        """FLIP's per-sample random subset of ``floor(ratio * P)`` patch indices (None when keeping all).

        Drawn with :func:`unimlip_kit.losses.random_token_keep`; a ViT's [CLS] token is always kept by
        :func:`~unimlip_kit.models.towers.keep_tokens`; a CNN keeps those positions of its feature map.
        """
        if self.config.image_keep_ratio >= 1:
            return None
        gdev = generator.device if generator is not None else torch.device("cpu")
        kept = random_token_keep(torch.zeros(batch, patches, device=gdev), self.config.image_keep_ratio, generator=generator)
        return kept.index.to(device)

    def _num_patches(self) -> int:
        if not self.image_tower.num_patches:
            raise ValueError("cannot find the number of patches of the image tower for token keeping")
        return self.image_tower.num_patches

    def fuse(self, text_hidden: torch.Tensor, text_mask: torch.Tensor | None, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, W) fused text states: ``text_hidden`` cross-attending to ``image_tokens`` in the fusion encoder.

        With ``config.fusion_global`` (default) the towers' pooled features enter the fusion
        too: the pooled image feature is prepended to the image tokens as one more key, and the
        pooled text feature replaces the text [CLS] state that the ITM head reads. Towers that
        pool by mean or attention never train their [CLS] states through ITC, so without this
        the fused [CLS] starts from an untrained token; with it, the fusion compares the two
        global features ITC has already aligned from its first layer (measurements in
        docs/ARCHITECTURE.md).

        Example:
            >>> m = UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, vision_width=32, text_width=32,
            ...                                     vision_heads=2, text_heads=2, fusion_heads=2, vocab_size=40))
            >>> ids, mask = torch.randint(0, 40, (2, 5)), torch.ones(2, 5, dtype=torch.long)
            >>> m.fuse(m.text_hidden(ids, mask), mask, m.image_tokens(torch.rand(2, 1, 64, 64))).shape
            torch.Size([2, 5, 32])
        """
        if self.config.fusion_global:
            image_tokens = torch.cat([self.pool_image(image_tokens).unsqueeze(1), image_tokens], dim=1)
            pooled = self.pool_text(text_hidden, text_mask)
            text_hidden = torch.cat([pooled.unsqueeze(1), text_hidden[:, 1:]], dim=1)
        return self.fusion(text_hidden, text_mask, image_tokens)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm joint-space image embeddings (B, embed_dim), all tokens kept.

        ``images`` are float in [0, 1], or uint8 / uint16, which are scaled to [0, 1] first.

        Example:
            >>> m = UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, vocab_size=40)).eval()
            >>> m.encode_image(torch.rand(2, 1, 64, 64)).shape
            torch.Size([2, 128])
            >>> u8 = torch.randint(0, 256, (1, 1, 64, 64), dtype=torch.uint8)
            >>> torch.allclose(m.encode_image(u8), m.encode_image(u8.float() / 255), atol=1e-6)
            True
        """
        return self.image_proj(self.pool_image(self.image_tokens(images)))

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-norm joint-space text embeddings (B, embed_dim).

        Example:
            >>> m = UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, vocab_size=40))
            >>> m.encode_text(torch.randint(0, 40, (2, 5))).shape
            torch.Size([2, 128])
        """
        return self.text_proj(self.pool_text(self.text_hidden(input_ids, attention_mask), attention_mask))

    # ------------------------------------------------------------------ training
    def tower_outputs(
        self,
        batch: Mapping[str, torch.Tensor],
        terms: Iterable[str] = TERMS,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """The towers' passes of :meth:`forward`: ``(outputs, view-1 image tokens, caption states)``.

        ``outputs`` holds every embedding the contrastive terms read (``image_emb``, ``text_emb``,
        ``image_emb_feat``, ``text_emb_feat``, ``image_z1/z2`` (+ ``image_p1/p2``), ``text_h1/h2``), drawn
        in :meth:`forward`'s order of random draws, so gradient caching
        (:func:`unimlip_kit.gradcache.grad_cache_step`) can replay exactly these passes. The tokens and
        states are ``None`` when no enabled term needs them.

        Example:
            >>> m = UniMlipModel(UniMlipModelConfig(vision_layers=1, text_layers=1, vision_width=32, text_width=32,
            ...                                     vision_heads=2, text_heads=2, fusion_heads=2, vocab_size=40))
            >>> b = {"images": torch.rand(2, 1, 64, 64), "input_ids": torch.randint(0, 40, (2, 5))}
            >>> out, tokens, hidden = m.tower_outputs(b, ("itc",))
            >>> sorted(out), tokens.shape, hidden.shape
            (['image_emb', 'text_emb'], torch.Size([2, 65, 32]), torch.Size([2, 5, 32]))
        """
        terms = set(terms)
        images, ids = batch["images"], batch["input_ids"]
        mask = batch.get("attention_mask")
        out: dict[str, torch.Tensor] = {}
        img_tokens = txt_hidden = None
        if terms & {"itc", "image_ssl", "itm", "mlm"}:
            img_tokens = self.image_tokens(images)
            if terms & {"itc", "itm"}:
                out["image_emb"] = self.image_proj(self.pool_image(img_tokens))
            if "image_ssl" in terms:
                out["image_z1"] = self.image_ssl_proj(self.pool_image(img_tokens))
        if terms & {"itc", "text_ssl", "itm"}:
            txt_hidden = self.text_hidden(ids, mask)
            pooled = self.pool_text(txt_hidden, mask)
            if terms & {"itc", "itm"}:
                out["text_emb"] = self.text_proj(pooled)
            if "text_ssl" in terms:
                out["text_h1"] = pooled

        if terms & {"itc_feature", "image_ssl"}:  # feature-level image view: view 2 with FLIP token keeping
            view2 = batch.get("images_view2", images)
            keep = self.random_keep_index(view2.shape[0], self._num_patches(), view2.device, generator) \
                if self.config.image_keep_ratio < 1 else None
            cls2 = self.pool_image(self.image_tokens(view2, keep))
            if "itc_feature" in terms:
                out["image_emb_feat"] = self.image_proj(cls2)
            if "image_ssl" in terms:
                out["image_z2"] = self.image_ssl_proj(cls2)
                if self.image_ssl_pred is not None:
                    out["image_p1"] = self.image_ssl_pred(out["image_z1"])
                    out["image_p2"] = self.image_ssl_pred(out["image_z2"])
        if terms & {"itc_feature", "text_ssl"}:  # augmented caption, its own dropout mask (SimCSE view)
            mask2 = batch.get("attention_mask_aug", mask)
            cls2 = self.pool_text(self.text_hidden(batch.get("input_ids_aug", ids), mask2), mask2)
            if "itc_feature" in terms:
                out["text_emb_feat"] = self.text_proj(cls2)
            if "text_ssl" in terms:
                out["text_h2"] = cls2

        return out, img_tokens, txt_hidden

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        terms: Iterable[str] = TERMS,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The outputs the enabled ``terms`` need (table in the module docstring); nothing else is computed."""
        terms = set(terms)
        unknown = terms - set(TERMS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {list(TERMS)}")
        for key in ("images", "input_ids"):
            if key not in batch:
                raise ValueError(f"batch lacks {key!r}; it has {sorted(batch)}")
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        out: dict[str, torch.Tensor] = {}
        if terms & {"itc", "itc_feature", "itm"}:
            out["logit_scale"] = self.logit_scale()
        if self.logit_bias is not None and terms & {"itc", "itc_feature"}:
            out["logit_bias"] = self.logit_bias()

        tower_out, img_tokens, txt_hidden = self.tower_outputs(batch, terms, generator=generator)
        out.update(tower_out)

        if "itm" in terms:
            t4i, i4t = sample_hard_negatives(
                out["image_emb"].detach(), out["text_emb"].detach(), out["logit_scale"].detach(),
                ids=batch.get("group_ids"), generator=generator,
            )
            pairs = build_itm_pairs(img_tokens, ids, mask, t4i, i4t)
            fused = self.fuse(txt_hidden[pairs.text_index], pairs.text_mask, pairs.image)
            out["itm_logits"] = self.itm_head(fused[:, 0])
            out["itm_labels"] = pairs.labels
        if "mlm" in terms:
            mlm_ids, mlm_labels = self._masked(batch, generator)
            fused = self.fuse(self.text_hidden(mlm_ids, mask), mask, img_tokens)
            selected = mlm_labels != -100
            out["mlm_logits"] = self.mlm_head(fused[selected])
            out["mlm_labels"] = mlm_labels[selected]
        return out

    def _masked(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None):
        if "mlm_input_ids" in batch and "mlm_labels" in batch:
            return batch["mlm_input_ids"], batch["mlm_labels"]
        if self.config.mask_token_id is None:
            raise ValueError("the mlm term needs config.mask_token_id (or mlm_input_ids/mlm_labels in the batch)")
        from unimlip_kit.losses import mask_tokens

        return mask_tokens(
            batch["input_ids"],
            mask_token_id=self.config.mask_token_id,
            vocab_size=self.vocab_size,
            special_token_ids=tuple(self.config.special_token_ids),
            attention_mask=batch.get("attention_mask"),
            prob=self.config.mlm_probability,
            generator=generator,
        )
