"""Modality presets: ``preset(modality, strength)`` -> a seeded :class:`MedicalCompose`.

Every preset takes float ``(B, C, H, W)`` input in its documented value range
(uint8/uint16 map losslessly onto it) and returns float32 in [0, 1]:

============ ====================== ======== =====================================================
modality     input value range      channels what it does
============ ====================== ======== =====================================================
xray         [0, 1]                 1 or 3   crop, small affine, brightness/contrast, gamma,
                                             blur/sharpen, Gaussian noise (+ CLAHE when strong)
ct           (-1024, 3071) HU       1 or 3   random CT window -> [0, 1], crop, affine, gamma, noise;
                                             values outside the HU range are clipped (scanner padding)
mri          [0, 1] (e.g. 0.5-99.5  1 or 3   crop, affine, bias field, gamma, Rician noise
             percentile scaled)              (+ gentle elastic when strong)
ultrasound   [0, 1]                 1 or 3   crop, small affine, speckle, brightness/contrast, gamma,
                                             blur/sharpen
pathology    [0, 1] RGB             3        crop, rotation (reflect padding), HED stain jitter,
                                             brightness/contrast, blur/sharpen, noise (+ elastic when strong)
generic      [0, 1]                 1 or 3   crop, small affine, brightness/contrast, gamma, noise
============ ====================== ======== =====================================================

Strengths ``"light"``, ``"medium"``, ``"strong"`` scale magnitudes by 0.5, 1 and
1.5; crops stay conservative (area >= 0.85, 0.75, 0.7). No grey preset contains
a colour operation, none flips (use :class:`LateralityAwareFlip` with the
captions), and every op uses the same parameters on all channels, so an RGB copy
of a grey image stays grey.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from unimlip_kit.augment.bias_field import RandomBiasField
from unimlip_kit.augment.blur_sharpen import RandomBlurSharpen
from unimlip_kit.augment.brightness_contrast import RandomBrightnessContrast
from unimlip_kit.augment.clahe import RandomCLAHE
from unimlip_kit.augment.compose import MedicalCompose
from unimlip_kit.augment.crop import ConservativeResizedCrop
from unimlip_kit.augment.gamma import RandomGamma
from unimlip_kit.augment.geometry import GentleElastic, SmallAffine
from unimlip_kit.augment.noise import RandomGaussianNoise, RandomRicianNoise, RandomSpeckleNoise
from unimlip_kit.augment.stain import RandomHEDJitter
from unimlip_kit.augment.window import CT_WINDOWS, RandomWindow
from unimlip_kit.utils.modalities import PRESET_MODALITIES  # the one modality list, plus "generic"

__all__ = ["PRESET_MODALITIES", "PRESET_RANGES", "STRENGTHS", "preset"]

STRENGTHS = ("light", "medium", "strong")
_K = {"light": 0.5, "medium": 1.0, "strong": 1.5}
_CROP_MIN = {"light": 0.85, "medium": 0.75, "strong": 0.7}

#: modality -> (input value range, output value range).
PRESET_RANGES: Dict[str, Tuple[Tuple[float, float], Tuple[float, float]]] = {
    "xray": ((0.0, 1.0), (0.0, 1.0)),
    "ct": ((-1024.0, 3071.0), (0.0, 1.0)),
    "mri": ((0.0, 1.0), (0.0, 1.0)),
    "ultrasound": ((0.0, 1.0), (0.0, 1.0)),
    "pathology": ((0.0, 1.0), (0.0, 1.0)),
    "generic": ((0.0, 1.0), (0.0, 1.0)),
}


def _gamma(k: float) -> Tuple[float, float]:
    return (1.0 / (1.0 + 0.25 * k), 1.0 + 0.25 * k)


def _transforms(modality: str, strength: str, size: Optional[Tuple[int, int]], ct_range: Tuple[float, float]) -> List[nn.Module]:
    k = _K[strength]
    strong = strength == "strong"
    crop = ConservativeResizedCrop(size=size, scale=(_CROP_MIN[strength], 1.0))
    affine = SmallAffine(degrees=10.0 * k, translate=(0.04 * k, 0.04 * k), scale=(1 - 0.05 * k, 1 + 0.05 * k), p=0.5)
    bc = RandomBrightnessContrast(brightness=0.1 * k, contrast=(1 - 0.2 * k, 1 + 0.2 * k), p=0.8)
    gamma = RandomGamma(_gamma(k), p=0.5)
    blur = RandomBlurSharpen(amount=(-0.5 * k, 0.5 * k), sigma=1.0, p=0.3)
    noise = RandomGaussianNoise(sigma=(0.0, 0.02 * k), p=0.3)
    if modality == "xray":
        return [crop, affine, bc, gamma, blur, noise] + ([RandomCLAHE(p=0.3)] if strong else [])
    if modality == "ct":
        names = {"light": ["soft_tissue"], "medium": ["soft_tissue", "lung", "bone"], "strong": ["soft_tissue", "lung", "bone", "brain", "liver"]}[strength]
        window = RandomWindow([CT_WINDOWS[n] for n in names], 0.1 * k, 0.2 * k, value_range=ct_range, p=1.0)
        return [window, crop, affine, gamma, noise]
    if modality == "mri":
        out = [crop, affine, RandomBiasField(coefficients=0.3 * k, p=0.5), gamma, RandomRicianNoise(sigma=(0.0, 0.03 * k), p=0.3)]
        return out + ([GentleElastic(alpha=0.5, p=0.3)] if strong else [])
    if modality == "ultrasound":
        speckle = RandomSpeckleNoise(sigma=(0.0, 0.15 * k), p=0.5)
        return [crop, affine, speckle, bc, gamma, blur]
    if modality == "pathology":
        rot = SmallAffine(degrees=180.0, translate=None, scale=(1 - 0.05 * k, 1 + 0.05 * k), padding_mode="reflection", p=0.8)
        hed = RandomHEDJitter(alpha=0.05 * k, beta=0.05 * k, p=0.8)
        out = [crop, rot, hed, bc, blur, noise]
        return out + ([GentleElastic(alpha=0.5, padding_mode="reflection", p=0.3)] if strong else [])
    return [crop, affine, bc, gamma, noise]


def preset(
    modality: str,
    strength: str = "medium",
    *,
    size: Optional[Sequence[int]] = None,
    value_range: Optional[Sequence[float]] = None,
    generator: int | torch.Generator | None = None,
) -> MedicalCompose:
    """The augmentation pipeline for a modality and strength (see the module table for value ranges).

    Args:
        modality: one of ``PRESET_MODALITIES`` (the data modalities plus ``"generic"``).
        strength: ``"light"``, ``"medium"`` or ``"strong"``.
        size: output ``(H, W)`` of the crop; ``None`` keeps the input size.
        value_range: override the input range (only meaningful for ``"ct"``, e.g. ``(-1000, 2000)``).
        generator: ``int`` seed / ``torch.Generator`` / ``None`` (global RNG).

    Example:
        >>> view = preset("xray", "medium", generator=0)
        >>> out = view(torch.rand(8, 1, 64, 64))
        >>> out.shape, out.dtype, bool(out.min() >= 0) and bool(out.max() <= 1)
        (torch.Size([8, 1, 64, 64]), torch.float32, True)
        >>> preset("ct", generator=0)(torch.full((2, 1, 32, 32), 40.0)).max() <= 1
        tensor(True)
        >>> preset("dental")
        Traceback (most recent call last):
        ...
        ValueError: modality must be one of ('xray', 'ct', 'mri', 'ultrasound', 'pathology', 'generic'), got 'dental'
    """
    if modality not in PRESET_MODALITIES:
        raise ValueError(f"modality must be one of {PRESET_MODALITIES}, got {modality!r}")
    if strength not in STRENGTHS:
        raise ValueError(f"strength must be one of {STRENGTHS}, got {strength!r}")
    in_range, out_range = PRESET_RANGES[modality]
    if value_range is not None:
        if modality != "ct":
            raise ValueError(f"value_range can only be overridden for 'ct' (HU); {modality!r} expects {in_range}")
        in_range = (float(value_range[0]), float(value_range[1]))
    hw = None if size is None else (int(size[0]), int(size[1]))
    return MedicalCompose(
        *_transforms(modality, strength, hw, in_range),
        value_range=in_range,
        output_range=out_range,
        out_of_range="clip" if modality == "ct" else "raise",
        channels=(3,) if modality == "pathology" else (1, 3),
        generator=generator,
    )
