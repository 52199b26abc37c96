"""The README's kornia claims as snippets: a per-instance ``generator=`` stream on every transform, a stated
``value_range`` on every intensity transform, our transforms inside kornia's ``AugmentationSequential``.

The references are kornia's own container and torch's global RNG state (which a seeded transform must
leave alone, kornia #4427); masks following the geometry, ``params=`` replay and ``inverse()`` are
checked against kornia's own warp in tests/test_augment_kornia_containers.py.
"""

from __future__ import annotations

import inspect

import kornia.augmentation as K
import pytest
import torch

import unimlip_kit.augment as A
from unimlip_kit.augment.base import RangeIntensityAugmentation

# One factory per public transform class; TwoViews wraps other transforms (their generators seed it).
FACTORIES = {
    "CaptionAugment": lambda g: A.CaptionAugment(alpha=0.5, p=1.0, generator=g),
    "ConservativeResizedCrop": lambda g: A.ConservativeResizedCrop(scale=(0.5, 1.0), p=1.0, generator=g),
    "GentleElastic": lambda g: A.GentleElastic(p=1.0, generator=g),
    "LateralityAwareFlip": lambda g: A.LateralityAwareFlip(p=0.5, generator=g),
    "MedicalCompose": lambda g: A.MedicalCompose(A.RandomGamma(p=1.0), A.SmallAffine(p=1.0), generator=g),
    "RandomBiasField": lambda g: A.RandomBiasField(p=1.0, generator=g),
    "RandomBlurSharpen": lambda g: A.RandomBlurSharpen(p=1.0, generator=g),
    "RandomBrightnessContrast": lambda g: A.RandomBrightnessContrast(p=1.0, generator=g),
    "RandomCLAHE": lambda g: A.RandomCLAHE(p=1.0, generator=g),
    "RandomGamma": lambda g: A.RandomGamma(p=1.0, generator=g),
    "RandomGaussianNoise": lambda g: A.RandomGaussianNoise(p=1.0, generator=g),
    "RandomHEDJitter": lambda g: A.RandomHEDJitter(p=1.0, generator=g),
    "RandomRicianNoise": lambda g: A.RandomRicianNoise(p=1.0, generator=g),
    "RandomSpeckleNoise": lambda g: A.RandomSpeckleNoise(p=1.0, generator=g),
    "RandomWindow": lambda g: A.RandomWindow(p=1.0, generator=g),
    "SmallAffine": lambda g: A.SmallAffine(p=1.0, generator=g),
}
CAPTIONS = ["Left lower lobe opacity, no effusion.", "Mass in the right upper lobe.", "Small left pleural effusion.",
            "No focal lesion in the right lung.", "Left hilar mass.", "Right basal atelectasis.", "Normal heart size.",
            "Left apical pneumothorax."]


def _input(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(8, 3 if name == "RandomHEDJitter" else 1, 24, 24, generator=g)
    return x * 1000.0 - 200.0 if name == "RandomWindow" else x  # RandomWindow takes HU


def _apply(name: str, aug, x: torch.Tensor):
    if name == "CaptionAugment":
        return aug(CAPTIONS)
    if name == "LateralityAwareFlip":
        return aug(x, CAPTIONS)
    return aug(x)


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_same(u, v) for u, v in zip(a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_every_public_transform_is_listed():
    classes = {n for n in A.__all__ if inspect.isclass(getattr(A, n))}
    assert classes - set(FACTORIES) == {"TwoViews"}, "a new transform: add it to FACTORIES"


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_generator_gives_a_per_instance_stream(name):
    """README: every transform takes ``generator=`` for a reproducible per-instance stream."""
    assert "generator" in inspect.signature(getattr(A, name)).parameters
    x = _input(name)
    a, b, other = FACTORIES[name](7), FACTORIES[name](7), FACTORIES[name](8)
    rng = torch.get_rng_state()
    first = _apply(name, a, x)
    _apply(name, other, x)  # another instance in between draws from its own stream, not a's
    torch.manual_seed(123)  # nor does the global RNG reach a seeded transform
    assert _same(_apply(name, b, x), first)
    assert _same(_apply(name, a, x), _apply(name, b, x))  # the second calls agree too
    assert not _same(_apply(name, FACTORIES[name](8), x), first)
    torch.set_rng_state(rng)
    c = FACTORIES[name](7)
    _apply(name, c, x)
    assert torch.equal(torch.get_rng_state(), rng)  # a seeded call leaves the global RNG where it was


@pytest.mark.parametrize("name", sorted(n for n in FACTORIES if issubclass(getattr(A, n), RangeIntensityAugmentation)))
def test_every_intensity_transform_states_its_value_range(name):
    """README: a stated ``value_range`` (HU for CT): the output stays inside it, whatever the input's scale."""
    param = inspect.signature(getattr(A, name)).parameters["value_range"]
    lo, hi = param.default
    assert (lo, hi) == ((-1024.0, 3071.0) if name == "RandomWindow" else (0.0, 1.0))
    if name == "RandomWindow":
        return  # maps HU to [0, 1]: tests/test_augment_transforms.py
    x = _input(name) * 2000.0 - 1000.0  # CT-like values in HU, declared as such
    out = FACTORIES[name](0).__class__(value_range=(-1000.0, 1000.0), p=1.0, generator=0)(x)
    assert float(out.min()) >= -1000.0 and float(out.max()) <= 1000.0 and not torch.equal(out, x)


def test_readme_container_row():
    """README: preset(...), LateralityAwareFlip and ConservativeResizedCrop inside kornia's AugmentationSequential."""
    mask = torch.zeros(4, 1, 32, 32)
    mask[..., 4:12, 2:10] = 1.0  # on the image's left half
    image = mask * 0.8
    flip = A.LateralityAwareFlip(p=1.0, generator=0)  # mode="swap": left/right in the captions follow the images
    aug = K.AugmentationSequential(A.preset("xray", "light", generator=0), flip,
                                   A.ConservativeResizedCrop(size=(24, 24), scale=(0.9, 1.0), p=1.0, generator=0),
                                   data_keys=["input", "mask"])
    with pytest.raises(RuntimeError, match="bind_captions"):  # without the captions it refuses
        aug(image, mask)
    flip.bind_captions(CAPTIONS[:4])
    out, m = aug(image, mask)
    assert flip.swapped_captions()[0] == "Right lower lobe opacity, no effusion."
    assert out.shape == m.shape == (4, 1, 24, 24)
    assert float(m[..., :, 12:].sum()) > float(m[..., :, :12].sum())  # the flip moved the mask to the right half
    flip.bind_captions(CAPTIONS[:4])
    again, m2 = aug(image, mask, params=aug._params)  # params= replays
    assert torch.equal(again, out) and torch.equal(m2, m)
