"""The one list of imaging modalities, and the augmentation presets named after it.

* :data:`MODALITIES` — what an image *is*: the values of ``ImageTextRecord.modality``
  (besides ``"unknown"``), the synthetic benchmark's scenes (xray, ct, mri, ultrasound) and
  :func:`unimlip_kit.data.infer_modality`'s answers (it recognises the first four from a
  caption's words; pathology captions are not detected). Exported as ``unimlip_kit.data.MODALITIES``.
* :data:`PRESET_MODALITIES` — the augmentation presets (:func:`unimlip_kit.augment.preset`):
  one per modality plus ``"generic"``, the preset for an unknown or any other modality.
  Exported as ``unimlip_kit.augment.PRESET_MODALITIES``.

Example:
    >>> MODALITIES
    ('xray', 'ct', 'mri', 'ultrasound', 'pathology')
    >>> PRESET_MODALITIES[len(MODALITIES):]
    ('generic',)
"""

from __future__ import annotations

__all__ = ["MODALITIES", "PRESET_MODALITIES"]

#: Imaging modalities of a record (``"unknown"`` when not known).
MODALITIES: tuple[str, ...] = ("xray", "ct", "mri", "ultrasound", "pathology")
#: Augmentation presets: one per modality, then ``"generic"`` for unknown or other modalities.
PRESET_MODALITIES: tuple[str, ...] = (*MODALITIES, "generic")
