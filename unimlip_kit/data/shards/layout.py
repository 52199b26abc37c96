"""The shards' on-disk layout, shared by the writer, the finder and the reader.

The name and format tag of a folder's ``index.json``, the image members' extensions (what the writer
names a member and what the reader looks for), and :class:`ShardInfo`, a shard with its sample count.
"""

from __future__ import annotations

from typing import NamedTuple

#: Name of the index a folder of shards carries (sample counts; written by
#: :func:`~unimlip_kit.data.shards.write_shards`).
INDEX_NAME = "index.json"
INDEX_FORMAT = "unimlip_kit-shards"
#: Member extensions read as the image of a sample (first match in this order).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "tiff", "tif", "bmp", "dcm", "dicom", "nii", "nii.gz")
# the member extension the writer gives a file suffix: each one of IMAGE_EXTENSIONS
_EXT_OF_SUFFIX = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp",
                  ".dcm": "dcm", ".dicom": "dcm", ".nii": "nii"}


class ShardInfo(NamedTuple):
    """One tar shard and its number of samples.

    Example:
        >>> ShardInfo("/data/roco-000000.tar", 1000).samples
        1000
    """

    path: str
    samples: int
