"""Decode any supported image file to a float32 (C, H, W) tensor in [0, 1].

One entry point, :func:`load_image`, dispatches on the file:

* JPEG/PNG/TIFF/BMP via Pillow. 8-bit images are divided by 255, 16-bit
  (PIL mode ``I;16``) by 65535 — no lossy 8-bit conversion on the way; colour
  becomes grey with ITU-R BT.601 luma weights in float (not Pillow's rounded
  ``"L"`` mode) unless ``channels=3``.
* DICOM (``.dcm``, ``.dicom`` or the ``DICM`` magic) via :mod:`unimlip_kit.data.dicom`.
* NIfTI (``.nii``, ``.nii.gz``) via :mod:`unimlip_kit.data.nifti`.

Every failure is an :class:`ImageDecodeError` carrying a skip ``reason``
(``missing_image``, ``corrupt_image``, ``unsupported_format``) so datasets can
skip and count it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from unimlip_kit.data.resize import resize_image

__all__ = ["DICOM_SUFFIXES", "ImageDecodeError", "NIFTI_SUFFIXES", "image_format", "load_image", "read_image_array"]

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class ImageDecodeError(ValueError):
    """An image could not be decoded; ``reason`` is the skip reason for :class:`SkipCounter`.

    Example:
        >>> ImageDecodeError("x.jpg: truncated", reason="corrupt_image").reason
        'corrupt_image'
    """

    def __init__(self, message: str, reason: str = "corrupt_image") -> None:
        super().__init__(message)
        self.reason = reason


def image_format(path: str | os.PathLike) -> Literal["dicom", "nifti", "pil"]:
    """``"dicom"``, ``"nifti"`` or ``"pil"`` from the suffix (and the DICOM magic for suffix-less files).

    Example:
        >>> image_format("a/b.nii.gz"), image_format("scan.DCM"), image_format("x.png")
        ('nifti', 'dicom', 'pil')
    """
    name = os.fspath(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if not Path(name).suffix:
        try:
            with open(path, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return "dicom"
        except OSError:
            pass
    return "pil"


def _pil_array(path: Path, channels: int) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # forces full decode: truncated files fail here, not later
            if im.format in ("JPEG", "MPO", "TIFF"):
                im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
                arr = np.asarray(im, dtype=np.uint16).astype(np.float64) / 65535.0
            elif mode == "I":
                a = np.asarray(im, dtype=np.int64)
                # 32-bit integer images: Pillow uses mode "I" for 16-bit data on some paths.
                scale = 65535.0 if a.min() >= 0 and a.max() <= 65535 else float(a.max() - a.min()) or 1.0
                arr = (a - (0 if scale == 65535.0 else a.min())) / scale
            elif mode == "F":
                a = np.asarray(im, dtype=np.float64)
                lo, hi = float(a.min()), float(a.max())
                arr = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
            elif mode in ("L", "1"):
                arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
            elif mode == "LA":
                arr = np.asarray(im, dtype=np.float64)[..., 0] / 255.0
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    except FileNotFoundError as err:
        raise ImageDecodeError(f"{path}: file not found", "missing_image") from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError(f"{path}: not a readable image ({err})", "corrupt_image") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"{path}: corrupt image ({err})", "corrupt_image") from err
    if arr.ndim == 3 and channels == 1:
        arr = arr @ _LUMA
    return arr


def read_image_array(
    path: str | os.PathLike,
    *,
    channels: int = 1,
    window: str | tuple[float, float] | None = None,
    frame: int | None = None,
    slice_index: int | None = None,
    slice_axis: int = 2,
) -> np.ndarray:
    """Decode ``path`` to float32 (H, W) (grey) or (H, W, 3) in [0, 1], at native resolution.

    ``window`` applies to DICOM/NIfTI (preset name or ``(centre, width)`` in HU);
    ``frame`` to multi-frame DICOM; ``slice_index``/``slice_axis`` to NIfTI.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> p = os.path.join(tempfile.mkdtemp(), "a.png")
        >>> Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(p)
        >>> read_image_array(p).tolist()
        [[0.0, 1.0]]
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    p = Path(path)
    if not p.is_file():
        raise ImageDecodeError(f"{p}: file not found", "missing_image")
    fmt = image_format(p)
    if fmt == "pil":
        arr = _pil_array(p, channels)
    else:
        try:
            if fmt == "dicom":
                from unimlip_kit.data.dicom import dicom_to_unit

                arr = dicom_to_unit(p, window=window, frame=frame)
            else:
                from unimlip_kit.data.nifti import nifti_to_unit

                arr = nifti_to_unit(p, slice_index=slice_index, axis=slice_axis, window=window)
        except ImportError:
            raise
        except Exception as err:  # pydicom/nibabel raise many types for bad files
            msg = str(err).lower()
            missing_codec = any(w in msg for w in ("decoder", "handler", "plugin", "transfer syntax"))
            reason = "unsupported_format" if missing_codec else "corrupt_image"
            raise ImageDecodeError(f"{p}: cannot decode {fmt} file ({type(err).__name__}: {err})", reason) from err
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ImageDecodeError(f"{p}: decoded image contains NaN or infinity", "corrupt_image")
    if arr.ndim == 2 and channels == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if min(arr.shape[:2]) < 1:
        raise ImageDecodeError(f"{p}: empty image of shape {arr.shape}", "corrupt_image")
    return np.clip(arr, 0.0, 1.0)


def load_image(
    path: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = 224,
    channels: int = 1,
    resize: Literal["pad", "crop", "stretch"] = "pad",
    window: str | tuple[float, float] | None = None,
    frame: int | None = None,
    slice_index: int | None = None,
    slice_axis: int = 2,
) -> torch.Tensor:
    """Decode ``path`` to a float32 (C, H, W) tensor in [0, 1], resized to ``size`` (``None``: native).

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> p = os.path.join(tempfile.mkdtemp(), "a.jpg")
        >>> Image.fromarray(np.full((30, 40, 3), 200, dtype=np.uint8)).save(p)
        >>> x = load_image(p, size=16); x.shape, x.dtype
        (torch.Size([1, 16, 16]), torch.float32)
    """
    arr = read_image_array(
        path, channels=channels, window=window, frame=frame, slice_index=slice_index, slice_axis=slice_axis
    )
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
    if size is not None:
        t = resize_image(t, size, resize)
    return t
