"""One modality list: data modalities, and augmentation presets = those plus "generic"."""

from __future__ import annotations

import unimlip_kit.augment as augment
import unimlip_kit.data as data
from unimlip_kit.data.synthetic import SCENE_TYPES
from unimlip_kit.utils.modalities import MODALITIES, PRESET_MODALITIES


def test_one_list_two_clear_roles():
    assert data.MODALITIES is MODALITIES
    assert augment.PRESET_MODALITIES is PRESET_MODALITIES
    assert PRESET_MODALITIES == (*MODALITIES, "generic")
    assert not hasattr(augment, "MODALITIES") and "MODALITIES" not in augment.__all__
    assert set(augment.PRESET_RANGES) == set(PRESET_MODALITIES)  # a preset per name, no more, no less
    for m in PRESET_MODALITIES:
        augment.preset(m, "light")


def test_every_modality_the_data_layer_produces_is_listed():
    assert {m for m, _ in SCENE_TYPES} <= set(MODALITIES)
    captions = ["Axial CT of the abdomen", "T2-weighted MRI", "Ultrasound of the liver", "Chest X-ray", "H&E stain"]
    assert {data.infer_modality(c) for c in captions} <= set(MODALITIES) | {data.UNKNOWN_MODALITY}
    assert data.infer_modality("H&E stain") == data.UNKNOWN_MODALITY  # pathology is listed but not inferred from words
