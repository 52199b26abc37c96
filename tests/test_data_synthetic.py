"""The synthetic benchmark: determinism, cache, caption/attribute/pixel consistency, labels and VQA."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from unimlip_kit.data import (
    FINDING_CLASSES,
    ImageTextDataset,
    SceneSpec,
    SkipCounter,
    SyntheticConfig,
    build_synthetic_dataset,
    finding_class,
    generate_samples,
    load_vqa,
    read_roco,
    render_scene,
)
from unimlip_kit.data.synth_text import DENSITY_WORDS, LEVEL_WORDS

SMALL = SyntheticConfig(n_train=40, n_validation=8, n_test=16, image_size=48, seed=7)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic_dataset(SMALL, tmp_path_factory.mktemp("cache"))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_by_seed(built: Path, tmp_path: Path) -> None:
    again = build_synthetic_dataset(SMALL, tmp_path / "other")
    a, b = _files(built), _files(again)
    assert a == b  # byte-identical images, captions, metadata and VQA
    other = build_synthetic_dataset(dataclasses.replace(SMALL, seed=8), tmp_path / "other")
    assert other != again
    assert (other / "data/train/radiology/captions.txt").read_text() != (again / "data/train/radiology/captions.txt").read_text()


def test_cache_is_reused_and_keyed(built: Path) -> None:
    stamp = (built / "manifest.json").stat().st_mtime_ns
    assert build_synthetic_dataset(SMALL, built.parent) == built
    assert (built / "manifest.json").stat().st_mtime_ns == stamp
    assert build_synthetic_dataset(dataclasses.replace(SMALL, image_size=32), built.parent) != built
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_prefix_stable_when_growing() -> None:
    small = [s["caption"] for s in generate_samples(SMALL, "train", 0, 10)]
    big = [s["caption"] for s in generate_samples(dataclasses.replace(SMALL, n_train=400), "train", 0, 10)]
    assert small == big


def test_reader_path_and_labels(built: Path) -> None:
    skips = SkipCounter()
    recs = {s: read_roco(built, s, skips=skips) for s in ("train", "validation", "test")}
    assert [len(v) for v in recs.values()] == [40, 8, 16] and skips.total == 0
    ids = [r.id for v in recs.values() for r in v]
    assert len(set(ids)) == len(ids)
    for r, s in zip(recs["train"], generate_samples(SMALL, "train")):
        assert r.id == s["id"] and r.caption == s["caption"]
        assert r.label == finding_class(s["spec"]) == FINDING_CLASSES.index(r.meta["finding"])
        assert r.modality == s["spec"].modality and r.group == s["group"]
    ds = ImageTextDataset(recs["test"], image_size=48)
    batch = ds.collate_fn([ds[i] for i in range(len(ds))])
    # same attribute signature <=> same group id
    g = batch["group_ids"].tolist()
    sig = [r.group for r in recs["test"]]
    assert all((g[i] == g[j]) == (sig[i] == sig[j]) or batch["captions"][i].lower() == batch["captions"][j].lower()
               for i in range(len(g)) for j in range(len(g)))


def test_disk_images_match_render(built: Path) -> None:
    recs = read_roco(built, "validation")
    ds = ImageTextDataset(recs, image_size=None)
    for r, s in zip(recs, generate_samples(SMALL, "validation")):
        img = ds[recs.index(r)]["image"][0].numpy()
        assert img.shape == (48, 48)
        assert float(np.abs(img - s["image"]).mean()) < 0.02  # JPEG q95 of the rendered array


_OTHER = re.compile(r" The (left|right) side is unremarkable\.$")


def _stated_side(caption: str) -> tuple[str | None, str | None]:
    m = _OTHER.search(caption)
    main = _OTHER.sub("", caption)
    sides = set(re.findall(r"\b(left|right)\b", main))
    assert len(sides) <= 1, caption
    return (sides.pop() if sides else None), (m.group(1) if m else None)


def test_caption_states_attributes_and_laterality_matches_pixels() -> None:
    cfg = dataclasses.replace(SMALL, p_normal=0.1, p_other_side=0.5)
    n_lesions = 0
    for s in generate_samples(cfg, "train", 0, 120):
        spec, cap = s["spec"], s["caption"]
        side, other = _stated_side(cap)
        assert spec.modality and spec.region
        if not spec.has_lesion:
            assert side is None and other is None and re.search(r"\bno\b|without", cap.lower()), cap
            continue
        n_lesions += 1
        assert side == spec.side and other in (None, "left" if side == "right" else "right"), cap
        assert LEVEL_WORDS[(spec.modality, spec.region)][0 if spec.level == "upper" else 1] in cap, cap
        hyper, hypo = DENSITY_WORDS[spec.modality]
        density_words = {"hyper": (hyper, "opacity", "dense mass"), "hypo": (hypo, "lucen", "cavity")}
        has = lambda words: any(re.search(rf"\b{w}", cap) for w in words)  # noqa: E731
        assert has(density_words[spec.density]), cap
        assert not has(density_words["hypo" if spec.density == "hyper" else "hyper"]), cap
        size_words = {"small": ("small", "tiny", "little"), "large": ("large", "big", "sizeable", "bulky")}
        assert any(re.search(rf"\b{w}\b", cap.lower()) for w in size_words[spec.size]), cap
        # pixel mass of the lesion = rendered image minus the same scene without it
        without, _ = render_scene(spec, cfg.image_size, s["render_seed"], with_lesion=False, noise=cfg.noise)
        diff = np.abs(s["image"] - without).astype(np.float64)
        assert diff.sum() > 1.0, cap  # the lesion is visible
        cols = np.arange(diff.shape[1]) + 0.5
        col_mass = float((diff.sum(0) * cols).sum() / diff.sum())
        # radiological convention: patient right on image left
        assert (col_mass < diff.shape[1] / 2) == (spec.side == "right"), (cap, col_mass)
        rows = np.arange(diff.shape[0]) + 0.5
        row_mass = float((diff.sum(1) * rows).sum() / diff.sum())
        assert (row_mass < diff.shape[0] / 2) == (spec.level == "upper"), (cap, row_mass)
        assert abs(s["info"]["lesion_center_px"][1] + 0.5 - col_mass) < 3.0
        sign = np.sign((s["image"] - without)[diff > 0.05].mean())
        assert sign == (1 if spec.density == "hyper" else -1), cap
    assert n_lesions > 80


def test_flip_changes_the_side_the_pixels_say() -> None:
    spec = SceneSpec("xray", "chest", "left", "lower", "large", "hyper")
    img, info = render_scene(spec, 64, seed=3)
    without, _ = render_scene(spec, 64, seed=3, with_lesion=False)
    diff = np.abs(img - without)[:, ::-1]  # horizontal flip
    col_mass = float((diff.sum(0) * (np.arange(64) + 0.5)).sum() / diff.sum())
    assert col_mass < 32  # flipped left lesion now sits where a right lesion would: the caption must swap too


def test_vqa_answers_follow_attributes(built: Path) -> None:
    meta = {s["id"]: s["spec"] for s in generate_samples(SMALL, "test")}
    qa = load_vqa(built, "test")
    assert {q["answer_type"] for q in qa} == {"closed", "open"}
    for q in qa:
        spec = meta[q["image_id"]]
        assert (built / q["image"]).is_file()
        if q["question_type"] == "presence":
            assert q["answer"] == ("yes" if spec.has_lesion else "no")
        if q["question_type"] == "side" and q["answer_type"] == "open":
            assert q["answer"] == spec.side
        if q["question_type"] == "side" and q["answer_type"] == "closed":
            asked = "left" if "left" in q["question"] else "right"
            assert q["answer"] == ("yes" if asked == spec.side else "no")
        if q["question_type"] == "size" and q["answer_type"] == "open":
            assert q["answer"] == spec.size
        if q["question_type"] == "region":
            assert q["answer"] == spec.region


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="modalities"):
        list(generate_samples(SyntheticConfig(modalities=["pet"]), "train", 0, 1))
    with pytest.raises(ValueError, match="image_size"):
        SyntheticConfig(image_size=8).validate()
