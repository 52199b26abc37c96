"""A procedural radiology-like image–caption benchmark, deterministic by seed, in the ROCO layout.

Each pair is one rendered scene (:mod:`unimlip_kit.data.synth_render`): a
modality/region — chest radiograph, chest/abdomen/head CT, brain MRI, liver
ultrasound — with either no finding or one lesion described by four visually
clear attributes: the patient's ``side`` (left/right, radiological
convention: patient right = image left), ``level`` (upper/lower on the
image), ``size`` (small/large) and ``density`` (hyper/hypo). Its caption
(:mod:`unimlip_kit.data.synth_text`) states exactly these, with varied
wording and negations; its ``label`` is the finding class
(:data:`FINDING_CLASSES`, 17 classes); its ``group`` is the attribute
signature (same group = same meaning, so never each other's hard negative);
VQA pairs (closed yes/no and open) go to ``vqa/<split>.json``.

The dataset is written as::

    <root>/data/<split>/radiology/captions.txt     SYN-<split>-<index><TAB>caption
    <root>/data/<split>/radiology/images/<id>.jpg
    <root>/data/<split>/radiology/metadata.jsonl   id, label, group, modality, attributes
    <root>/vqa/<split>.json                        [{qid, image_id, image, question, answer, answer_type, question_type}]
    <root>/labels.json, <root>/manifest.json       class names; config, version, counts

so training reads it with the real ROCO reader. ``root`` is a cache folder
keyed by a hash of the config and :data:`GENERATOR_VERSION`: a second build
with the same parameters returns at once. Sample ``i`` of a split depends only
on ``(seed, split, i)`` (:func:`~unimlip_kit.utils.seeding.derive_seed`), so a
larger ``n_train`` extends rather than reshuffles the set.

Why it is learnable at tiny scale: 6 scene types x 17 findings = 102 distinct
meanings, each a large, high-contrast, consistently placed blob; captions are
a deterministic function of those attributes up to paraphrase.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from unimlip_kit.data.records import ImageTextRecord
from unimlip_kit.data.roco import read_roco
from unimlip_kit.data.skips import SkipCounter
from unimlip_kit.data.synth_render import LESION_SITES, SceneSpec, render_scene
from unimlip_kit.data.synth_text import make_caption, make_qa
from unimlip_kit.utils.config import config_to_dict
from unimlip_kit.utils.io import load_json, save_json
from unimlip_kit.utils.seeding import derive_seed

__all__ = [
    "FINDING_CLASSES",
    "SCENE_TYPES",
    "SyntheticConfig",
    "build_synthetic_dataset",
    "default_cache_dir",
    "load_synthetic_records",
    "load_vqa",
]

#: Bump whenever rendering or captions change: it is part of the cache key.
GENERATOR_VERSION = 3
#: (modality, region) pairs the generator can draw.
SCENE_TYPES: tuple[tuple[str, str], ...] = tuple(LESION_SITES)
_ATTRS = (("left", "right"), ("upper", "lower"), ("small", "large"), ("hyper", "hypo"))
#: Finding classes: index 0 is no finding, then every side_level_size_density combination.
FINDING_CLASSES: tuple[str, ...] = ("no_finding",) + tuple("_".join(c) for c in itertools.product(*_ATTRS))
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class SyntheticConfig:
    """Parameters of the synthetic benchmark (all part of the cache key).

    Example:
        >>> SyntheticConfig(n_train=10).n_train
        10
    """

    n_train: int = 2000
    n_validation: int = 200
    n_test: int = 500
    image_size: int = 64
    seed: int = 0
    #: subset of "xray", "ct", "mri", "ultrasound"
    modalities: list[str] = dataclasses.field(default_factory=lambda: ["xray", "ct", "mri", "ultrasound"])
    #: probability that a scene has no finding
    p_normal: float = 0.2
    #: probability that a positive caption adds "The <other> side is unremarkable."
    p_other_side: float = 0.15
    #: standard deviation of additive Gaussian noise (non-ultrasound)
    noise: float = 0.03
    #: "jpg" (as ROCO) or "png" (lossless)
    image_format: str = "jpg"
    jpeg_quality: int = 95

    def n_for(self, split: str) -> int:
        """Number of pairs in ``split``."""
        return {"train": self.n_train, "validation": self.n_validation, "test": self.n_test}[split]

    def validate(self) -> None:
        """Raise ``ValueError`` for impossible settings."""
        bad = [m for m in self.modalities if m not in {s[0] for s in SCENE_TYPES}]
        if bad or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of xray/ct/mri/ultrasound, got {self.modalities}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if min(self.n_train, self.n_validation, self.n_test) < 0:
            raise ValueError("split sizes must be >= 0")
        if not 0 <= self.p_normal <= 1 or not 0 <= self.p_other_side <= 1:
            raise ValueError("p_normal and p_other_side must be in [0, 1]")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")


def finding_class(spec: SceneSpec) -> int:
    """Index of ``spec``'s finding in :data:`FINDING_CLASSES`.

    Example:
        >>> FINDING_CLASSES[finding_class(SceneSpec("ct", "head", "left", "lower", "large", "hypo"))]
        'left_lower_large_hypo'
        >>> finding_class(SceneSpec("ct", "head"))
        0
    """
    if not spec.has_lesion:
        return 0
    return FINDING_CLASSES.index(f"{spec.side}_{spec.level}_{spec.size}_{spec.density}")


def sample_scene(rng: np.random.Generator, config: SyntheticConfig) -> SceneSpec:
    """Draw a scene type and a finding (uniform over enabled scene types and over the 16 lesion kinds).

    Example:
        >>> s = sample_scene(np.random.default_rng(0), SyntheticConfig(modalities=["mri"]))
        >>> (s.modality, s.region)
        ('mri', 'brain')
    """
    types = [t for t in SCENE_TYPES if t[0] in config.modalities]
    modality, region = types[int(rng.integers(len(types)))]
    if rng.random() < config.p_normal:
        return SceneSpec(modality, region)
    side, level, size, density = (str(a[int(rng.integers(2))]) for a in _ATTRS)
    return SceneSpec(modality, region, side, level, size, density)


def generate_samples(config: SyntheticConfig, split: str, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield samples ``start..stop`` of ``split``: id, image (float32 HxW), caption, spec, label, group, qa, info.

    ``render_seed`` reproduces the image: ``render_scene(spec, size, render_seed, noise=...)``.

    Example:
        >>> s = next(generate_samples(SyntheticConfig(image_size=32), "test"))
        >>> s["id"], s["image"].shape, s["label"] == finding_class(s["spec"])
        ('SYN-test-000000', (32, 32), True)
    """
    config.validate()
    stop = config.n_for(split) if stop is None else stop
    for i in range(start, stop):
        seed = derive_seed(config.seed, "synthetic", split, i)
        rng = np.random.default_rng(seed)
        spec = sample_scene(rng, config)
        render_seed = int(rng.integers(2**31))
        image, info = render_scene(spec, config.image_size, seed=render_seed, noise=config.noise)
        caption = make_caption(spec, rng, config.p_other_side)
        yield {
            "id": f"SYN-{split}-{i:06d}",
            "image": image,
            "caption": caption,
            "spec": spec,
            "label": finding_class(spec),
            "group": "|".join(str(v) for v in dataclasses.astuple(spec)),
            "qa": make_qa(spec, rng),
            "info": info,
            "render_seed": render_seed,
        }


