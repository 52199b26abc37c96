"""Generated sample images (simple anatomical phantoms) for previews, docs and tests.

No dataset download is needed: each modality gets a deterministic phantom in the
value range its preset expects (CT in Hounsfield units, pathology as RGB built
by mixing haematoxylin and eosin optical densities, everything else in [0, 1]).
"""

from __future__ import annotations

import math

import torch

from unimlip_kit.augment.stain import RGB_FROM_HED

__all__ = ["sample_image"]


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.linspace(-1, 1, size, dtype=torch.float64)
    return torch.meshgrid(t, t, indexing="ij")


def _ellipse(y: torch.Tensor, x: torch.Tensor, cy: float, cx: float, ry: float, rx: float) -> torch.Tensor:
    return (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1).to(torch.float64)


def _smooth(img: torch.Tensor, sigma: float) -> torch.Tensor:
    from kornia.filters import gaussian_blur2d

    k = 2 * int(math.ceil(3 * sigma)) + 1
    return gaussian_blur2d(img[None, None], (k, k), (sigma, sigma))[0, 0]


def sample_image(modality: str = "xray", size: int = 256, seed: int = 0) -> torch.Tensor:
    """A ``(C, H, W)`` float32 phantom for ``modality`` in that preset's input range.

    Example:
        >>> sample_image("xray", 64).shape, sample_image("pathology", 64).shape
        (torch.Size([1, 64, 64]), torch.Size([3, 64, 64]))
        >>> float(sample_image("ct", 64).min())  # air, in HU
        -1000.0
    """
    g = torch.Generator().manual_seed(seed)
    y, x = _grid(size)
    if modality in ("xray", "generic"):
        body = _ellipse(y, x, 0.05, 0.0, 0.95, 0.8)
        lungs = _ellipse(y, x, -0.05, -0.38, 0.6, 0.28) + _ellipse(y, x, -0.05, 0.38, 0.6, 0.28)
        heart = _ellipse(y, x, 0.25, 0.15, 0.3, 0.3)  # patient's left = image right
        spine = ((x.abs() < 0.07) & (y > -0.9)).to(torch.float64)
        ribs = sum(((y - (-0.55 + 0.17 * i)).abs() < 0.015).to(torch.float64) for i in range(7)) * (x.abs() > 0.1)
        img = 0.1 + 0.45 * body - 0.3 * lungs.clamp(max=1) + 0.25 * heart + 0.3 * spine + 0.12 * ribs * lungs.clamp(max=1)
        img = _smooth(img, size / 128) + 0.01 * torch.randn(size, size, generator=g, dtype=torch.float64)
        return img.clamp(0, 1).float()[None]
    if modality == "ct":
        body = _ellipse(y, x, 0.0, 0.0, 0.7, 0.9)
        fat = body - _ellipse(y, x, 0.0, 0.0, 0.62, 0.82)
        lungs = _ellipse(y, x, -0.05, -0.42, 0.45, 0.3) + _ellipse(y, x, -0.05, 0.42, 0.45, 0.3)
        bone = _ellipse(y, x, 0.5, 0.0, 0.1, 0.1)
        hu = -1000 + 1040 * body - 140 * fat - 860 * lungs + 660 * bone
        hu = hu + 15 * torch.randn(size, size, generator=g, dtype=torch.float64) * body
        return hu.clamp(-1000, 3071).float()[None]
    if modality == "mri":
        head = _ellipse(y, x, 0.0, 0.0, 0.85, 0.7)
        brain = _ellipse(y, x, 0.0, 0.0, 0.75, 0.6)
        ventricles = _ellipse(y, x, -0.1, -0.12, 0.25, 0.07) + _ellipse(y, x, -0.1, 0.12, 0.25, 0.07)
        img = 0.3 * head + 0.35 * brain - 0.45 * ventricles
        return (_smooth(img, size / 100).clamp(0, 1)).float()[None]
    if modality == "ultrasound":
        r = torch.sqrt((y + 1.0) ** 2 + x**2)
        sector = ((r < 1.9) & (r > 0.2) & (x.abs() < (y + 1.0) * 0.7)).to(torch.float64)
        tex = _smooth(torch.rand(size, size, generator=g, dtype=torch.float64), 1.0)
        cyst = _ellipse(y, x, 0.3, 0.1, 0.25, 0.3)
        img = sector * (0.35 + 0.5 * tex) * (1 - 0.9 * cyst) * (1.2 - 0.4 * r / 1.9)
        return img.clamp(0, 1).float()[None]
    if modality == "pathology":
        centres = torch.rand(int(size * size / 300), 2, generator=g, dtype=torch.float64) * 2 - 1
        nuclei = torch.zeros(size, size, dtype=torch.float64)
        for cy, cx in centres.tolist():
            nuclei = torch.maximum(nuclei, _ellipse(y, x, cy, cx, 0.035, 0.045))
        h = 0.9 * _smooth(nuclei, 1.0) + 0.05
        e = 0.35 + 0.2 * _smooth(torch.rand(size, size, generator=g, dtype=torch.float64), size / 40)
        od = torch.stack([h, e, torch.zeros_like(h)], -1) @ RGB_FROM_HED
        return torch.exp(-od).permute(2, 0, 1).clamp(0, 1).float()
    raise ValueError(f"no sample for modality {modality!r}")
