"""Guess an image's modality from its caption (for real captions without labels).

ROCO ships no modality labels; captions almost always name the modality
("Axial computed tomography ...", "T2-weighted MRI ..."). A keyword match is
enough for per-modality retrieval reports and stratified sampling; it is a
heuristic and says ``"unknown"`` rather than guess when nothing matches.
"""

from __future__ import annotations

import re

from unimlip_kit.utils.modalities import MODALITIES  # the one list (augmentation presets add "generic")

__all__ = ["MODALITIES", "infer_modality"]

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ct", re.compile(r"\b(ct|cect|hrct|computed tomograph\w*|tomogram|hounsfield|cta)\b")),
    ("mri", re.compile(r"\b(mri?|magnetic resonance|t1[- ]?weighted|t2[- ]?weighted|flair|dwi|adc|t1|t2|stir)\b")),
    ("ultrasound", re.compile(r"\b(ultraso\w*|sonograph\w*|sonogram|echograph\w*|doppler|echocardiogra\w*|usg|us)\b")),
    ("xray", re.compile(r"\b(x-?rays?|radiograph\w*|cxr|chest film|plain film|mammogra\w*|fluoroscop\w*|angiogra\w*)\b")),
)


def infer_modality(caption: str) -> str:
    """The first modality whose keywords appear in ``caption`` (CT before MRI before US before X-ray), else ``"unknown"``.

    Example:
        >>> infer_modality("Axial computed tomography scan of the pelvis.")
        'ct'
        >>> infer_modality("Chest X-ray showing a left pleural effusion."), infer_modality("Histology, H&E.")
        ('xray', 'unknown')
    """
    text = caption.lower()
    for name, pattern in _PATTERNS:
        if pattern.search(text):
            return name
    return "unknown"
