"""Medical-aware, batched, seedable augmentations on kornia's augmentation contract.

Images: (B, C, H, W), C = 1 (grey) or 3 (RGB), on any device, float in a stated
``value_range`` or uint8/uint16. Every transform samples per-sample parameters
with a kornia parameter generator, stores them in ``_params`` and replays them
with ``aug(x, params=aug._params)``; ``generator=`` makes a transform's stream
reproducible (see :mod:`unimlip_kit.augment.seeded`). Captions:
:class:`LateralityAwareFlip` keeps left/right true under flips and
:class:`CaptionAugment` augments text without touching negation or laterality.

Devices: images may live anywhere; parameters are sampled on the module's
device (CPU by default, kornia's convention) and copied to the images'. Move the
pipeline with the data (``preset("xray").to("cuda")``) so that per-pixel noise
fields are drawn on the GPU too; a seeded stream is then drawn from the CUDA
generator (streams are not bit-identical across devices).
The transforms also work inside ``kornia.augmentation.AugmentationSequential``
(masks are resampled with nearest neighbour).
"""

from unimlip_kit.augment import _kornia_compat  # noqa: F401  (first: the kornia version check)
from unimlip_kit.augment.bias_field import RandomBiasField
from unimlip_kit.augment.blur_sharpen import RandomBlurSharpen
from unimlip_kit.augment.brightness_contrast import RandomBrightnessContrast
from unimlip_kit.augment.clahe import RandomCLAHE
from unimlip_kit.augment.compose import MedicalCompose, TwoViews
from unimlip_kit.augment.crop import ConservativeResizedCrop
from unimlip_kit.augment.flip import LateralityAwareFlip
from unimlip_kit.augment.gamma import RandomGamma
from unimlip_kit.augment.geometry import GentleElastic, SmallAffine
from unimlip_kit.augment.laterality import find_laterality_words, swap_laterality
from unimlip_kit.augment.noise import RandomGaussianNoise, RandomRicianNoise, RandomSpeckleNoise
from unimlip_kit.augment.presets import PRESET_MODALITIES, PRESET_RANGES, STRENGTHS, preset
from unimlip_kit.augment.ranges import from_float, to_float
from unimlip_kit.augment.stain import RandomHEDJitter
from unimlip_kit.augment.text import CaptionAugment, find_negation_cues, find_protected_words
from unimlip_kit.augment.window import CT_WINDOWS, RandomWindow

__all__ = [
    "CT_WINDOWS",
    "CaptionAugment",
    "ConservativeResizedCrop",
    "GentleElastic",
    "LateralityAwareFlip",
    "MedicalCompose",
    "PRESET_MODALITIES",
    "PRESET_RANGES",
    "RandomBiasField",
    "RandomBlurSharpen",
    "RandomBrightnessContrast",
    "RandomCLAHE",
    "RandomGamma",
    "RandomGaussianNoise",
    "RandomHEDJitter",
    "RandomRicianNoise",
    "RandomSpeckleNoise",
    "RandomWindow",
    "STRENGTHS",
    "SmallAffine",
    "TwoViews",
    "find_laterality_words",
    "find_negation_cues",
    "find_protected_words",
    "from_float",
    "preset",
    "swap_laterality",
    "to_float",
]
