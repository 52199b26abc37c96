"""Decode any supported image file to a float32 (C, H, W) tensor in [0, 1].

One entry point, :func:`load_image`, dispatches on the file:

* JPEG/PNG/TIFF/BMP via Pillow. 8-bit images are divided by 255, 16-bit
  (PIL mode ``I;16``) by 65535 — no lossy 8-bit conversion on the way; colour
  becomes grey with ITU-R BT.601 luma weights in float (not Pillow's rounded
  ``"L"`` mode) unless ``channels=3``.
* DICOM (``.dcm``, ``.dicom`` or the ``DICM`` magic) via :mod:`unimlip_kit.data.dicom`.
* NIfTI (``.nii``, ``.nii.gz``) via :mod:`unimlip_kit.data.nifti`.

Every failure of a *file* is an :class:`ImageDecodeError` carrying a skip
``reason`` (``missing_image``, ``corrupt_image``, ``unsupported_format``,
``image_too_large``) so datasets can skip and count it. A bad *argument*
(an unknown ``window`` preset, ``slice_axis=7``, ``channels=2``) is a caller
error that would fail for every file, so it raises ``ValueError`` before any
file is touched instead of filing every image as corrupt.

Large images: Pillow's process-wide decompression-bomb limit is replaced by the
explicit ``max_pixels`` argument (default :data:`DEFAULT_MAX_PIXELS`, Pillow's
own hard limit; ``None`` for no limit). An image above it — a whole-slide
thumbnail, or a forged PNG header — is an ``image_too_large`` skip, never an
exception that aborts the DataLoader.

Non-finite values (NaN voxels outside a mask, float TIFFs) are ignored by the
intensity range and filled with 0; see :mod:`unimlip_kit.data.window`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from unimlip_kit.data.resize import resize_image
from unimlip_kit.data.window import minmax_unit, resolve_window

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "ImageDecodeError",
    "NIFTI_SUFFIXES",
    "check_decode_args",
    "image_format",
    "load_image",
    "read_image_array",
]

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Every file suffix :func:`load_image` decodes (Pillow's common formats, DICOM, NIfTI).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp") + DICOM_SUFFIXES + NIFTI_SUFFIXES
#: Default pixel limit (width x height): Pillow's own hard limit, 2 x ``PIL.Image.MAX_IMAGE_PIXELS``.
DEFAULT_MAX_PIXELS = 2 * (1024 * 1024 * 1024 // 4 // 3)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# Pillow's bomb limit is a module global; it is lifted only under this lock, for one open/load at a time.
_PIL_LIMIT_LOCK = threading.Lock()


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
    """``"dicom"``, ``"nifti"`` or ``"pil"`` from the suffix (and the DICOM magic for files without an image suffix).

    Example:
        >>> image_format("a/b.nii.gz"), image_format("scan.DCM"), image_format("x.png")
        ('nifti', 'dicom', 'pil')
    """
    name = os.fspath(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if not name.endswith(IMAGE_SUFFIXES):  # no suffix, or not an image's (a DICOM named by its UID, 1.2.840....)
        try:
            with open(path, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return "dicom"
        except OSError:
            pass
    return "pil"


def check_decode_args(
    *,
    channels: int = 1,
    window: str | tuple[float, float] | None = None,
    frame: int | None = None,
    slice_index: int | None = None,
    slice_axis: int = 2,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> None:
    """Raise ``ValueError`` naming the argument if a decode option is invalid for *every* file.

    Called by :func:`read_image_array` and by :class:`~unimlip_kit.data.ImageTextDataset` at
    construction, so a typo fails once instead of skipping every image as corrupt.

    Example:
        >>> check_decode_args(window="lung", slice_axis=0)
        >>> check_decode_args(slice_axis=7)
        Traceback (most recent call last):
        ...
        ValueError: slice_axis must be 0, 1 or 2 (sagittal, coronal, axial), got 7
    """
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    resolve_window(window)
    if isinstance(slice_axis, bool) or slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2 (sagittal, coronal, axial), got {slice_axis!r}")
    for name, v in (("frame", frame), ("slice_index", slice_index)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
            raise ValueError(f"{name} must be None or an integer >= 0, got {v!r}")
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1):
        raise ValueError(f"max_pixels must be None (no limit) or an integer >= 1, got {max_pixels!r}")


def _too_large(path: Path, size: tuple[int, int], max_pixels: int) -> ImageDecodeError:
    w, h = size
    return ImageDecodeError(
        f"{path}: {w}x{h} = {w * h} pixels is above max_pixels={max_pixels} "
        "(pass a larger max_pixels, or None for no limit, to decode it)",
        "image_too_large",
    )


def _open_pil(path: Path, max_pixels: int | None) -> Any:
    """``Image.open`` (header only) with our ``max_pixels`` instead of Pillow's global bomb limit."""
    from PIL import Image

    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
        im.close()
        raise _too_large(path, im.size, max_pixels)
    return im


