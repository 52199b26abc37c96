"""Collate image–caption samples into a batch dict, dropping skipped ones and grouping duplicates.

Batch keys:

* ``images``: float32 (B, C, H, W) in [0, 1];
* ``captions``: list[str] (not tokenized: the caption-aware flip edits text
  first, tokenization happens in the training step);
* ``ids``: list[str]; ``modality``: list[str];
* ``labels``: int64 (B,), ``-1`` where unknown;
* ``group_ids``: int64 (B,), equal for pairs that must not be each other's
  hard negative: the same image file, the same caption (case, spacing and
  final punctuation ignored), or the same record ``group`` (the synthetic
  benchmark's attribute signature). Groups are connected components, numbered
  by first appearance in the batch;
* ``skipped``: list of ``(id, reason, detail)`` dropped from this batch.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

__all__ = ["ImageTextCollate", "collate_image_text", "group_ids_from_keys", "normalize_caption", "regroup_after_flip"]

_PUNCT_END = re.compile(r"[\s.;:,!]+$")


def normalize_caption(caption: str) -> str:
    """Lower-case, collapse whitespace and drop trailing punctuation (for duplicate detection).

    Example:
        >>> normalize_caption("  Chest  X-ray. ") == normalize_caption("chest x-ray")
        True
    """
    return _PUNCT_END.sub("", " ".join(caption.lower().split()))


def group_ids_from_keys(keys: Sequence[Sequence[str]]) -> torch.Tensor:
    """Connected components of items sharing any non-empty key, numbered by first appearance.

    Example:
        >>> group_ids_from_keys([["img:a", "cap:x"], ["img:b", "cap:y"], ["img:c", "cap:x"], ["img:b"]]).tolist()
        [0, 1, 0, 1]
    """
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, ks in enumerate(keys):
        for k in ks:
            if not k:
                continue
            if k in owner:
                a, b = find(i), find(owner[k])
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                owner[k] = i
    roots = [find(i) for i in range(len(keys))]
    number: dict[int, int] = {}
    return torch.tensor([number.setdefault(r, len(number)) for r in roots], dtype=torch.long)


def regroup_after_flip(keys: Sequence[Sequence[str]], flipped: Sequence[bool], captions: Sequence[str]) -> torch.Tensor:
    """Group ids (same meaning = never each other's ITM negative) after a laterality-aware flip.

    ``keys`` are the batch's ``group_keys`` (this module's ``"img:"``, ``"cap:"`` and ``"grp:"`` strings),
    ``flipped`` says which samples the flip mirrored (one value applies to all) and ``captions`` are the
    captions *after* the flip. A flipped "right lower lobe" sample now means "left lower lobe": its image
    is a new image (``img:<key>#hflip``), its caption key is the swapped caption and its record group has
    left and right swapped (:func:`unimlip_kit.augment.swap_laterality`), so it joins the unflipped
    left-sided samples of its kind and leaves the right-sided ones. Components as :func:`group_ids_from_keys`.

    Example:
        >>> keys = [["img:a", "cap:mass in the right lung", "grp:ct|right"],
        ...         ["img:b", "cap:nodule in the left lung", "grp:ct|left"]]
        >>> regroup_after_flip(keys, [False, True], ["Mass in the right lung.", "Nodule in the right lung."]).tolist()
        [0, 0]
        >>> regroup_after_flip(keys, [False], ["Mass in the right lung.", "Nodule in the left lung."]).tolist()
        [0, 1]
    """
    from unimlip_kit.augment.laterality import swap_laterality

    flipped = list(flipped)
    if len(flipped) == 1 and len(keys) > 1:
        flipped = flipped * len(keys)
    if len(flipped) != len(keys) or len(captions) != len(keys):
        raise ValueError(f"regroup_after_flip needs one flag and one caption per sample: {len(keys)} keys, "
                         f"{len(flipped)} flags, {len(captions)} captions")
    out = []
    for ks, f, cap in zip(keys, flipped, captions):
        if not f:
            out.append(list(ks))
            continue
        new = []
        for k in ks:
            if k.startswith("img:"):
                k = k + "#hflip"
            elif k.startswith("cap:"):
                k = "cap:" + normalize_caption(cap)
            elif k.startswith("grp:"):
                k = "grp:" + swap_laterality(k[4:])
            new.append(k)
        out.append(new)
    return group_ids_from_keys(out)


class ImageTextCollate:
    """Picklable collate (DataLoader workers); ``image_shape`` (C, H, W) shapes an all-skipped batch.

    Samples are dicts with ``image`` and ``caption`` (``id``, ``label``, ``group``, ``image_key``, ``modality``
    optional: a sample without an id gets ``""`` in ``ids``), or skipped samples
    (:class:`~unimlip_kit.data.SkippedSample`, ``(id, reason[, detail])``). Anything else raises ``TypeError``
    naming the sample, instead of being counted as a skip with a made-up reason.

    Example:
        >>> s = [{"image": torch.zeros(1, 4, 4), "caption": "Left lesion.", "id": "a", "label": 2, "image_key": "a.png"},
        ...      {"image": torch.ones(1, 4, 4), "caption": "left lesion", "id": "b", "label": -1, "image_key": "b.png"}]
        >>> b = ImageTextCollate()(s)
        >>> b["images"].shape, b["labels"].tolist(), b["group_ids"].tolist(), b["modality"]
        (torch.Size([2, 1, 4, 4]), [2, -1], [0, 0], ['unknown', 'unknown'])
        >>> ImageTextCollate()([{"image": torch.zeros(1, 4, 4), "caption": "CT."}])["ids"]
        ['']
        >>> ImageTextCollate()([{"caption": "CT."}])
        Traceback (most recent call last):
        ...
        TypeError: sample 0 is neither an image-caption dict (with 'image' and 'caption') nor a skipped sample (id, reason[, detail]): a dict with keys ['caption']
    """

    def __init__(self, image_shape: Sequence[int] | None = None) -> None:
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        kept, skipped, ids = [], [], []
        for k, s in enumerate(samples):
            if isinstance(s, dict) and "image" in s and "caption" in s:
                kept.append(s)
                ids.append("" if s.get("id") is None else str(s["id"]))
            elif s is None:
                skipped.append(("?", "corrupt_image", "sample was None"))
            elif isinstance(s, (tuple, list)) and 2 <= len(s) <= 3:
                skipped.append(tuple(str(v) for v in s))  # SkippedSample or any (id, reason[, detail]) tuple
            else:
                what = f"a dict with keys {sorted(s)}" if isinstance(s, dict) else f"a {type(s).__name__}"
                raise TypeError(f"sample {k} is neither an image-caption dict (with 'image' and 'caption') nor a "
                                f"skipped sample (id, reason[, detail]): {what}")
        if kept:
            images = torch.stack([s["image"] for s in kept])
        else:
            images = torch.zeros((0, *(self.image_shape or (1, 1, 1))), dtype=torch.float32)
        keys = [
            [
                "img:" + str(s.get("image_key", "")) if s.get("image_key") else "",
                "cap:" + normalize_caption(s["caption"]),
                "grp:" + s["group"] if s.get("group") else "",
            ]
            for s in kept
        ]
        return {
            "images": images,
            "captions": [s["caption"] for s in kept],
            "ids": ids,
            "labels": torch.tensor([int(s.get("label", -1)) for s in kept], dtype=torch.long),
            "group_ids": group_ids_from_keys(keys) if kept else torch.zeros(0, dtype=torch.long),
            "group_keys": keys,  # the keys behind group_ids, to regroup after a transform that changes meaning
            "modality": [str(s.get("modality", "unknown")) for s in kept],
            "skipped": skipped,
        }


def collate_image_text(samples: Sequence[Any]) -> dict[str, Any]:
    """Functional form of :class:`ImageTextCollate` (no fixed image shape).

    Example:
        >>> collate_image_text([("x", "missing_image", "")])["skipped"]
        [('x', 'missing_image', '')]
    """
    return ImageTextCollate()(samples)
