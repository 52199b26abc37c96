"""retrieval_metrics / retrieval_ranks against hand-computed cases and a naive float64 full-matrix reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimlip_kit.eval import retrieval_metrics, retrieval_ranks, summarize_ranks


def naive_ranks(img: torch.Tensor, txt: torch.Tensor, g: list[int], normalize: bool) -> tuple[list[int], list[int]]:
    """Textbook definition, one query at a time, on the full float64 matrix (ties count against the query)."""
    a, b = img.double(), txt.double()
    if normalize:
        a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
        b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    s = (a @ b.T).tolist()
    n_img, n_txt = len(s), len(g)
    t2i = []
    for j in range(n_txt):
        c = s[g[j]][j]
        t2i.append(1 + sum(1 for i in range(n_img) if i != g[j] and s[i][j] >= c))
    i2t = []
    for i in range(n_img):
        mine = [j for j in range(n_txt) if g[j] == i]
        if not mine:
            i2t.append(0)
            continue
        c = max(s[i][j] for j in mine)
        i2t.append(1 + sum(1 for j in range(n_txt) if g[j] != i and s[i][j] >= c))
    return i2t, t2i


def test_hand_computed_ties_count_against_query():
    # image 0 = e0, image 1 = e1; text 0 -> image 0 (= e0), text 1 -> image 1 but equals e0, text 2 -> image 1 (= e1)
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    i2t, t2i = retrieval_ranks(img, txt, text_to_image=[0, 1, 1])
    # image 0: correct text 0 scores 1, wrong text 1 also scores 1 (tie -> against) -> rank 2
    # image 1: best correct text 2 scores 1, wrong text 0 scores 0 -> rank 1
    assert i2t.tolist() == [2, 1]
    # text 1: correct image 1 scores 0, image 0 scores 1 -> rank 2
    assert t2i.tolist() == [1, 2, 1]
    m = retrieval_metrics(img, txt, text_to_image=[0, 1, 1], ks=(1, 2))
    assert m["i2t"] == {"R@1": 0.5, "R@2": 1.0, "median_rank": 1.5, "mean_rank": 1.5, "n_queries": 2}
    assert m["t2i"]["R@1"] == pytest.approx(2 / 3) and m["t2i"]["median_rank"] == 1.0


def test_collapsed_embeddings_rank_last():
    n = 5
    m = retrieval_metrics(torch.ones(n, 4), torch.ones(n, 4), ks=(1, 5))
    for d in ("i2t", "t2i"):
        assert m[d]["R@1"] == 0.0 and m[d]["R@5"] == 1.0 and m[d]["median_rank"] == n


def test_single_pair():
    m = retrieval_metrics(torch.randn(1, 3), torch.randn(1, 3))
    for d in ("i2t", "t2i"):
        assert m[d] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "mean_rank": 1.0, "n_queries": 1}


def test_more_texts_than_images_any_caption_counts():
    # 2 images, 5 captions; image 0's first caption is bad but its second is perfect
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [0.2, 0.8]])
    g = [0, 0, 1, 1, 1]
    i2t, t2i = retrieval_ranks(img, txt, text_to_image=g)
    # image 0: best own caption (text 1) scores 1.0; no other caption beats it -> rank 1
    # image 1: best own caption (text 3, cos 0.994) is beaten only by text 0 (1.0) -> rank 2
    assert i2t.tolist() == [1, 2]
    # text 0 (-> image 0) points at image 1; text 2 (-> image 1) points at image 0
    assert t2i.tolist() == [2, 1, 2, 1, 1]


def test_image_without_caption_is_not_a_query():
    img = torch.eye(3)
    txt = torch.eye(3)[[0, 2]]
    i2t, t2i = retrieval_ranks(img, txt, text_to_image=[0, 2])
    assert i2t.tolist() == [1, 0, 1] and t2i.tolist() == [1, 1]
    assert retrieval_metrics(img, txt, text_to_image=[0, 2])["i2t"]["n_queries"] == 2


def test_median_even_and_odd():
    assert summarize_ranks(torch.tensor([4, 1, 2]))["median_rank"] == 2.0
    assert summarize_ranks(torch.tensor([4, 1, 2, 7]))["median_rank"] == 3.0
    assert math.isnan(summarize_ranks(torch.tensor([0, 0]))["R@1"])


@settings(max_examples=25, deadline=None)
@given(
    n_img=st.integers(1, 23),
    extra=st.integers(0, 30),
    d=st.integers(1, 6),
    chunk=st.integers(1, 9),
    levels=st.sampled_from([2, 3, 100]),
    normalize=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_chunked_matches_naive_float64(n_img, extra, d, chunk, levels, normalize, seed):
    gen = torch.Generator().manual_seed(seed)
    # few integer levels -> many exact ties; 100 levels -> mostly distinct scores
    img = torch.randint(-levels // 2, levels // 2 + 1, (n_img, d), generator=gen).double()
    n_txt = n_img + extra
    txt = torch.randint(-levels // 2, levels // 2 + 1, (n_txt, d), generator=gen).double()
    g = torch.randint(0, n_img, (n_txt,), generator=gen)
    want_i, want_t = naive_ranks(img, txt, g.tolist(), normalize=False)
    got_i, got_t = retrieval_ranks(img, txt, text_to_image=g, chunk_size=chunk, normalize=False)
    assert got_i.tolist() == want_i and got_t.tolist() == want_t
    if normalize:  # continuous data: chunked float32 == naive float64 away from near-ties
        a = torch.randn(n_img, d + 3, generator=gen)
        b = a[g] + 0.8 * torch.randn(n_txt, d + 3, generator=gen)
        want_i, want_t = naive_ranks(a, b, g.tolist(), normalize=True)
        got_i, got_t = retrieval_ranks(a, b, text_to_image=g, chunk_size=chunk)
        assert got_i.tolist() == want_i and got_t.tolist() == want_t


def test_chunk_size_does_not_change_result_and_float32_duplicates_tie():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(50, 16, generator=gen)
    a[10] = a[3]  # duplicated image: text 3 and text 10 both tie across images 3 and 10
    b = a + 0.5 * torch.randn(50, 16, generator=gen)
    ref = retrieval_ranks(a, b, chunk_size=1000)
    for c in (1, 7, 16, 49):
        got = retrieval_ranks(a, b, chunk_size=c)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert ref[1][3] >= 2 and ref[1][10] >= 2


def test_half_precision_input():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(20, 8, generator=gen)
    b = a + 0.3 * torch.randn(20, 8, generator=gen)
    m32 = retrieval_metrics(a, b)
    m16 = retrieval_metrics(a.bfloat16(), b.bfloat16())
    assert set(m16) == {"i2t", "t2i"} and 0.0 <= m16["i2t"]["R@1"] <= 1.0
    assert m32["i2t"]["R@10"] >= m32["i2t"]["R@1"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_emb=torch.zeros(3, 2), text_emb=torch.zeros(4, 2)), "text_to_image"),
        (dict(image_emb=torch.zeros(3, 2), text_emb=torch.zeros(3, 5)), "embedding dimension"),
        (dict(image_emb=torch.zeros(3, 2), text_emb=torch.zeros(2, 2), text_to_image=[0, 3]), r"\[0, 3\)"),
        (dict(image_emb=torch.zeros(3, 2), text_emb=torch.zeros(2, 2), text_to_image=[0]), "shape"),
        (dict(image_emb=torch.zeros(3, 2), text_emb=torch.zeros(3, 2), chunk_size=0), "chunk_size"),
        (dict(image_emb=torch.zeros(3, 2), text_emb=torch.zeros(3, 2), ks=(0,)), "ks"),
        (dict(image_emb=torch.full((3, 2), float("nan")), text_emb=torch.zeros(3, 2)), "NaN"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    img, txt = kwargs.pop("image_emb"), kwargs.pop("text_emb")
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(img, txt, **kwargs)
