"""Batch collate: shapes, skipped samples, and group ids against a brute-force closure."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimlip_kit.data import ImageTextCollate, SkippedSample, SkipCounter, group_ids_from_keys, normalize_caption


def _reference_groups(keys: list[list[str]]) -> list[int]:
    """Transitive closure of 'shares a non-empty key' by repeated relaxation (float-free, O(n^3))."""
    n = len(keys)
    same = [[i == j or bool(set(filter(None, keys[i])) & set(filter(None, keys[j]))) for j in range(n)] for i in range(n)]
    for k, i, j in itertools.product(range(n), repeat=3):
        if same[i][k] and same[k][j]:
            same[i][j] = True
    return [min(j for j in range(n) if same[i][j]) for i in range(n)]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["", "a", "b", "c", "d", "e", "f"]), min_size=1, max_size=3), min_size=1, max_size=9))
def test_group_ids_match_closure(keys: list[list[str]]) -> None:
    got = group_ids_from_keys(keys).tolist()
    ref = _reference_groups(keys)
    for i, j in itertools.product(range(len(keys)), repeat=2):
        assert (got[i] == got[j]) == (ref[i] == ref[j])
    # numbered by first appearance: 0, then each new group takes the next integer
    firsts = list(dict.fromkeys(got))
    assert firsts == list(range(len(firsts)))


def _s(i: str, caption: str, image_key: str, group: str = "", label: int = -1) -> dict:
    return {"image": torch.full((1, 3, 3), float(len(i)) / 10), "caption": caption, "id": i,
            "label": label, "group": group, "image_key": image_key, "modality": "ct"}


def test_collate_batch_and_groups() -> None:
    samples = [
        _s("a", "Left lesion.", "a.png", label=3),
        SkippedSample("b", "corrupt_image", "truncated"),
        _s("c", "left  LESION", "c.png"),  # same caption as a (normalised)
        _s("d", "Other.", "a.png"),  # same image as a
        _s("e", "Unique.", "e.png", group="g1"),
        _s("f", "Also unique.", "f.png", group="g1"),  # same explicit group as e
        _s("g", "Alone.", "g.png"),
    ]
    b = ImageTextCollate((1, 3, 3))(samples)
    assert b["ids"] == ["a", "c", "d", "e", "f", "g"]
    assert b["images"].shape == (6, 1, 3, 3) and b["images"].dtype == torch.float32
    assert b["labels"].dtype == torch.long and b["labels"].tolist() == [3, -1, -1, -1, -1, -1]
    assert b["group_ids"].tolist() == [0, 0, 0, 1, 1, 2]
    assert b["skipped"] == [("b", "corrupt_image", "truncated")]
    assert b["modality"] == ["ct"] * 6
    c = SkipCounter()
    c.update_from_batch(b)
    assert c.counts() == {"corrupt_image": 1}


def test_all_skipped_batch_is_empty_not_an_error() -> None:
    b = ImageTextCollate((1, 8, 8))([SkippedSample("x", "missing_image"), None])
    assert b["images"].shape == (0, 1, 8, 8)
    assert b["labels"].shape == (0,) and b["group_ids"].shape == (0,) and b["captions"] == []
    assert [s[:2] for s in b["skipped"]] == [("x", "missing_image"), ("?", "corrupt_image")]


def test_normalize_caption() -> None:
    assert normalize_caption("A  B.\n") == normalize_caption("a b") != normalize_caption("a b c")


def test_epoch_sampler_shards_resume_and_epochs() -> None:
    from unimlip_kit.data import EpochSampler, build_dataloader

    n = 23
    for drop_last in (False, True):
        shards = []
        for r in range(3):
            s = EpochSampler(n, seed=5, rank=r, world_size=3, drop_last=drop_last)
            s.set_epoch(2)
            shards.append(list(s))
            assert len(shards[-1]) == len(s)
        assert len({len(x) for x in shards}) == 1  # equal shards: no rank waits at a collective
        flat = [i for x in shards for i in x]
        if drop_last:
            assert len(flat) == 21 and len(set(flat)) == 21
        else:
            assert set(flat) == set(range(n)) and len(flat) == 24
    a, b = EpochSampler(n, seed=5), EpochSampler(n, seed=5)
    a.set_epoch(0)
    b.set_epoch(1)
    assert sorted(a) == list(range(n)) and list(a) != list(b)
    b.set_epoch(0, start=7)
    assert list(b) == list(a)[7:] and len(b) == n - 7
    ds = [{"image": torch.zeros(1, 2, 2), "caption": f"c{i}", "id": str(i)} for i in range(5)]
    assert len(list(build_dataloader(ds, 2, shuffle=False, persistent_workers=True))) == 3
