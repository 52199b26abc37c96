"""Writing shards: any reader's records as WebDataset tars with the standard library, and their ``index.json``."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Iterable

from unimlip_kit.data.decode import image_format
from unimlip_kit.data.records import ImageTextRecord
from unimlip_kit.data.shards.layout import _EXT_OF_SUFFIX, INDEX_FORMAT, INDEX_NAME, ShardInfo
from unimlip_kit.data.skips import SkipCounter
from unimlip_kit.utils.io import save_json


def _image_ext(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return "nii.gz"
    ext = _EXT_OF_SUFFIX.get(path.suffix.lower())
    if ext is None and not path.suffix and image_format(path) == "dicom":  # suffix-less DICOM (magic bytes)
        ext = "dcm"
    return ext


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    records: Iterable[ImageTextRecord],
    out_dir: str | os.PathLike,
    *,
    max_per_shard: int = 1000,
    prefix: str = "shard",
    skips: SkipCounter | None = None,
    progress: bool = False,
    overwrite: bool = False,
    source: str = "",
) -> list[ShardInfo]:
    """Write ``records`` to ``<out_dir>/<prefix>-000000.tar, ...`` (WebDataset layout) and ``index.json``.

    At most ``max_per_shard`` samples per shard, in record order. A record whose image cannot be read
    is skipped and counted (``missing_image``; ``unsupported_format`` for a suffix no decoder knows);
    decode failures are found when reading (or up front with :func:`verify_records`). Each shard is
    written under a temporary name and renamed, the index last; ``overwrite=False`` refuses a folder
    that already has shards with this prefix.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp()); Image.new("L", (8, 8), 50).save(d / "a.png")
        >>> recs = [ImageTextRecord(f"r{i}", d / "a.png", f"caption {i}") for i in range(5)]
        >>> recs.append(ImageTextRecord("gone", d / "missing.png", "x"))
        >>> c = SkipCounter()
        >>> [(Path(s.path).name, s.samples) for s in write_shards(recs, d / "out", max_per_shard=2, skips=c)]
        [('shard-000000.tar', 2), ('shard-000001.tar', 2), ('shard-000002.tar', 1)]
        >>> c.counts()
        {'missing_image': 1}
    """
    if isinstance(max_per_shard, bool) or not isinstance(max_per_shard, int) or max_per_shard < 1:
        raise ValueError(f"max_per_shard must be an integer >= 1, got {max_per_shard!r}")
    if not prefix or not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise ValueError(f"prefix must be a non-empty file name of letters, digits, '_', '-', '.', got {prefix!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob(f"{prefix}-*.tar"))
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds {len(old)} shards named {prefix}-*.tar; pass overwrite=True "
                              "(--overwrite) or another prefix/folder")
    for p in old:
        p.unlink()
    skips = skips if skips is not None else SkipCounter()
    from tqdm.auto import tqdm

    written: list[ShardInfo] = []
    tar: tarfile.TarFile | None = None
    tmp = final = None
    count = key = 0

    def close() -> None:
        nonlocal tar
        if tar is not None:
            tar.close()
            os.replace(tmp, final)
            written.append(ShardInfo(str(final), count))
            tar = None

    try:
        for rec in tqdm(records, desc=f"shards {prefix}", unit="pair", disable=not progress, dynamic_ncols=True):
            path = Path(rec.image_path)
            ext = _image_ext(path)
            if ext is None:
                skips.add(rec.id, "unsupported_format", f"{path}: no decoder for suffix {path.suffix!r} in shards")
                continue
            try:
                data = path.read_bytes()
            except OSError as err:
                skips.add(rec.id, "missing_image", f"{path}: {err.strerror or err}")
                continue
            if tar is None or count == max_per_shard:
                close()
                final = out / f"{prefix}-{len(written):06d}.tar"
                tmp = out / f".{final.name}.tmp"
                tar, count = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT), 0
            meta = {"id": rec.id, "label": int(rec.label), "group": rec.group, "modality": rec.modality,
                    "meta": rec.meta, "image_key": str(rec.image_path)}
            name = f"{key:09d}"
            _member(tar, f"{name}.{ext}", data)
            _member(tar, f"{name}.txt", rec.caption.encode("utf-8"))
            _member(tar, f"{name}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8"))
            count += 1
            key += 1
        close()
    finally:
        if tar is not None:  # an exception mid-shard: leave no half-written shard behind
            tar.close()
            Path(tmp).unlink(missing_ok=True)
    save_json(out / INDEX_NAME, {
        "format": INDEX_FORMAT, "version": 1, "samples": sum(s.samples for s in written),
        "shards": [{"name": Path(s.path).name, "samples": s.samples, "bytes": Path(s.path).stat().st_size} for s in written],
        "source": source, "skipped": skips.to_dict(max_examples=None),  # every id: a run on the shards counts them
    })
    return written
