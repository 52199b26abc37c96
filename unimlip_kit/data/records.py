"""The one record type every reader returns: an image path, its caption and optional labels.

Readers (ROCO, CSV/JSONL, the synthetic benchmark) turn their files into a
list of :class:`ImageTextRecord`; the dataset decodes the image lazily from
``image_path``. Keeping records this small means a list of a million of them
fits in memory and pickles cheaply to DataLoader workers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["ImageTextRecord", "UNKNOWN_LABEL", "UNKNOWN_MODALITY"]

#: Label of a record without a class (the collate turns it into ``-1``).
UNKNOWN_LABEL = -1
#: Modality of a record whose modality is not known.
UNKNOWN_MODALITY = "unknown"


@dataclasses.dataclass(frozen=True)
class ImageTextRecord:
    """One image–caption pair.

    Attributes:
        id: unique id of the pair (e.g. a ROCO id such as ``ROCO_<number>``).
        image_path: file to decode (JPEG/PNG/DICOM/NIfTI).
        caption: the caption text (non-empty after a reader validated it).
        label: class index, or ``-1`` when unknown.
        group: pairs with the same non-empty ``group`` are never each other's
            hard negative (e.g. the synthetic benchmark's attribute signature);
            the collate also merges pairs with the same image or caption.
        modality: ``"xray"``, ``"ct"``, ``"mri"``, ``"ultrasound"``, ... or ``"unknown"``.
        meta: anything else a reader knows (attributes, PMC file name, ...).

    Example:
        >>> r = ImageTextRecord("a1", Path("a1.png"), "Chest X-ray.")
        >>> r.label, r.modality
        (-1, 'unknown')
    """

    id: str
    image_path: Path
    caption: str
    label: int = UNKNOWN_LABEL
    group: str = ""
    modality: str = UNKNOWN_MODALITY
    meta: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)
