"""A collator that tokenises captions and masks them: Hugging Face's MLM collator for image-text batches.

``transformers.DataCollatorForLanguageModeling`` pads already tokenised text
and masks it (BERT's 15 % / 80-10-10 rule, special tokens and padding never
selected). Image-text pre-training needs the same on a batch of
``{"image", "caption", ...}`` samples: :class:`ImageTextMLMCollator` stacks
the images with :class:`unimlip_kit.data.ImageTextCollate` (skipped samples
dropped and counted), tokenises the captions and masks them with
:func:`unimlip_kit.losses.mask_tokens`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch

from unimlip_kit.losses.mlm import mask_tokens
from unimlip_kit.utils.seeding import derive_seed, make_generator

__all__ = ["ImageTextMLMCollator"]


def _stream_keys() -> tuple[object, ...]:
    # Same stream convention as unimlip_kit.augment.seeded: worker id and seed, then rank.
    info = torch.utils.data.get_worker_info()
    keys: tuple[object, ...] = ()
    if info is not None:
        keys += ("worker", int(info.id), int(getattr(info, "seed", 0)))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        keys += ("rank", int(torch.distributed.get_rank()))
    return keys


def _is_tokenised(samples: Sequence[Any]) -> bool:
    """Hugging Face examples (tokenizer outputs: dicts or ``BatchEncoding``) rather than dataset samples."""
    return bool(samples) and all(isinstance(s, Mapping) and "input_ids" in s for s in samples)


_TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")


def _stack(values: list[Any]) -> Any:
    """Tensors of one shape are stacked, numbers become a tensor, anything else stays a list."""
    if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
        return torch.stack(values)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return torch.tensor(values)
    return values


def _is_skip(sample: Any) -> bool:
    """A skipped sample: ``None`` or a ``SkippedSample`` / ``(id, reason[, detail])`` tuple of strings."""
    if sample is None:
        return True
    return isinstance(sample, tuple) and 2 <= len(sample) <= 3 and all(isinstance(v, str) for v in sample)


def _is_integer_label(label: Any) -> bool:
    if isinstance(label, torch.Tensor):
        return label.numel() == 1 and not label.dtype.is_floating_point and not label.dtype.is_complex
    return isinstance(label, numbers.Integral)


def _checked_samples(samples: Sequence[Any]) -> list[Any]:
    """Dataset samples as the default collate needs them, or a ValueError / TypeError naming the first bad one.

    Kept samples pass through, a ``None`` label removed (the collate then records −1; it also gives a sample
    without an id ``""``); skipped samples pass through.
    """
    if isinstance(samples, (str, bytes, Mapping)) or not isinstance(samples, Sequence):
        raise TypeError(f"the collator takes a list of samples, got {type(samples).__name__}")
    tokenised = [i for i, s in enumerate(samples) if isinstance(s, Mapping) and "input_ids" in s]
    if tokenised:  # some, not all (all is the Hugging Face path)
        other = next(i for i, s in enumerate(samples) if i not in tokenised)
        raise ValueError(f"sample {tokenised[0]} is tokenised (has 'input_ids') but sample {other} is not: "
                         "a batch holds either tokenised examples or dataset samples with 'caption'")
    out: list[Any] = []
    shape: tuple[tuple[int, ...], int] | None = None
    for i, s in enumerate(samples):
        if _is_skip(s):
            out.append(s)
            continue
        if not isinstance(s, Mapping):
            hint = (" (a tuple is read as a skipped sample (id, reason[, detail]) of strings)"
                    if isinstance(s, (tuple, list)) else "")
            raise TypeError(f"sample {i} is a {type(s).__name__}; expected a dict {{'image': (C, H, W) tensor, "
                            f"'caption': str}} or a tokenised example with 'input_ids'{hint}")
        if "caption" not in s:
            raise ValueError(f"sample {i} has neither 'caption' (a string to tokenise) nor 'input_ids' "
                             f"(a tokenised caption); its keys are {sorted(map(str, s))}")
        if not isinstance(s["caption"], str):
            raise TypeError(f"sample {i}: 'caption' must be a str, got {type(s['caption']).__name__}")
        if "image" not in s:
            raise ValueError(f"sample {i} has a caption but no 'image' (a (C, H, W) tensor); its keys are "
                             f"{sorted(map(str, s))}")
        image = s["image"]
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            tensor = isinstance(image, torch.Tensor)
            got = f"shape {tuple(image.shape)}" if tensor else type(image).__name__
            raise (ValueError if tensor else TypeError)(
                f"sample {i}: 'image' must be a (C, H, W) tensor, got {got}; turn files, PIL images and arrays into "
                "(C, H, W) tensors first (unimlip_kit.data.load_image, an ImageTextDataset, or a model's preprocess: "
                "unimlip_kit.inference.ImagePreprocess)")
        if shape is None:
            shape = (tuple(image.shape), i)
        elif tuple(image.shape) != shape[0]:
            raise ValueError(f"sample {i}: image shape {tuple(image.shape)} differs from sample {shape[1]}'s "
                             f"{shape[0]}; resize every image to one size (load_image(..., size=)) before collating")
        label = s.get("label")
        if label is not None and not _is_integer_label(label):
            raise ValueError(f"sample {i}: 'label' must be an integer class index (-1 or None when unknown), "
                             f"got {label!r}")
        if label is None:  # unknown: the collate records -1 for a sample without a label
            s = {k: v for k, v in s.items() if k != "label"}
        out.append(s)
    return out


class ImageTextMLMCollator:
    r"""Collate image-caption samples, tokenise the captions and apply BERT masking.

    A drop-in for ``DataCollatorForLanguageModeling(tokenizer, mlm_probability=...)``
    in image-text batches: the constructor takes its arguments
    (``mlm``, ``mlm_probability``, ``mask_replace_prob``, ``random_replace_prob``,
    ``pad_to_multiple_of``, ``seed``) and the same rule applies — each
    non-special, non-padding token is selected with probability
    ``mlm_probability``; 80 % of the selected become [MASK], 10 % a random token,
    10 % stay. Differences, on purpose: random replacements are never special
    tokens (Hugging Face draws them from the whole vocabulary), and
    ``min_one_target=True`` can force one target per caption.

    Samples are either dataset samples ``{"image": (C, H, W) tensor, "caption": str}``
    with optional ``"id"``, ``"label"`` (int; ``None`` or −1 = unknown), ``"modality"``,
    ``"image_key"`` and ``"group"`` (collated by ``collate``, default
    :class:`unimlip_kit.data.ImageTextCollate`; a sample without ``"id"`` gets ``""`` in
    the batch's ``ids``; ``None`` or a ``SkippedSample`` is dropped and listed in ``skipped``),
    or Hugging Face examples with ``"input_ids"`` (padded with ``tokenizer.pad``). With the
    default collate, a sample of another shape raises a ``ValueError`` naming the sample
    and what it lacks (``TypeError`` for a wrong type).
    The batch gains ``input_ids`` and ``attention_mask`` (the unmasked caption, for
    ITC and ITM) and, under ``masked_key`` / ``labels_key`` (default
    ``mlm_input_ids`` / ``mlm_labels``, the keys :class:`unimlip_kit.models.UniMlipModel`
    reads), the masked ids and labels (−100 where not scored). For Hugging Face's
    key names pass ``masked_key="input_ids", labels_key="labels"`` (the
    unmasked ids are then replaced, as in Hugging Face's collator).

    Randomness: ``generator`` (a ``torch.Generator``) if given; else ``seed``
    (an int: call k draws from ``derive_seed(seed, "mlm", k, worker, rank)``, so
    DataLoader workers and ranks never repeat a stream); else torch's global RNG.

    Example:
        >>> from unimlip_kit.text import train_wordpiece_tokenizer
        >>> tok = train_wordpiece_tokenizer(["Chest X-ray showing a left pleural effusion.", "Axial CT of the brain."], 80)
        >>> collate = ImageTextMLMCollator(tok, max_length=16, seed=0)
        >>> samples = [{"image": torch.zeros(1, 4, 4), "caption": "Chest X-ray showing a left pleural effusion.",
        ...             "id": "a"}, {"image": torch.ones(1, 4, 4), "caption": "Axial CT of the brain.", "id": "b"}]
        >>> batch = collate(samples)
        >>> batch["images"].shape, batch["input_ids"].shape == batch["mlm_labels"].shape
        (torch.Size([2, 1, 4, 4]), True)
        >>> sel = batch["mlm_labels"] != -100
        >>> bool(torch.isin(batch["input_ids"][sel], torch.tensor(tok.all_special_ids)).any())
        False
        >>> collate([{"image": torch.zeros(1, 4, 4), "caption": "Axial CT."}])["ids"]  # ids are optional
        ['']
        >>> collate([{"image": torch.zeros(1, 4, 4), "text": "Axial CT."}])
        Traceback (most recent call last):
        ...
        ValueError: sample 0 has neither 'caption' (a string to tokenise) nor 'input_ids' (a tokenised caption); its keys are ['image', 'text']
    """

    def __init__(
        self,
        tokenizer: Any,
        mlm: bool = True,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        pad_to_multiple_of: int | None = None,
        return_tensors: str = "pt",
        seed: int | None = None,
        *,
        max_length: int | None = None,
        padding: bool | str = True,
        truncation: bool = True,
        min_one_target: bool = False,
        caption_key: str = "captions",
        masked_key: str = "mlm_input_ids",
        labels_key: str = "mlm_labels",
        collate: Callable[[Sequence[Any]], dict[str, Any]] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not mlm:
            raise ValueError("ImageTextMLMCollator masks tokens for MLM; use the plain collate for mlm=False")
        if return_tensors != "pt":
            raise ValueError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        if getattr(tokenizer, "mask_token_id", None) is None:
            raise ValueError("the tokenizer has no [MASK] token, which masked language modelling needs")
        if not 0.0 <= float(mlm_probability) <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if masked_key == labels_key:
            raise ValueError(f"masked_key and labels_key must differ, both are {masked_key!r}")
        self.tokenizer = tokenizer
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.seed = seed
        self.max_length = max_length
        self.padding = padding
        self.truncation = truncation
        self.min_one_target = bool(min_one_target)
        self.caption_key = caption_key
        self.masked_key = masked_key
        self.labels_key = labels_key
        self.generator = generator
        # Samples are checked (and "id" made optional) only for the default collate: a custom one defines its own samples.
        self._check = collate is None
        if collate is None:
            from unimlip_kit.data.collate import ImageTextCollate

            collate = ImageTextCollate()
        self.collate = collate
        self._calls = 0

    def _generator(self) -> torch.Generator | None:
        if self.generator is not None:
            return self.generator
        if self.seed is None:
            return None
        g = make_generator(derive_seed(self.seed, "mlm", self._calls, *_stream_keys()))
        self._calls += 1
        return g

    def _tokenise(self, samples: Sequence[Any]) -> dict[str, Any]:
        if _is_tokenised(samples):
            # Hugging Face examples: pad the text fields, stack the other tensor fields (pixel_values, image)
            text = [{k: v for k, v in s.items() if k in _TEXT_KEYS} for s in samples]
            batch = dict(self.tokenizer.pad(text, padding=self.padding or True, max_length=self.max_length,
                                            pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt",
                                            return_attention_mask=True))
            for key in [k for k in samples[0] if k not in _TEXT_KEYS]:
                batch[key] = _stack([s.get(key) for s in samples])
            return batch
        if self._check:
            samples = _checked_samples(samples)
        batch = dict(self.collate(samples))
        if self.caption_key not in batch:
            raise ValueError(f"the collate returned no {self.caption_key!r} key (keys: {sorted(batch)})")
        captions = list(batch[self.caption_key])
        if not captions:  # every sample skipped (or none given): no rows, the keys kept
            empty = torch.zeros(0, 0, dtype=torch.long)
            batch["input_ids"], batch["attention_mask"] = empty, empty.clone()
            return batch
        enc = self.tokenizer(captions, padding=self.padding, truncation=self.truncation, max_length=self.max_length,
                             pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt",
                             return_attention_mask=True)
        batch["input_ids"], batch["attention_mask"] = enc["input_ids"], enc["attention_mask"]
        return batch

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        batch = self._tokenise(samples)
        if self.labels_key in batch:
            raise ValueError(
                f"labels_key {self.labels_key!r} would overwrite the batch's own {self.labels_key!r} "
                "(class labels from the collate); choose another key"
            )
        ids, att = batch["input_ids"], batch["attention_mask"]
        if ids.shape[0] == 0:  # every sample skipped: keep the keys, with no rows
            batch[self.masked_key], batch[self.labels_key] = ids.clone(), ids.clone()
            return batch
        special = batch.pop("special_tokens_mask", None)
        masked, labels = mask_tokens(
            ids, tokenizer=self.tokenizer, attention_mask=att, special_tokens_mask=special,
            prob=self.mlm_probability, mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob, min_one_target=self.min_one_target,
            generator=self._generator(),
        )
        batch[self.masked_key], batch[self.labels_key] = masked, labels
        return batch

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(mlm_probability={self.mlm_probability}, min_one_target={self.min_one_target}, "
                f"max_length={self.max_length}, masked_key={self.masked_key!r}, labels_key={self.labels_key!r})")
