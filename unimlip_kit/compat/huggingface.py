"""Hugging Face's ``DataCollatorForLanguageModeling`` name and key names, for image-text batches.

Switch with one import::

    # from transformers import DataCollatorForLanguageModeling
    from unimlip_kit.compat.huggingface import DataCollatorForLanguageModeling

It is :class:`unimlip_kit.losses.ImageTextMLMCollator` with Hugging Face's output keys: ``input_ids``
(masked), ``attention_mask`` and ``labels`` (−100 where not scored). Examples are Hugging Face's
tokenised dicts (``{"input_ids": [...], ...}``; other tensor fields such as ``pixel_values`` are
stacked) or dataset samples ``{"image", "caption", ...}`` (tokenised here; their class labels move
to ``class_labels``). Differences from Hugging Face: random replacements are never special tokens,
and ``min_one_target=True`` is available; ``mlm=False`` (causal LM) is not supported.
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
    """

    def __init__(self, tokenizer: Any, mlm: bool = True, mlm_probability: float = 0.15, **kwargs: Any) -> None:
        kwargs.setdefault("masked_key", "input_ids")
        kwargs.setdefault("labels_key", "labels")
        super().__init__(tokenizer, mlm, mlm_probability, **kwargs)

    def _tokenise(self, samples: Sequence[Any]) -> dict[str, Any]:
        batch = super()._tokenise(samples)
        if self.labels_key in batch and "class_labels" not in batch and not _is_tokenised(samples):
            batch["class_labels"] = batch.pop(self.labels_key)
        return batch

