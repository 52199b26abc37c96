"""A map-style torch Dataset over records that decodes images lazily and skips bad ones.

``__getitem__`` never raises for bad data: a missing or undecodable image
returns a :class:`SkippedSample` naming the id and reason, which the collate
drops from the batch and lists in ``batch["skipped"]`` for the run's
:class:`~unimlip_kit.data.skips.SkipCounter`. The dataset also records the
failure in its own ``skips`` (complete when ``num_workers=0``; with workers
the batch is the channel back to the main process, see
:mod:`unimlip_kit.data.skips`). Nothing is replaced by another sample, so a
skip never silently changes which pairs a run trains on.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Literal, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset

from unimlip_kit.data.collate import ImageTextCollate
from unimlip_kit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, check_decode_args, load_image
from unimlip_kit.data.records import ImageTextRecord
from unimlip_kit.data.resize import RESIZE_MODES
from unimlip_kit.data.skips import SkipCounter

__all__ = ["ImageTextDataset", "SkippedSample"]


class SkippedSample(NamedTuple):
    """What ``__getitem__`` returns for a pair it could not load.

    Example:
        >>> from pathlib import Path
        >>> ds = ImageTextDataset([ImageTextRecord("x1", Path("no/such/image.png"), "Chest X-ray.")], image_size=8)
        >>> s = ds[0]
        >>> isinstance(s, SkippedSample), s.id, s.reason
        (True, 'x1', 'missing_image')
        >>> ds.collate_fn([s])["skipped"][0][:2], ds.skips.total
        (('x1', 'missing_image'), 1)
    """

    id: str
    reason: str
    detail: str = ""


class ImageTextDataset(Dataset):
    """Image–caption pairs from ``records``, each image decoded on access to (C, size, size) in [0, 1].

    Args:
        records: from :func:`read_roco`, :func:`read_pairs` or the synthetic benchmark.
        image_size: output side (int) or (H, W); ``None`` keeps native size (batching then needs equal sizes).
        channels: 1 (grey, default) or 3.
        resize: ``"pad"`` (default), ``"crop"`` or ``"stretch"`` (see :func:`resize_image`).
        window: DICOM/NIfTI window preset or (centre, width) in HU; ``None`` uses the file's.
        slice_index, slice_axis: NIfTI slice choice (default: middle axial slice).
        max_pixels: largest image (width x height) decoded; larger ones are skipped as
            ``image_too_large`` (default: Pillow's limit; ``None``: no limit).
        transform: optional per-sample callable on the (C, H, W) image tensor.
        skips: counter receiving decode failures (default: a new one, ``self.skips``).

    Options that would fail for every image (``window="lugn"``, ``slice_axis=7``,
    ``resize="fit"``) raise ``ValueError`` here, once, instead of skipping every pair.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (10, 10), 128).save(d / "a.png")
        >>> _ = (d / "bad.jpg").write_bytes(b"not a jpeg")
        >>> recs = [ImageTextRecord("a", d / "a.png", "MRI."), ImageTextRecord("b", d / "bad.jpg", "CT.")]
        >>> ds = ImageTextDataset(recs, image_size=8)
        >>> ds[0]["image"].shape, ds[1].reason
        (torch.Size([1, 8, 8]), 'corrupt_image')
        >>> batch = ds.collate_fn([ds[0], ds[1]])
        >>> batch["images"].shape, batch["ids"], [s[:2] for s in batch["skipped"]]
        (torch.Size([1, 1, 8, 8]), ['a'], [('b', 'corrupt_image')])
    """

    def __init__(
        self,
        records: Sequence[ImageTextRecord],
        *,
        image_size: int | tuple[int, int] | None = 96,
        channels: int = 1,
        resize: Literal["pad", "crop", "stretch"] = "pad",
        window: str | tuple[float, float] | None = None,
        slice_index: int | None = None,
        slice_axis: int = 2,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        skips: SkipCounter | None = None,
    ) -> None:
        check_decode_args(
            channels=channels, window=window, slice_index=slice_index, slice_axis=slice_axis, max_pixels=max_pixels
        )
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        if image_size is not None:
            sides = (image_size, image_size) if isinstance(image_size, numbers.Integral) else tuple(image_size)
            if len(sides) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in sides):
                raise ValueError(f"image_size must be None, a positive int or (H, W) of positive ints, got {image_size!r}")
        self.records = list(records)
        if image_size is not None:  # plain ints (numpy integers and (H, W) lists accepted)
            image_size = int(image_size) if isinstance(image_size, numbers.Integral) else (int(sides[0]), int(sides[1]))
        self.image_size = image_size
        self.channels = channels
        self.resize = resize
        self.window = window
        self.slice_index = slice_index
        self.slice_axis = slice_axis
        self.max_pixels = max_pixels
        self.transform = transform
        self.skips = skips if skips is not None else SkipCounter()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of every decoded image, or ``None`` with native sizes."""
        if self.image_size is None:
            return None
        h, w = (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size
        return (self.channels, int(h), int(w))

    @property
    def collate_fn(self) -> ImageTextCollate:
        """The collate for this dataset (knows the image shape for all-skipped batches)."""
        return ImageTextCollate(self.image_shape)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        rec = self.records[index]
        try:
            image = load_image(
                rec.image_path,
                size=self.image_size,
                channels=self.channels,
                resize=self.resize,
                window=self.window,
                slice_index=self.slice_index,
                slice_axis=self.slice_axis,
                max_pixels=self.max_pixels,
            )
        except ImageDecodeError as err:
            self.skips.add(rec.id, err.reason, str(err))
            return SkippedSample(rec.id, err.reason, str(err))
        if self.transform is not None:
            image = self.transform(image)
        return {
            "image": image,
            "caption": rec.caption,
            "id": rec.id,
            "label": int(rec.label),
            "group": rec.group,
            "image_key": str(rec.image_path),
            "modality": rec.modality,
        }
