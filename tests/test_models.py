"""UniMlipModel: attention dispatch, token keeping, fusion masking, the output contract per term, pretrained towers."""

from __future__ import annotations

import pytest
import torch

from unimlip_kit.backends import BackendUnavailableError
from unimlip_kit.losses import UniMlipLoss
from unimlip_kit.models import (
    TERMS,
    FusionEncoder,
    UniMlipModel,
    UniMlipModelConfig,
    attention,
    build_image_tower,
    keep_tokens,
)


def tiny(**kw) -> UniMlipModelConfig:
    base = dict(image_size=32, patch_size=8, vision_width=32, text_width=32, vision_layers=1, text_layers=1,
                vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16, vocab_size=60,
                mask_token_id=4, special_token_ids=[0, 1, 2, 3, 4])
    base.update(kw)
    return UniMlipModelConfig(**base)


def batch(n: int = 6, length: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (n, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, -3:] = 0
    ids[0, -3:] = 0
    return {"images": torch.rand(n, 1, 32, 32, generator=g), "images_view2": torch.rand(n, 1, 32, 32, generator=g),
            "input_ids": ids, "attention_mask": mask, "input_ids_aug": ids.flip(0), "attention_mask_aug": mask.flip(0)}


def naive_attention(q, k, v, key_mask):
    s = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return (torch.softmax(s, -1) @ v.double()).to(q.dtype)


def test_attention_matches_float64_reference_with_padding():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, s, 8, generator=g) for s in (5, 7, 7))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    torch.testing.assert_close(attention(q, k, v, key_padding_mask=mask), naive_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_attention_forcing_xformers_on_cpu_lists_reasons():
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        attention(q, q, q, backend="xformers")
    with pytest.raises(ValueError, match="key_padding_mask"):
        attention(q, q, q, key_padding_mask=torch.ones(1, 3, dtype=torch.bool))


def test_keep_tokens_all_kept_is_the_full_forward_and_subset_shrinks():
    tower = build_image_tower(tiny()).eval()
    x = torch.rand(2, 1, 32, 32)
    full = tower(pixel_values=x).last_hidden_state
    with keep_tokens(tower, torch.arange(16).expand(2, 16)):
        same = tower(pixel_values=x).last_hidden_state
    torch.testing.assert_close(same, full)
    with keep_tokens(tower, torch.tensor([[0, 3], [5, 15]])):
        assert tower(pixel_values=x).last_hidden_state.shape == (2, 3, 32)
    assert tower(pixel_values=x).last_hidden_state.shape == full.shape  # hook removed


def test_fusion_ignores_padded_text_tokens():
    enc = FusionEncoder(width=16, image_width=8, layers=2, heads=2).eval()
    text, image = torch.randn(2, 5, 16), torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    changed = text.clone()
    changed[0, 3:] = 100.0
    a, b = enc(text, mask, image), enc(changed, mask, image)
    torch.testing.assert_close(a[0, :3], b[0, :3])
    torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize("terms", [("itc",), ("image_ssl",), ("text_ssl", "mlm"), ("itm",), TERMS])
def test_forward_returns_exactly_what_the_enabled_terms_need(terms):
    model = UniMlipModel(tiny())
    loss = UniMlipLoss({t: (1.0 if t in terms else 0.0) for t in TERMS})
    out = model(batch(), terms, generator=torch.Generator().manual_seed(0))
    needed = {k for keys in loss.required_keys().values() for k in keys}
    assert needed <= set(out)
    extra = {"image_emb", "text_emb", "logit_scale"} if "itm" in terms else set()  # ITM samples negatives from them
    assert set(out) - needed <= extra
    total, parts = loss(out)
    total.backward()
    assert set(parts) == set(terms)
    assert all(torch.isfinite(v) for v in parts.values())


def test_disabled_terms_skip_their_passes():
    model = UniMlipModel(tiny())
    calls = {"image": 0, "text": 0, "fusion": 0}
    model.image_tower.register_forward_hook(lambda *a: calls.__setitem__("image", calls["image"] + 1))
    model.text_tower.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1))
    model.fusion.register_forward_hook(lambda *a: calls.__setitem__("fusion", calls["fusion"] + 1))
    model(batch(), ("itc",))
    assert calls == {"image": 1, "text": 1, "fusion": 0}
    model(batch(), TERMS, generator=torch.Generator().manual_seed(0))
    assert calls == {"image": 1 + 2, "text": 1 + 3, "fusion": 2}


def test_itm_pairs_and_mlm_are_conditioned_on_the_image():
    model = UniMlipModel(tiny()).eval()
    b = batch()
    out = model(b, ("itm", "mlm"), generator=torch.Generator().manual_seed(1))
    n = b["images"].shape[0]
    assert out["itm_labels"][:n].eq(1).all() and out["itm_labels"][n:].eq(0).all()
    assert out["mlm_labels"].ne(-100).all() and out["mlm_logits"].shape == (out["mlm_labels"].shape[0], 60)
    out = model(b, ("mlm",), generator=torch.Generator().manual_seed(1))
    other = dict(b, images=torch.rand_like(b["images"]))
    out2 = model(other, ("mlm",), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out2["mlm_labels"], out["mlm_labels"])  # same masking from the same generator
    assert not torch.allclose(out2["mlm_logits"], out["mlm_logits"])


