"""ITC, NT-Xent and SimCSE against independent float64 implementations of the published losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from strategies import embedding_pairs
from unimlip_kit.losses import (
    ImageTextContrastiveLoss,
    LogitScale,
    NTXentLoss,
    SimCSELoss,
    image_text_contrastive_loss,
    info_nce,
    nt_xent_loss,
    simcse_loss,
)

# ---------------------------------------------------------------- independent references (float64)


def clip_reference(img, txt, scale, label_smoothing=0.0):
    """CLIP (Radford et al. 2021, Fig. 3 pseudo-code): symmetric cross-entropy over scaled logits."""
    logits = scale * img @ txt.T
    labels = torch.arange(len(img))
    i2t = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    t2i = F.cross_entropy(logits.T, labels, label_smoothing=label_smoothing)
    return (i2t + t2i) / 2, i2t, t2i


def ntxent_reference(z1, z2, temperature):
    """SimCLR (Chen et al. 2020, Alg. 1) written as an explicit double loop over the 2N anchors."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = len(z)
    n = n2 // 2
    total = z.new_zeros(())
    for i in range(n2):
        pos = (i + n) % n2
        denom = sum(torch.exp(z[i] @ z[k] / temperature) for k in range(n2) if k != i)
        total = total - torch.log(torch.exp(z[i] @ z[pos] / temperature) / denom)
    return total / n2


def simcse_reference(h1, h2, temperature):
    """Unsupervised SimCSE (Gao et al. 2021, Eq. 1): cosine similarity / tau, positives on the diagonal."""
    sim = F.cosine_similarity(h1[:, None, :], h2[None, :, :], dim=-1) / temperature
    return F.cross_entropy(sim, torch.arange(len(h1)))


# ---------------------------------------------------------------- ITC


@given(embedding_pairs(), st.sampled_from([0.0, 0.1]))
def test_itc_matches_clip_reference(small_tiles, pair, smoothing):
    img, txt, scale = pair
    img.requires_grad_(True)
    txt.requires_grad_(True)
    s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    out = image_text_contrastive_loss(img, txt, s, label_smoothing=smoothing, return_terms=True)
    ref = clip_reference(img, txt, s, smoothing)
    for x, y in zip(out, ref):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
    got = torch.autograd.grad(out.loss, [img, txt, s])
    want = torch.autograd.grad(ref[0], [img, txt, s])
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-9)


@given(embedding_pairs(max_n=12, max_d=8))
def test_itc_symmetric_under_swapping_modalities(pair):
    img, txt, scale = pair
    a = image_text_contrastive_loss(img, txt, scale, return_terms=True)
    b = image_text_contrastive_loss(txt, img, scale, return_terms=True)
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.row_loss, b.col_loss)


@given(embedding_pairs(max_n=12, max_d=8), st.integers(0, 2**31 - 1))
def test_itc_invariant_to_permuting_pairs(pair, seed):
    img, txt, scale = pair
    perm = torch.randperm(len(img), generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(
        image_text_contrastive_loss(img, txt, scale), image_text_contrastive_loss(img[perm], txt[perm], scale)
    )


def test_itc_module_equals_function_and_backends_agree():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randn(10, 6, generator=g, dtype=torch.float64)
    mod = ImageTextContrastiveLoss(label_smoothing=0.2)
    fn = image_text_contrastive_loss(img, txt, 4.0, label_smoothing=0.2)
    torch.testing.assert_close(mod(img, txt, 4.0), fn)
    torch.testing.assert_close(
        image_text_contrastive_loss(img, txt, 4.0, backend="reference"),
        image_text_contrastive_loss(img, txt, 4.0, backend="tiled"),
    )


def test_itc_finite_at_scale_100_float32_and_learnable_scale_gets_gradient():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(64, 32, generator=g), dim=1)
    txt = -img.clone()
    scale = LogitScale(init=100.0)
    loss = image_text_contrastive_loss(img, txt, scale())
    loss.backward()
    assert torch.isfinite(loss)
    ref = clip_reference(img.double(), txt.double(), 100.0)[0]
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-4)
    assert scale.log_scale.grad is not None and torch.isfinite(scale.log_scale.grad)


def test_logit_scale_is_clamped():
    s = LogitScale(init=50.0, max_scale=100.0)
    with torch.no_grad():
        s.log_scale.fill_(20.0)
    assert float(s().detach()) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="exceeds max_scale"):
        LogitScale(init=200.0)


@pytest.mark.parametrize(
    "img, txt, match",
    [
        (torch.ones(3, 4), torch.ones(2, 4), r"image_emb and text_emb must have the same batch size N.*\(3, 4\).*\(2, 4\)"),
        (torch.ones(3, 4), torch.ones(3, 2), r"same embedding dimension D"),
        (torch.ones(2, 3, 4), torch.ones(2, 4), r"image_emb must be a 2-D"),
        (torch.ones(0, 4), torch.ones(0, 4), r"image_emb is an empty batch"),
        (torch.full((2, 2), float("nan")), torch.ones(2, 2), r"image_emb contains NaN"),
    ],
)
def test_itc_bad_inputs(img, txt, match):
    with pytest.raises(ValueError, match=match):
        image_text_contrastive_loss(img, txt, 1.0)


def test_label_smoothing_out_of_range():
    with pytest.raises(ValueError, match="label_smoothing"):
        ImageTextContrastiveLoss(label_smoothing=1.0)


# ---------------------------------------------------------------- NT-Xent and SimCSE


@given(embedding_pairs(max_n=9, max_d=20), st.floats(0.05, 1.0))
def test_ntxent_matches_simclr_reference(small_tiles, pair, temperature):
    z1, z2, _ = pair
    z1.requires_grad_(True)
    ref = ntxent_reference(z1, z2, temperature)
    got = nt_xent_loss(z1, z2, temperature)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.autograd.grad(got, z1)[0], torch.autograd.grad(ref, z1)[0], rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(NTXentLoss(temperature)(z1, z2), got)


@given(embedding_pairs(max_n=20, max_d=40), st.floats(0.02, 1.0), st.booleans())
def test_simcse_matches_reference(small_tiles, pair, temperature, symmetric):
    h1, h2, _ = pair
    h1.requires_grad_(True)
    ref = simcse_reference(h1, h2, temperature)
    if symmetric:
        ref = (ref + simcse_reference(h2, h1, temperature)) / 2
    got = simcse_loss(h1, h2, temperature, symmetric=symmetric)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.autograd.grad(got, h1)[0], torch.autograd.grad(ref, h1)[0], rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(SimCSELoss(temperature, symmetric)(h1, h2), got)


@pytest.mark.parametrize("cls", [NTXentLoss, SimCSELoss])
@pytest.mark.parametrize("t", [0.0, -0.1, float("inf")])
def test_non_positive_temperature(cls, t):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        cls(temperature=t)
    with pytest.raises(ValueError, match="temperature"):
        (nt_xent_loss if cls is NTXentLoss else simcse_loss)(torch.ones(2, 2), torch.ones(2, 2), t)


def test_info_nce_offset_and_validation():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g, dtype=torch.float64)
    out = info_nce(a, b, 2.0, positive_offset=3, symmetric=False)
    ref = F.cross_entropy(2.0 * a @ b.T, torch.arange(4) + 3)
    torch.testing.assert_close(out.loss, ref)
    with pytest.raises(ValueError, match="positive_offset"):
        info_nce(a, b, 2.0, positive_offset=9, symmetric=False)
    with pytest.raises(ValueError, match="same batch size"):
        info_nce(a, b, 2.0)
