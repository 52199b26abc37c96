"""Uni-Mlip's data-level views: a collated batch becomes the model's inputs (flip, two image views, captions, tokens).

:class:`BatchMaker` is the one place the training recipe, its evaluation and the throughput benchmark
turn a :func:`~unimlip_kit.data.build_dataloader` batch into model inputs:

1. :class:`~unimlip_kit.augment.LateralityAwareFlip` mirrors images and swaps left/right in their
   captions (``augment.flip``); the group ids follow the new meaning
   (:func:`~unimlip_kit.data.regroup_after_flip`), so ITM never draws a same-meaning negative;
2. two image views per sample from the modality's preset (``augment.view1_strength`` for the first view,
   seen by ITC/ITM/MLM, ``augment.strength`` for the self-supervised second view);
3. the captions and an EDA-augmented copy (:class:`~unimlip_kit.augment.CaptionAugment`), tokenised.

Every random stream restarts from ``derive_seed(seed, "augment", *keys)`` (the recipe passes the step,
micro-batch and rank), so any step can be replayed exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from unimlip_kit.augment import CaptionAugment, LateralityAwareFlip, preset
from unimlip_kit.data import regroup_after_flip
from unimlip_kit.train.config import RecipeConfig
from unimlip_kit.utils import derive_seed

__all__ = ["VIEW_PRESETS", "BatchMaker"]

#: Modalities with their own view preset; any other modality uses ``generic``. CT is not among them:
#: it arrives already windowed to [0, 1] (JPEG, or DICOM windowed by the reader), so the HU preset does not
#: apply; pathology's preset needs RGB, and the recipe's images are grey.
VIEW_PRESETS = ("xray", "mri", "ultrasound", "generic")


class BatchMaker:
    """Turns a collated batch into the model's inputs: flip, two augmented views, captions, tokens.

    ``maker(batch, *keys)`` re-seeds every stream from ``(cfg.seed, *keys)`` and returns
    ``images``, ``images_view2``, ``input_ids``, ``attention_mask``, ``input_ids_aug``,
    ``attention_mask_aug`` and ``group_ids`` on ``device`` (or the call's ``device=``); ``maker.last_flip``
    keeps the call's per-sample flip flags and flipped captions (the gradient-cached step groups several
    micro-batches with them). ``maker.tokens(captions)`` tokenises (padding, truncation at ``cfg.model.max_text_len``).

    Example:
        >>> from unimlip_kit.data import collate_image_text
        >>> from unimlip_kit.text import train_wordpiece_tokenizer
        >>> caps = ["Mass in the right lung.", "No focal lesion."]
        >>> tok = train_wordpiece_tokenizer(caps * 4, vocab_size=60)
        >>> batch = collate_image_text([{"image": torch.rand(1, 16, 16), "caption": c, "id": str(i), "modality": "xray"}
        ...                             for i, c in enumerate(caps)])
        >>> maker = BatchMaker(RecipeConfig(), tok, torch.device("cpu"))
        >>> out = maker(batch, 0, 0, 0)
        >>> sorted(out), out["images_view2"].shape
        (['attention_mask', 'attention_mask_aug', 'group_ids', 'images', 'images_view2', 'input_ids', 'input_ids_aug'], torch.Size([2, 1, 16, 16]))
        >>> all(torch.equal(out[k], maker(batch, 0, 0, 0)[k]) for k in out)  # the same keys replay the same views
        True
    """

    def __init__(self, cfg: RecipeConfig, tokenizer: Any, device: torch.device) -> None:
        a = cfg.augment
        self.cfg, self.tok, self.device = cfg, tokenizer, device
        self.flip = LateralityAwareFlip(p=a.flip_p, mode=a.flip if a.enabled else "forbid", generator=0)

        def make(modality: str, strength: str, seed: int):
            return (lambda x: x) if strength == "none" else preset(modality, strength, generator=seed)

        self.views: dict[str, tuple[Any, Any]] = {}
        if a.enabled:
            for m in VIEW_PRESETS:
                self.views[m] = (make(m, a.view1_strength, 0), make(m, a.strength, 1))
        mask = tokenizer.mask_token or "[MASK]"
        self.last_flip: tuple[list[bool], list[str]] | None = None
        self.text_aug = (CaptionAugment(alpha=a.text_alpha, p=a.text_p, mask_token=mask, generator=0)
                         if a.enabled and a.text else None)

    def reseed(self, *keys: object) -> None:
        """Restart the flip, every view and the caption augmentation from ``derive_seed(seed, "augment", *keys)``."""
        base = derive_seed(self.cfg.seed, "augment", *keys)
        self.flip.manual_seed(derive_seed(base, "flip"))
        for m, views in self.views.items():
            for k, v in enumerate(views, 1):
                if hasattr(v, "manual_seed"):
                    v.manual_seed(derive_seed(base, m, k))
        if self.text_aug is not None:
            self.text_aug.manual_seed(derive_seed(base, "text"))

    def _augment(self, images: torch.Tensor, modality: list[str], which: int) -> torch.Tensor:
        name = [m if m in self.views else "generic" for m in modality]
        out = torch.empty_like(images)
        for m in sorted(set(name)):
            idx = torch.tensor([i for i, n in enumerate(name) if n == m])
            out[idx] = self.views[m][which - 1](images[idx])
        return out

    def tokens(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of ``captions`` (padded, truncated at ``model.max_text_len``)."""
        enc = self.tok(captions, padding=True, truncation=True, max_length=self.cfg.model.max_text_len, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def __call__(self, batch: dict[str, Any], *keys: object, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        self.reseed(*keys)
        images, captions = batch["images"], list(batch["captions"])
        images, captions = self.flip(images, captions)  # left/right in the caption follows the image
        group_ids, flipped = batch["group_ids"], [False] * len(captions)
        if self.flip.mode == "swap":
            flipped = self.flip.flipped().tolist()
            flipped = flipped * len(captions) if len(flipped) == 1 else flipped
            if "group_keys" in batch:
                group_ids = regroup_after_flip(batch["group_keys"], flipped, captions)
        self.last_flip = (flipped, captions)  # what regroup_after_flip needs to group several batches together
        if self.views:
            view1, view2 = self._augment(images, batch["modality"], 1), self._augment(images, batch["modality"], 2)
        else:
            view1 = view2 = images
        t1 = self.tokens(captions)
        t2 = self.tokens(self.text_aug(captions)) if self.text_aug is not None else t1
        out = {"images": view1, "images_view2": view2, **t1,
               "input_ids_aug": t2["input_ids"], "attention_mask_aug": t2["attention_mask"],
               "group_ids": group_ids}
        dev = self.device if device is None else device
        return {k: v.to(dev, non_blocking=True) for k, v in out.items()}