def test_token_keeping_changes_only_the_feature_view():
    model = UniMlipModel(tiny(image_keep_ratio=0.25)).eval()
    b = dict(batch(), images_view2=batch()["images"])
    out = model(b, ("itc", "itc_feature"), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(out["image_emb"], out["image_emb_feat"])
    full = UniMlipModel(tiny(image_keep_ratio=1.0)).eval()
    full.load_state_dict(model.state_dict())
    out_full = full(b, ("itc", "itc_feature"))
    torch.testing.assert_close(out_full["image_emb"], out_full["image_emb_feat"])


def test_encoders_are_unit_norm_and_match_forward():
    model = UniMlipModel(tiny()).eval()
    b = batch()
    img, txt = model.encode_image(b["images"]), model.encode_text(b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(6))
    out = model(b, ("itc",))
    torch.testing.assert_close(out["image_emb"], img)
    torch.testing.assert_close(out["text_emb"], txt)


def test_pretrained_towers_load_from_local_folders(tmp_path):
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    ViTModel(ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=24, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=48), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    bert = BertModel(BertConfig(vocab_size=70, hidden_size=40, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=80), add_pooling_layer=False)
    bert.save_pretrained(tmp_path / "bert")
    model = UniMlipModel(tiny(image_model=str(tmp_path / "vit"), text_model=str(tmp_path / "bert")))
    torch.testing.assert_close(model.text_tower.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert model.mlm_head.decoder.out_features == 70
    out = model(batch(), TERMS, generator=torch.Generator().manual_seed(0))  # grey input fed to an RGB tower
    assert out["image_emb_feat"].shape == (6, 16)


def test_bad_config_and_batch_raise():
    with pytest.raises(ValueError, match="logit_scale_max"):
        UniMlipModel(tiny(logit_scale_max=200.0))
    with pytest.raises(ValueError, match="image_keep_ratio"):
        UniMlipModel(tiny(image_keep_ratio=0.0))
    with pytest.raises(ValueError, match="text_pool must be one of 'attn', 'cls', 'mean'"):
        UniMlipModel(tiny(text_pool="max"))
    model = UniMlipModel(tiny())
    with pytest.raises(ValueError, match="unknown loss terms"):
        model(batch(), ("itc", "vqa"))
    with pytest.raises(ValueError, match="input_ids"):
        model({"images": torch.rand(2, 1, 32, 32)}, ("itc",))


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_pooling_matches_float64_reference_and_ignores_padding(pool):
    model = UniMlipModel(tiny(image_pool=pool, text_pool=pool)).eval()
    b = batch()
    hid = model.text_hidden(b["input_ids"], b["attention_mask"]).double()
    m = b["attention_mask"].double()
    ref = hid[:, 0] if pool == "cls" else torch.stack([hid[i][m[i] > 0].mean(0) for i in range(len(m))])
    torch.testing.assert_close(model.pool_text(hid.float(), b["attention_mask"]).double(), ref, atol=1e-6, rtol=1e-6)
    toks = model.image_tokens(b["images"]).double()
    ref_img = toks[:, 0] if pool == "cls" else toks[:, 1:].mean(1)
    torch.testing.assert_close(model.pool_image(toks.float()).double(), ref_img, atol=1e-6, rtol=1e-6)
    # padding a caption further changes nothing: its embedding depends on its real tokens only
    ids, mask = b["input_ids"][1:2], b["attention_mask"][1:2]
    padded_ids = torch.cat([ids, torch.zeros(1, 4, dtype=ids.dtype)], 1)
    padded_mask = torch.cat([mask, torch.zeros(1, 4, dtype=mask.dtype)], 1)
    torch.testing.assert_close(model.encode_text(padded_ids, padded_mask), model.encode_text(ids, mask), atol=1e-5, rtol=1e-5)


def test_siglip_model_returns_its_learnable_bias_and_the_itc_term_equals_a_float64_loop(tmp_path):
    """logit_bias_init builds SigLIP's bias; the itc term on the model's outputs equals a naive pair loop / N."""
    import math

    from unimlip_kit.losses import UniMlipLoss

    assert "logit_bias" not in UniMlipModel(tiny())(batch(), ["itc"])  # InfoNCE models have no bias
    torch.manual_seed(0)
    model = UniMlipModel(tiny(logit_bias_init=-10.0))
    out = model(batch(), ["itc", "itc_feature"])
    assert float(out["logit_bias"].detach()) == -10.0 and out["logit_bias"].requires_grad
    w = {"image_ssl": 0, "text_ssl": 0, "itm": 0, "mlm": 0}
    total, terms = UniMlipLoss(weights=w, itc_loss="siglip")(out)
    a, b = out["image_emb"].double().tolist(), out["text_emb"].double().tolist()
    s, beta = float(out["logit_scale"].detach()), -10.0
    ref = 0.0
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            t = -(1.0 if i == j else -1.0) * (s * sum(x * y for x, y in zip(ai, bj)) + beta)
            ref += max(t, 0.0) + math.log1p(math.exp(-abs(t)))  # softplus(-z L)
    assert float(terms["itc"]) == pytest.approx(ref / len(a), rel=1e-5)
    total.backward()
    assert model.logit_bias.bias.grad is not None and float(model.logit_bias.bias.grad) != 0.0
    with torch.no_grad():
        model.logit_bias.bias.fill_(-3.5)
    model.save_pretrained(str(tmp_path / "m"))
    loaded = UniMlipModel.from_pretrained(str(tmp_path / "m"))
    assert loaded.config.logit_bias_init == -10.0 and float(loaded.logit_bias()) == -3.5