def synthetic_cache_key(config: SyntheticConfig) -> str:
    """Hex hash of the config and generator version (names the cache folder).

    Example:
        >>> synthetic_cache_key(SyntheticConfig()) == synthetic_cache_key(SyntheticConfig())
        True
        >>> synthetic_cache_key(SyntheticConfig(seed=1)) == synthetic_cache_key(SyntheticConfig())
        False
    """
    payload = json.dumps({"version": GENERATOR_VERSION, "config": config_to_dict(config)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$UNIMLIP_CACHE/synthetic``, else ``$XDG_CACHE_HOME/unimlip_kit/synthetic``, else ``~/.cache/...``.

    Example:
        >>> default_cache_dir().name
        'synthetic'
    """
    if os.environ.get("UNIMLIP_CACHE"):
        return Path(os.environ["UNIMLIP_CACHE"]) / "synthetic"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "unimlip_kit" / "synthetic"


def _write_split(root: Path, config: SyntheticConfig, split: str, progress: bool) -> dict[str, Any]:
    from PIL import Image

    folder = root / "data" / split / "radiology"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    n = config.n_for(split)
    samples = generate_samples(config, split)
    if progress:
        from tqdm.auto import tqdm

        samples = tqdm(samples, total=n, desc=f"synthetic {split}", unit="img", leave=False)
    captions, metadata, vqa = [], [], []
    suffix = ".jpg" if config.image_format == "jpg" else ".png"
    for s in samples:
        pix = Image.fromarray(np.round(s["image"] * 255).astype(np.uint8), mode="L")
        name = s["id"] + suffix
        if suffix == ".jpg":
            pix.save(folder / "images" / name, quality=config.jpeg_quality)
        else:
            pix.save(folder / "images" / name)
        captions.append(f"{s['id']}\t{s['caption']}\n")
        spec = s["spec"]
        metadata.append(
            {
                "id": s["id"],
                "label": s["label"],
                "group": s["group"],
                "modality": spec.modality,
                "region": spec.region,
                "finding": FINDING_CLASSES[s["label"]],
                "attributes": dataclasses.asdict(spec),
                "lesion_center_px": s["info"]["lesion_center_px"],
                "render_seed": s["render_seed"],
            }
        )
        for k, q in enumerate(s["qa"]):
            vqa.append({"qid": f"{s['id']}#{k}", "image_id": s["id"], "image": f"data/{split}/radiology/images/{name}", **q})
    (folder / "captions.txt").write_text("".join(captions), encoding="utf-8")
    (folder / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metadata), encoding="utf-8")
    save_json(root / "vqa" / f"{split}.json", vqa)
    return {"pairs": n, "qa": len(vqa)}


def build_synthetic_dataset(
    config: SyntheticConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    progress: bool = False,
    force: bool = False,
) -> Path:
    """Write (or reuse) the synthetic dataset and return its root (pass it to :func:`read_roco`).

    The folder is built under a temporary name and renamed into place, so
    concurrent builders (e.g. several DDP ranks) never see a half-written set.

    Example:
        >>> import tempfile
        >>> cfg = SyntheticConfig(n_train=4, n_validation=2, n_test=2, image_size=32)
        >>> root = build_synthetic_dataset(cfg, tempfile.mkdtemp())
        >>> len(read_roco(root, "train")), build_synthetic_dataset(cfg, root.parent) == root
        (4, True)
    """
    config = config or SyntheticConfig()
    config.validate()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"synthetic-{synthetic_cache_key(config)}"
    if (root / "manifest.json").is_file() and not force:
        return root
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=cache))
    try:
        counts = {split: _write_split(tmp, config, split, progress) for split in SPLITS}
        save_json(tmp / "labels.json", {"finding_classes": list(FINDING_CLASSES), "scene_types": [list(t) for t in SCENE_TYPES]})
        save_json(
            tmp / "manifest.json",
            {"generator_version": GENERATOR_VERSION, "config": config_to_dict(config), "splits": counts},
        )
        if force and root.exists():
            shutil.rmtree(root)
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / "manifest.json").is_file():  # a stale partial folder: replace it
                shutil.rmtree(root, ignore_errors=True)
                os.rename(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_synthetic_records(
    config: SyntheticConfig | None = None,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    *,
    skips: SkipCounter | None = None,
    progress: bool = False,
) -> list[ImageTextRecord]:
    """Build (or reuse) the dataset and read ``split`` through the ROCO reader.

    Example:
        >>> import tempfile
        >>> recs = load_synthetic_records(SyntheticConfig(n_train=3, n_validation=1, n_test=1, image_size=32),
        ...                               "train", tempfile.mkdtemp())
        >>> [r.label >= 0 and r.modality != "unknown" for r in recs]
        [True, True, True]
    """
    root = build_synthetic_dataset(config, cache_dir, progress=progress)
    return read_roco(root, split, skips=skips)


def load_vqa(root: str | os.PathLike, split: str = "test") -> list[dict[str, Any]]:
    """The VQA items of ``split``: ``image_id``, ``image`` (relative to ``root``), ``question``, ``answer``, ...

    Example:
        >>> import tempfile
        >>> root = build_synthetic_dataset(SyntheticConfig(n_train=1, n_validation=1, n_test=2, image_size=32), tempfile.mkdtemp())
        >>> sorted({q["answer_type"] for q in load_vqa(root, "test")})
        ['closed', 'open']
    """
    return load_json(Path(root) / "vqa" / f"{split}.json")