def _load_pil(im: Any) -> None:
    """``im.load()``; Pillow re-checks tile sizes at load time, so lift its limit for images above it."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or im.size[0] * im.size[1] <= limit:
        im.load()
        return
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im.load()
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _pil_array(path: Path, channels: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with _open_pil(path, max_pixels) as im:
            _load_pil(im)  # forces full decode: truncated files fail here, not later
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
                arr = minmax_unit(np.asarray(im, dtype=np.float64))  # NaN ignored by the range, then 0
            elif mode in ("L", "1"):
                arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
            elif mode == "LA":
                arr = np.asarray(im, dtype=np.float64)[..., 0] / 255.0
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    except ImageDecodeError:
        raise
    except FileNotFoundError as err:
        raise ImageDecodeError(f"{path}: file not found", "missing_image") from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError(f"{path}: not a readable image ({err})", "corrupt_image") from err
    except Image.DecompressionBombError as err:  # a frame or tile above Pillow's limit (GIF, TIFF)
        raise ImageDecodeError(f"{path}: {err}", "image_too_large") from err
    except MemoryError as err:
        raise ImageDecodeError(f"{path}: out of memory while decoding; lower max_pixels", "image_too_large") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageDecodeError(f"{path}: corrupt image ({err})", "corrupt_image") from err
    if arr.ndim == 3 and channels == 1:
        arr = arr @ _LUMA
    return arr


def _failure_reason(err: BaseException) -> str:
    """Skip reason of a pydicom/nibabel failure: a missing codec is ``unsupported_format``, the rest corrupt."""
    if isinstance(err, NotImplementedError):
        return "unsupported_format"
    msg = str(err).lower()
    codec = ("missing dependencies", "no pixel data decoders", "is not supported", "not supported by", "no handler")
    return "unsupported_format" if any(w in msg for w in codec) else "corrupt_image"


def read_image_array(
    path: str | os.PathLike,
    *,
    channels: int = 1,
    window: str | tuple[float, float] | None = None,
    frame: int | None = None,
    slice_index: int | None = None,
    slice_axis: int = 2,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``path`` to float32 (H, W) (grey) or (H, W, 3) in [0, 1], at native resolution.

    ``window`` applies to DICOM/NIfTI (preset name or ``(centre, width)`` in HU);
    ``frame`` to multi-frame DICOM; ``slice_index``/``slice_axis`` to NIfTI;
    ``max_pixels`` (width x height, ``None``: no limit) to Pillow images. Bad
    arguments raise ``ValueError`` (:func:`check_decode_args`); a file that cannot
    be decoded raises :class:`ImageDecodeError` with its skip reason.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> p = os.path.join(tempfile.mkdtemp(), "a.png")
        >>> Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(p)
        >>> read_image_array(p).tolist()
        [[0.0, 1.0]]
        >>> read_image_array(p, max_pixels=1)
        Traceback (most recent call last):
        ...
        unimlip_kit.data.decode.ImageDecodeError: ...: 2x1 = 2 pixels is above max_pixels=1 (pass a larger max_pixels, or None for no limit, to decode it)
    """
    check_decode_args(
        channels=channels, window=window, frame=frame, slice_index=slice_index, slice_axis=slice_axis, max_pixels=max_pixels
    )
    p = Path(path)
    if not p.is_file():
        raise ImageDecodeError(f"{p}: file not found", "missing_image")
    fmt = image_format(p)
    if fmt == "pil":
        arr = _pil_array(p, channels, max_pixels)
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
            raise ImageDecodeError(
                f"{p}: cannot decode {fmt} file ({type(err).__name__}: {err})", _failure_reason(err)
            ) from err
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
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Decode ``path`` to a float32 (C, H, W) tensor in [0, 1], resized to ``size`` (``None``: native).

    Options as for :func:`read_image_array`.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> p = os.path.join(tempfile.mkdtemp(), "a.jpg")
        >>> Image.fromarray(np.full((30, 40, 3), 200, dtype=np.uint8)).save(p)
        >>> x = load_image(p, size=16); x.shape, x.dtype
        (torch.Size([1, 16, 16]), torch.float32)
    """
    arr = read_image_array(
        path,
        channels=channels,
        window=window,
        frame=frame,
        slice_index=slice_index,
        slice_axis=slice_axis,
        max_pixels=max_pixels,
    )
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
    if size is not None:
        t = resize_image(t, size, resize)
    return t
