"""Medical image–caption data: readers (ROCO, CSV/JSONL), decoding (PNG/JPEG incl. 16-bit, DICOM, NIfTI),
Hounsfield units and 3-D volumes with spacing and orientation (``load_hu``, ``load_volume``),
a lazily decoding Dataset that skips and counts bad pairs, the batch collate, the synthetic benchmark,
and WebDataset tar shards (``write_shards``, resumable ``open_shards``).

Data flow: reader -> list[ImageTextRecord] -> ImageTextDataset (decode + resize on access)
-> DataLoader(collate_fn=dataset.collate_fn) -> batch dict (images, captions, ids, labels, group_ids, ...).
"""

from unimlip_kit.data.collate import (ImageTextCollate, collate_image_text, group_ids_from_keys, normalize_caption,
                                      regroup_after_flip)
from unimlip_kit.data.dataset import ImageTextDataset, SkippedSample
from unimlip_kit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, image_format, load_image, read_image_array
from unimlip_kit.data.loader import EpochSampler, StepStream, build_dataloader
from unimlip_kit.data.modality import MODALITIES, infer_modality
from unimlip_kit.data.records import UNKNOWN_LABEL, UNKNOWN_MODALITY, ImageTextRecord
from unimlip_kit.data.resize import RESIZE_MODES, resize_image
from unimlip_kit.data.roco import ROCO_SPLITS, read_pmc_names, read_roco, roco_split_dir
from unimlip_kit.data.skips import SKIP_REASONS, SkipCounter
from unimlip_kit.data.shards import (ShardInfo, ShardLoader, conversion_skips, is_shard_source, list_shards, open_shards,
                                     read_shard_metadata, write_shards)
# Synthetic-generator internals (SceneSpec, render_scene, generate_samples, ...) are importable here for older
# code but not public: use SyntheticConfig + build_synthetic_dataset / load_synthetic_records.
from unimlip_kit.data.synth_render import SceneSpec, render_scene  # noqa: F401
from unimlip_kit.data.sources import (FOLDER_LABELS, SOURCE_KINDS, TABLE_SUFFIXES, align_labels, describe_source,
                                      hold_out, read_image_folder, read_source, source_kind)
from unimlip_kit.data.synthetic import (
    FINDING_CLASSES,
    GENERATOR_VERSION,
    SCENE_TYPES,
    SyntheticConfig,
    build_synthetic_dataset,
    default_cache_dir,
    finding_class,
    generate_samples,
    load_synthetic_records,
    load_vqa,
    sample_scene,
    synthetic_cache_key,
)
from unimlip_kit.data.tabular import read_csv_pairs, read_jsonl_pairs, read_pairs
from unimlip_kit.data.verify import verify_records
from unimlip_kit.data.volume import Volume, axis_codes, load_hu, load_volume, reorient
from unimlip_kit.data.window import WINDOW_PRESETS, dicom_linear_window, resolve_window

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EpochSampler",
    "FINDING_CLASSES",
    "FOLDER_LABELS",
    "ImageDecodeError",
    "ImageTextCollate",
    "ImageTextDataset",
    "ImageTextRecord",
    "MODALITIES",
    "RESIZE_MODES",
    "ROCO_SPLITS",
    "SCENE_TYPES",
    "SKIP_REASONS",
    "SOURCE_KINDS",
    "ShardInfo",
    "ShardLoader",
    "SkipCounter",
    "SkippedSample",
    "StepStream",
    "SyntheticConfig",
    "TABLE_SUFFIXES",
    "UNKNOWN_LABEL",
    "UNKNOWN_MODALITY",
    "Volume",
    "WINDOW_PRESETS",
    "align_labels",
    "axis_codes",
    "build_dataloader",
    "build_synthetic_dataset",
    "collate_image_text",
    "conversion_skips",
    "default_cache_dir",
    "describe_source",
    "dicom_linear_window",
    "group_ids_from_keys",
    "hold_out",
    "image_format",
    "infer_modality",
    "is_shard_source",
    "list_shards",
    "load_hu",
    "load_image",
    "load_synthetic_records",
    "load_volume",
    "load_vqa",
    "normalize_caption",
    "open_shards",
    "read_csv_pairs",
    "read_image_array",
    "read_image_folder",
    "read_jsonl_pairs",
    "read_pairs",
    "read_pmc_names",
    "read_roco",
    "read_shard_metadata",
    "read_source",
    "regroup_after_flip",
    "reorient",
    "resize_image",
    "resolve_window",
    "roco_split_dir",
    "source_kind",
    "verify_records",
    "write_shards",
]
