"""Hugging Face's ``DataCollatorForLanguageModeling`` name and key names, for image-text batches.

Switch with one import::

    # from transformers import DataCollatorForLanguageModeling
    from unimlip_kit.compat.huggingface import DataCollatorForLanguageModeling

It is :class:`unimlip_kit.losses.ImageTextMLMCollator` with Hugging Face's argument names and
defaults (``tokenizer, mlm, whole_word_mask, mlm_probability, mask_replace_prob,
random_replace_prob, pad_to_multiple_of, return_tensors, seed``; pass them by name) and output
keys: ``input_ids`` (masked), ``attention_mask`` and ``labels`` (−100 where not scored).

Examples are Hugging Face's tokenised dicts (``{"input_ids": [...], ...}``; other tensor fields such
as ``pixel_values`` are stacked) or dataset samples ``{"image": (C, H, W) tensor, "caption": str}``,
optionally with ``"id"``, ``"label"`` and the other keys of :class:`unimlip_kit.data.ImageTextCollate`
(tokenised here; the images come back as ``images``, their class labels as ``class_labels``, −1
where unknown). A sample that is neither raises a ``ValueError`` naming it.

Differences from Hugging Face: random replacements are never special tokens, and
``min_one_target=True`` is available; ``mlm=False`` (causal LM), ``whole_word_mask=True`` and
``return_tensors`` other than ``"pt"`` raise. ``seed`` gives each call its own derived stream
(``derive_seed(seed, "mlm", call, worker, rank)``), so DataLoader workers never repeat one.
"""

from __future__ import annotations

from typing import Any, Sequence

from unimlip_kit.losses.mlm_collator import ImageTextMLMCollator, _is_tokenised

__all__ = ["DataCollatorForLanguageModeling"]


class DataCollatorForLanguageModeling(ImageTextMLMCollator):
    """``ImageTextMLMCollator`` with Hugging Face's keys (``input_ids`` masked, ``labels``).

    Example:
        >>> import torch
        >>> from unimlip_kit.text import train_wordpiece_tokenizer
        >>> tok = train_wordpiece_tokenizer(["Chest X-ray showing a left pleural effusion.", "Axial CT of the brain."], 80)
        >>> collate = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, seed=0)
        >>> batch = collate([{"input_ids": tok("Axial CT of the brain.")["input_ids"], "pixel_values": torch.zeros(1, 4, 4)}])
        >>> sorted(batch), batch["pixel_values"].shape
        (['attention_mask', 'input_ids', 'labels', 'pixel_values'], torch.Size([1, 1, 4, 4]))
        >>> batch = collate([{"image": torch.zeros(1, 4, 4), "caption": "Axial CT of the brain."}])  # a dataset sample
        >>> batch["images"].shape, batch["labels"].shape == batch["input_ids"].shape, batch["class_labels"].tolist()
        (torch.Size([1, 1, 4, 4]), True, [-1])
    """

    def __init__(
        self,
        tokenizer: Any,
        mlm: bool = True,
        *,  # by name only: transformers' own order differs between releases (5.x puts whole_word_mask third)
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        pad_to_multiple_of: int | None = None,
        return_tensors: str = "pt",
        seed: int | None = None,
        whole_word_mask: bool = False,
        **kwargs: Any,
    ) -> None:
        if whole_word_mask:
            raise ValueError("whole_word_mask=True is not supported by unimlip_kit's collator: it masks WordPiece "
                             "tokens independently (BERT's rule); use transformers' collator for whole words")
        kwargs.setdefault("masked_key", "input_ids")
        kwargs.setdefault("labels_key", "labels")
        super().__init__(tokenizer, mlm, mlm_probability, mask_replace_prob, random_replace_prob,
                         pad_to_multiple_of, return_tensors, seed, **kwargs)

    def _tokenise(self, samples: Sequence[Any]) -> dict[str, Any]:
        batch = super()._tokenise(samples)
        if self.labels_key in batch and "class_labels" not in batch and not _is_tokenised(samples):
            batch["class_labels"] = batch.pop(self.labels_key)
        return batch

