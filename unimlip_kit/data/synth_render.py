"""Procedural radiology-like images for the synthetic benchmark (numpy, a few hundred µs each).

Geometry is in normalised image coordinates ``x, y`` in [-1, 1] (``x``: image
left -> right, ``y``: top -> bottom). **Radiological convention**: the
patient's right is on the image's *left* (``x < 0``) for every modality, as
on a frontal chest radiograph or an axial CT/MRI slice viewed from the feet;
so the heart (patient left) sits at ``x > 0`` and the liver (patient right)
at ``x < 0``. A lesion on the patient's ``"right"`` is drawn at ``x < 0``.
A horizontal flip of the image therefore turns a "left" finding into a
"right" one, which is what the caption-aware flip must mirror in the text.

The background (anatomy, texture, noise) and the lesion draw from separate
random streams, so ``render_scene(..., with_lesion=False)`` gives the same
image minus the lesion; tests use the difference to check the lesion's side.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["LESION_SITES", "SceneSpec", "render_scene"]

#: (modality, region) -> (x of the patient's right site, y of "upper"/"anterior" site, y of the other level).
LESION_SITES: dict[tuple[str, str], tuple[float, float, float]] = {
    ("xray", "chest"): (-0.42, -0.30, 0.25),
    ("ct", "chest"): (-0.45, -0.18, 0.22),
    ("ct", "abdomen"): (-0.42, -0.12, 0.25),
    ("ct", "head"): (-0.33, -0.38, 0.38),
    ("mri", "brain"): (-0.33, -0.38, 0.38),
    ("ultrasound", "liver"): (-0.30, -0.10, 0.55),
}

_SIZE_RADIUS = {"small": 0.085, "large": 0.17}


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """What to draw: modality/region and the finding (``side``/``level``/``size``/``density`` or ``None``).

    ``side`` is the *patient's* side (``"left"``/``"right"``); ``level`` is
    ``"upper"``/``"lower"`` (the top/bottom site on the image: upper/lower
    zone, anterior/posterior, frontal/occipital, superficial/deep);
    ``density`` is ``"hyper"`` (brighter than surroundings) or ``"hypo"``.

    Example:
        >>> spec = SceneSpec("xray", "chest", "left", "lower", "small", "hyper")
        >>> spec.has_lesion, SceneSpec("mri", "brain").has_lesion
        (True, False)
        >>> dataclasses.replace(spec, side="right").side  # frozen: change a copy
        'right'
    """

    modality: str
    region: str
    side: str | None = None
    level: str | None = None
    size: str | None = None
    density: str | None = None

    @property
    def has_lesion(self) -> bool:
        return self.side is not None


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c, indexing="xy")


class _Canvas:
    def __init__(self, size: int, fill: float = 0.0) -> None:
        self.size = size
        self.x, self.y = _grid(size)
        self.img = np.full((size, size), fill, dtype=np.float32)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
        ca, sa = np.cos(angle), np.sin(angle)
        dx, dy = self.x - cx, self.y - cy
        u, v = (ca * dx + sa * dy) / rx, (-sa * dx + ca * dy) / ry
        r = np.sqrt(u * u + v * v)
        edge = min(rx, ry) * self.size / 2 / 1.2  # ~1.2 px soft edge
        return np.clip((1 - r) * edge + 0.5, 0, 1).astype(np.float32)

    def paint(self, mask: np.ndarray, value: float | np.ndarray) -> None:
        self.img = self.img * (1 - mask) + np.asarray(value, dtype=np.float32) * mask

    def smooth_noise(self, rng: np.random.Generator, cells: int = 6) -> np.ndarray:
        coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        t = (self.x + 1) / 2 * cells, (self.y + 1) / 2 * cells
        i0, j0 = np.clip(t[1].astype(int), 0, cells - 1), np.clip(t[0].astype(int), 0, cells - 1)
        fy, fx = t[1] - i0, t[0] - j0
        a = coarse[i0, j0] * (1 - fx) + coarse[i0, j0 + 1] * fx
        b = coarse[i0 + 1, j0] * (1 - fx) + coarse[i0 + 1, j0 + 1] * fx
        return a * (1 - fy) + b * fy


def _chest_xray(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    j = lambda s=0.04: float(rng.uniform(-s, s))  # noqa: E731
    c.paint(c.ellipse(j(), 0.15 + j(), 0.92 + j(), 1.05), 0.55 + j(0.05))  # soft tissue
    lungs = np.maximum(c.ellipse(-0.42 + j(), -0.02 + j(), 0.3, 0.62), c.ellipse(0.42 + j(), -0.02 + j(), 0.3, 0.62))
    c.paint(lungs, 0.3 + j(0.04))
    for k in range(6):  # ribs: arcs across both lungs
        yk = -0.55 + 0.2 * k + j(0.02)
        rib = np.clip(1 - np.abs(c.y - (yk + 0.25 * c.x**2)) * c.size / 2.5, 0, 1) * lungs
        c.paint(rib * 0.5, 0.62)
    c.paint(c.ellipse(0.16 + j(), 0.28 + j(), 0.27, 0.24, 0.3), 0.62 + j(0.04))  # heart, patient left
    c.paint(np.clip(1 - np.abs(c.x - j(0.02)) * 12, 0, 1) * (c.y > -0.9), 0.7)  # spine
    c.paint(np.clip(1 - np.abs(c.y + 0.72 - 0.12 * np.abs(c.x)) * c.size / 3, 0, 1) * (np.abs(c.x) < 0.7), 0.7)
    return lungs


def _ct_body(c: _Canvas, rng: np.random.Generator, ry: float = 0.62) -> None:
    j = lambda s=0.03: float(rng.uniform(-s, s))  # noqa: E731
    c.paint(c.ellipse(j(), 0.02 + j(), 0.9 + j(), ry + j()), 0.3)  # subcutaneous fat
    c.paint(c.ellipse(j(0.01), 0.02, 0.84, ry - 0.06), 0.5 + j(0.03))  # muscle/organs
    c.paint(c.ellipse(j(0.02), 0.45 + j(0.02), 0.1, 0.1), 0.95)  # vertebral body
    c.paint(c.ellipse(0.0, 0.45, 0.05, 0.05), 0.45)


def _chest_ct(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    _ct_body(c, rng)
    lungs = np.maximum(c.ellipse(-0.45, 0.0, 0.3, 0.45), c.ellipse(0.45, 0.0, 0.3, 0.45))
    c.paint(lungs, 0.18 + float(rng.uniform(-0.03, 0.03)))
    c.paint(c.ellipse(0.12, -0.12, 0.2, 0.22), 0.58)  # heart, anterior and to patient left
    c.paint(c.ellipse(0.08, 0.28, 0.07, 0.07), 0.66)  # descending aorta
    vessels = (c.smooth_noise(rng, 10) > 1.2).astype(np.float32) * lungs * 0.6
    c.paint(vessels, 0.4)
    return lungs


def _abdomen_ct(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    _ct_body(c, rng, ry=0.6)
    liver = c.ellipse(-0.42, -0.05, 0.36, 0.4, 0.2)
    c.paint(liver, 0.58)  # liver, patient right
    spleen = c.ellipse(0.45, 0.0, 0.28, 0.34, -0.3)
    c.paint(spleen, 0.56)
    c.paint(c.ellipse(0.08, -0.2, 0.2, 0.14), 0.25)  # stomach with gas
    c.paint(c.ellipse(-0.28, 0.4, 0.1, 0.13), 0.7)  # kidneys
    c.paint(c.ellipse(0.28, 0.4, 0.1, 0.13), 0.7)
    c.paint(c.ellipse(0.05, 0.3, 0.06, 0.06), 0.7)  # aorta
    return np.maximum(liver, spleen)


def _head(c: _Canvas, rng: np.random.Generator, mri: bool) -> np.ndarray:
    j = lambda s=0.03: float(rng.uniform(-s, s))  # noqa: E731
    rx, ry = 0.72 + j(), 0.88 + j()
    if mri:
        c.paint(c.ellipse(0, 0, rx + 0.1, ry + 0.1), 0.75)  # scalp fat: bright
        c.paint(c.ellipse(0, 0, rx + 0.04, ry + 0.04), 0.08)  # skull: dark
        brain = c.ellipse(0, 0, rx - 0.02, ry - 0.02)
        tex = 0.45 + 0.06 * c.smooth_noise(rng, 8)
        c.paint(brain, tex)
        c.paint(c.ellipse(0, 0, rx - 0.1, ry - 0.1) * 0.5, 0.35)  # white matter
        csf = 0.9
    else:
        c.paint(c.ellipse(0, 0, rx + 0.07, ry + 0.07), 0.97)  # skull: bright
        brain = c.ellipse(0, 0, rx, ry)
        c.paint(brain, 0.47 + 0.02 * c.smooth_noise(rng, 8))
        csf = 0.2
    c.paint(c.ellipse(-0.1, -0.05 + j(), 0.07, 0.25, 0.25), csf)  # lateral ventricles
    c.paint(c.ellipse(0.1, -0.05 + j(), 0.07, 0.25, -0.25), csf)
    c.paint(np.clip(1 - np.abs(c.x) * c.size / 2, 0, 1) * brain * 0.6, csf)  # falx / midline
    return brain


def _liver_us(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    r = np.sqrt(c.x**2 + (c.y + 1.05) ** 2)
    theta = np.arctan2(c.x, c.y + 1.05)
    half = np.deg2rad(38 + rng.uniform(-3, 3))
    fan = np.clip((half - np.abs(theta)) * c.size / 2, 0, 1) * np.clip((1.95 - r) * c.size / 2, 0, 1)
    fan *= np.clip((r - 0.15) * c.size / 2, 0, 1)
    tissue = 0.5 + 0.05 * c.smooth_noise(rng, 5)
    c.paint(fan, tissue * (1.0 - 0.25 * (r / 2)))  # depth attenuation
    c.paint(c.ellipse(0.1 + rng.uniform(-0.1, 0.1), 0.3, 0.08, 0.06) * fan, 0.05)  # vessel
    c.paint(np.clip(1 - np.abs(r - 1.75) * c.size / 2, 0, 1) * fan * 0.8, 0.85)  # diaphragm echo
    return fan


_RENDERERS = {
    ("xray", "chest"): _chest_xray,
    ("ct", "chest"): _chest_ct,
    ("ct", "abdomen"): _abdomen_ct,
    ("ct", "head"): lambda c, r: _head(c, r, mri=False),
    ("mri", "brain"): lambda c, r: _head(c, r, mri=True),
    ("ultrasound", "liver"): _liver_us,
}


def render_scene(
    spec: SceneSpec,
    size: int = 64,
    seed: int = 0,
    *,
    with_lesion: bool = True,
    noise: float = 0.03,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render ``spec`` as a float32 (size, size) image in [0, 1] plus facts about the lesion.

    The returned dict has ``lesion_center_px`` ((row, col) or ``None``),
    ``lesion_radius_px`` and ``lesion_mask`` (float32, 0 without lesion).

    Example:
        >>> img, info = render_scene(SceneSpec("ct", "chest", "right", "upper", "large", "hyper"), 64, seed=1)
        >>> img.shape, img.dtype, info["lesion_center_px"][1] < 32   # patient right = image left
        ((64, 64), dtype('float32'), True)
    """
    key = (spec.modality, spec.region)
    if key not in _RENDERERS:
        raise ValueError(f"unknown modality/region {key}; known: {sorted(_RENDERERS)}")
    bg_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 1])
    lesion_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 2])
    c = _Canvas(size)
    _RENDERERS[key](c, bg_rng)
    info: dict[str, Any] = {"lesion_center_px": None, "lesion_radius_px": 0.0, "lesion_mask": np.zeros_like(c.img)}
    if spec.has_lesion:
        x_right, y_upper, y_lower = LESION_SITES[key]
        cx = (x_right if spec.side == "right" else -x_right) + lesion_rng.uniform(-0.06, 0.06)
        cy = (y_upper if spec.level == "upper" else y_lower) + lesion_rng.uniform(-0.06, 0.06)
        rad = _SIZE_RADIUS[spec.size] * lesion_rng.uniform(0.9, 1.1)
        aspect = lesion_rng.uniform(0.8, 1.25)
        mask = c.ellipse(cx, cy, rad * aspect, rad / aspect, lesion_rng.uniform(0, np.pi))
        if with_lesion:
            local = c.img * mask
            mean_local = float(local.sum() / max(mask.sum(), 1e-6))
            target = min(mean_local + 0.4, 1.0) if spec.density == "hyper" else max(mean_local - 0.35, 0.0)
            if spec.modality == "ultrasound" and spec.density == "hypo":
                target = 0.08
            c.paint(mask, target)
            info["lesion_mask"] = mask
        half = size / 2
        info["lesion_center_px"] = ((cy + 1) * half - 0.5, (cx + 1) * half - 0.5)
        info["lesion_radius_px"] = float(rad * half)
    img = c.img
    if spec.modality == "ultrasound":  # multiplicative speckle (Rayleigh), inside the fan only
        speckle = bg_rng.rayleigh(1.0, img.shape).astype(np.float32) / np.sqrt(np.pi / 2)
        img = img * (0.65 + 0.35 * speckle)
    else:
        img = img + bg_rng.normal(0, noise, img.shape).astype(np.float32)
    gain = bg_rng.uniform(0.9, 1.1)
    return np.clip(img * gain, 0, 1).astype(np.float32), info
