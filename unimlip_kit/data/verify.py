"""Optional up-front check that every record's image decodes, so counts are known before training.

Readers only see that a file exists; a truncated JPEG or a broken DICOM shows
up when it is decoded. :func:`verify_records` decodes every image once (a
thread pool: Pillow, pydicom and nibabel release the GIL for most of the
work), counts failures in ``skips`` and returns the records that decode. It
is opt-in — a lazy run skips the same pairs during training anyway — but it
makes ``train_pairs`` in a run's metrics exact from the first step.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from unimlip_kit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, read_image_array
from unimlip_kit.data.records import ImageTextRecord
from unimlip_kit.data.skips import SkipCounter

__all__ = ["verify_records"]


def _check(rec: ImageTextRecord, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[str, str] | None:
    try:
        read_image_array(rec.image_path, max_pixels=max_pixels)
    except ImageDecodeError as err:
        return err.reason, str(err)
    return None


def verify_records(
    records: Sequence[ImageTextRecord],
    skips: SkipCounter | None = None,
    *,
    num_threads: int = 4,
    progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[ImageTextRecord]:
    """Decode every image once; return the records that decode, counting the others in ``skips``.

    ``max_pixels`` should match the dataset's (images above it are ``image_too_large``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (4, 4)).save(d / "ok.png")
        >>> _ = (d / "bad.png").write_bytes(b"\\x89PNG broken")
        >>> c = SkipCounter()
        >>> recs = [ImageTextRecord("ok", d / "ok.png", "x"), ImageTextRecord("bad", d / "bad.png", "y")]
        >>> [r.id for r in verify_records(recs, c)], c.counts()
        (['ok'], {'corrupt_image': 1})
    """
    skips = skips if skips is not None else SkipCounter()
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        results = pool.map(lambda r: _check(r, max_pixels), records)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(records), desc="verify images", unit="img", leave=False)
        outcome = list(results)
    kept = []
    for rec, bad in zip(records, outcome):
        if bad is None:
            kept.append(rec)
        else:
            skips.add(rec.id, bad[0], bad[1])
    return kept
