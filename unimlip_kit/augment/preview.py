"""Preview a preset: ``python -m unimlip_kit.augment.preview``.

Reads an image (PNG/JPEG via Pillow, 16-bit PNG included; DICOM via pydicom,
``pip install 'unimlip_kit[medical]'``) or generates a phantom
(:func:`~unimlip_kit.augment.samples.sample_image`), brings it to the preset's
input range, and writes ONE PNG at ``--out``: a block per strength, each the
original (labelled ``original``) followed by ``--n`` augmented views drawn with
``--seed`` (labelled ``<strength> 1..n``).

Examples::

    python -m unimlip_kit.augment.preview --modality xray --out runs/preview/xray.png
    python -m unimlip_kit.augment.preview --image chest.dcm --modality xray --n 11
    python -m unimlip_kit.augment.preview --image slide.jpg --modality pathology --strengths light strong
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from unimlip_kit.augment.presets import PRESET_MODALITIES, PRESET_RANGES, STRENGTHS, preset
from unimlip_kit.augment.ranges import to_float
from unimlip_kit.augment.samples import sample_image
from unimlip_kit.utils.optional import require

__all__ = ["load_image", "main", "render_grid", "render_labelled"]


def _read_dicom(path: Path, modality: str) -> torch.Tensor:
    pydicom = require("pydicom", "medical", "DICOM input")
    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array.astype(np.float64)
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        arr = arr[arr.shape[0] // 2]  # a multi-frame series: the middle frame
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    img = torch.from_numpy(arr)
    img = img[None] if img.ndim == 2 else img.permute(2, 0, 1)
    if modality == "ct":
        return img.float()  # Hounsfield units
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        img = img.max() - img
    lo, hi = float(img.min()), float(img.max())
    return ((img - lo) / max(hi - lo, 1e-12)).float()


def load_image(path: str | Path, modality: str) -> torch.Tensor:
    """A ``(C, H, W)`` float image in the preset's input range from a PNG/JPEG/DICOM file.

    Grey modalities get one channel, pathology three. DICOM applies the rescale
    slope/intercept (CT stays in HU). 8- and 16-bit files map losslessly onto [0, 1].

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> path = Path(tempfile.mkdtemp()) / "x.png"
        >>> Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).save(path)
        >>> load_image(path, "xray")
        tensor([[[0., 1.]]])
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    is_dicom = path.suffix.lower() in (".dcm", ".dicom")
    if not is_dicom:
        with open(path, "rb") as fh:
            is_dicom = fh.read(132)[128:132] == b"DICM"
    if is_dicom:
        return _read_dicom(path, modality)
    from PIL import Image

    with Image.open(path) as im:
        if modality == "pathology":
            arr = np.asarray(im.convert("RGB"))
        elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im).astype(np.uint16)
        else:
            arr = np.asarray(im.convert("L"))
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    unit = to_float(t) if not t.is_floating_point() else t.float()
    if modality == "ct":
        lo, hi = PRESET_RANGES["ct"][0]
        return unit * (hi - lo) + lo  # an 8/16-bit export: spread over the HU range
    return unit


def render_grid(images: torch.Tensor, cols: int, pad: int = 4) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images in [0, 1] into one uint8 ``(H', W', 3)`` array (white gaps of ``pad``).

    Example:
        >>> render_grid(torch.zeros(5, 1, 8, 8), cols=3).shape  # 2 rows x 3 columns
        (28, 40, 3)
    """
    n, c, h, w = images.shape
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    rgb = images.expand(n, 3, h, w) if c == 1 else images
    arr = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = arr[i]
    return canvas


def render_labelled(images: torch.Tensor, labels: Sequence[str], cols: int, title: str = "", pad: int = 4) -> np.ndarray:
    """:func:`render_grid` with a text label above every tile (and an optional title line above the grid).

    Example:
        >>> render_labelled(torch.zeros(3, 1, 8, 8), ["original", "light 1", "light 2"], cols=3, title="light").shape[2]
        3
    """
    from PIL import Image, ImageDraw

    n, c, h, w = images.shape
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    band, head = 12, (14 if title else 0)
    rows = math.ceil(n / cols)
    canvas = Image.new("RGB", (cols * (w + pad) + pad, head + rows * (h + band + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 1), title, fill=(0, 0, 0))
    tiles = render_grid(images, cols=1, pad=0).reshape(n, h, w, 3)
    for i in range(n):
        r, q = divmod(i, cols)
        x, y = pad + q * (w + pad), head + pad + r * (h + band + pad)
        draw.text((x, y), labels[i][: max(1, w // 6)], fill=(180, 0, 0) if i == 0 else (0, 0, 0))
        canvas.paste(Image.fromarray(tiles[i]), (x, y + band))
    return np.asarray(canvas)


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    """Write the preview PNG at ``--out`` (one labelled block per strength); returns ``[path]``.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "mri.png"
        >>> [p.name for p in main(["--modality", "mri", "--out", str(out), "--n", "2", "--size", "16", "--strengths", "light"])]
        wrote ...mri.png (light: original + 2 views)
        ['mri.png']
    """
    ap = argparse.ArgumentParser(prog="python -m unimlip_kit.augment.preview", description=__doc__.split("\n")[0])
    ap.add_argument("--image", default=None, help="PNG, JPEG or DICOM file (default: a generated phantom)")
    ap.add_argument("--modality", default="xray", choices=PRESET_MODALITIES)
    ap.add_argument("--out", default="augment_preview.png", help="the PNG to write (one block per strength)")
    ap.add_argument("--strengths", nargs="+", default=list(STRENGTHS), choices=STRENGTHS)
    ap.add_argument("--n", type=int, default=11, help="augmented samples per strength")
    ap.add_argument("--size", type=int, default=256, help="images are resized to size x size")
    ap.add_argument("--cols", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n < 1 or args.size < 8:
        ap.error("--n must be >= 1 and --size >= 8")

    img = load_image(args.image, args.modality) if args.image else sample_image(args.modality, args.size, args.seed)
    if tuple(img.shape[-2:]) != (args.size, args.size):
        img = torch.nn.functional.interpolate(img[None], size=(args.size, args.size), mode="bilinear", antialias=True)[0]
    lo, hi = PRESET_RANGES[args.modality][0]
    batch = img[None].expand(args.n, *img.shape).clone()
    original = ((img - lo) / (hi - lo)).clamp(0, 1)[None]
    if args.modality == "ct":  # show the original in the default soft-tissue window
        original = ((img - (40 - 200)) / 400).clamp(0, 1)[None]

    from PIL import Image

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    blocks = []
    for strength in args.strengths:
        aug = preset(args.modality, strength, generator=args.seed)
        with torch.no_grad():
            views = aug(batch)
        labels = ["original"] + [f"{strength} {k}" for k in range(1, args.n + 1)]
        title = f"{args.modality} / {strength}: original, then {args.n} views (seed {args.seed})"
        blocks.append(render_labelled(torch.cat([original, views]), labels, cols=args.cols, title=title))
    width = max(b.shape[1] for b in blocks)
    sheet = np.concatenate([np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks])
    Image.fromarray(sheet).save(out)
    print(f"wrote {out} ({', '.join(args.strengths)}: original + {args.n} views)")
    return [out]


if __name__ == "__main__":
    main()
