"""Image towers behind one interface (ViT, ResNet, ConvNeXt), pooling, and the fusion's global tokens."""

from __future__ import annotations

import math

import pytest
import torch

from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
from unimlip_kit.models.pooling import AttentionPool, TokenPool
from unimlip_kit.models.towers import ImageTower, build_image_tower


def tiny(**kw) -> UniMlipModelConfig:
    base = dict(image_size=32, patch_size=8, vision_width=32, text_width=32, vision_layers=1, text_layers=1,
                vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16, vocab_size=60,
                mask_token_id=4, special_token_ids=[0, 1, 2, 3, 4], cnn_hidden_sizes=[8, 16], cnn_depths=[1, 1])
    base.update(kw)
    return UniMlipModelConfig(**base)


@pytest.mark.parametrize("kind,grid", [("resnet", 4), ("convnext", 4)])
def test_cnn_tower_tokens_are_the_feature_map_row_major_plus_positions(kind, grid):
    cfg = tiny(image_tower=kind)
    tower = ImageTower(build_image_tower(cfg), cfg.image_size, cfg.image_channels).eval()
    x = torch.rand(3, 1, 32, 32)
    fmap = tower.backbone(pixel_values=x).last_hidden_state  # (B, C, h, w)
    assert fmap.shape[2:] == (grid, grid) and not tower.has_cls and tower.num_patches == grid * grid
    tokens = tower(x)
    b, c = 1, 2  # row 1, column 2 of the map is token 1 * w + 2
    torch.testing.assert_close(tokens[:, b * grid + c], fmap[:, :, b, c] + tower.position[0, b * grid + c])
    keep = torch.tensor([[0, 5], [3, 15], [7, 7]])
    kept = tower(x, keep_index=keep)
    torch.testing.assert_close(kept, torch.stack([tokens[i, keep[i]] for i in range(3)]))


def test_cnn_tower_rejects_an_image_size_it_was_not_built_for():
    cfg = tiny(image_tower="resnet")
    tower = ImageTower(build_image_tower(cfg), cfg.image_size, 1)
    with pytest.raises(ValueError, match="model.image_size"):
        tower(torch.rand(1, 1, 64, 64))


def test_unknown_tower_and_cls_pooling_on_a_cnn_raise():
    with pytest.raises(ValueError, match="image_tower must be one of"):
        build_image_tower(tiny(image_tower="vgg"))
    with pytest.raises(ValueError, match="needs a ViT-like tower"):
        UniMlipModel(tiny(image_tower="resnet", image_pool="cls"))


def naive_attention_pool(pool: AttentionPool, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 re-derivation: LN(tokens) -> per-head softmax(q k^T / sqrt(d)) v -> out proj -> mean over queries -> LN."""
    d = lambda t: t.detach().double()
    ln = torch.nn.functional.layer_norm
    w = tokens.shape[-1]
    h = pool.attn.heads
    x = ln(tokens.double(), (w,), d(pool.norm_tokens.weight), d(pool.norm_tokens.bias))
    q = d(pool.query) @ d(pool.attn.q.weight).T + d(pool.attn.q.bias)
    kv = x @ d(pool.attn.kv.weight).T + d(pool.attn.kv.bias)
    k, v = kv[..., :w], kv[..., w:]
    outs = []
    for i in range(tokens.shape[0]):
        heads = []
        for j in range(h):
            sl = slice(j * w // h, (j + 1) * w // h)
            s = q[:, sl] @ k[i, :, sl].T / math.sqrt(w // h)
            s = s.masked_fill(~mask[i][None, :], float("-inf"))
            heads.append(torch.softmax(s, -1) @ v[i, :, sl])
        y = torch.cat(heads, -1) @ d(pool.attn.out.weight).T + d(pool.attn.out.bias)
        outs.append(y.mean(0))
    y = torch.stack(outs)
    return ln(y, (w,), d(pool.norm_out.weight), d(pool.norm_out.bias))


def test_attention_pool_matches_a_float64_reference_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    pool = AttentionPool(16, heads=4, queries=3)
    tokens = torch.randn(4, 7, 16, generator=g)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 2:] = False
    torch.testing.assert_close(pool(tokens, mask).double(), naive_attention_pool(pool, tokens, mask), atol=1e-5, rtol=1e-5)


def test_attention_pooling_sees_position_where_a_mean_cannot():
    """Swapping two tokens leaves the mean unchanged; with position embeddings added, attention pooling differs."""
    cfg = tiny(image_tower="resnet", image_pool="attn")
    model = UniMlipModel(cfg).eval()
    tokens = model.image_tokens(torch.rand(1, 1, 32, 32))
    swapped = tokens.clone()
    swapped[:, [0, 15]] = tokens[:, [15, 0]] - model.image_tower.position[:, [15, 0]] + model.image_tower.position[:, [0, 15]]
    mean = TokenPool("mean", 16)
    torch.testing.assert_close(mean(tokens - model.image_tower.position), mean(swapped - model.image_tower.position))
    assert not torch.allclose(model.pool_image(tokens), model.pool_image(swapped))


@pytest.mark.parametrize("kind,pool", [("resnet", "attn"), ("resnet", "mean"), ("convnext", "attn"), ("vit", "attn")])
def test_every_tower_and_pooling_feeds_every_term(kind, pool):
    from unimlip_kit.losses import UniMlipLoss

    model = UniMlipModel(tiny(image_tower=kind, image_pool=pool, image_keep_ratio=0.5))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (6, 9), generator=g)
    batch = {"images": torch.rand(6, 1, 32, 32, generator=g), "images_view2": torch.rand(6, 1, 32, 32, generator=g),
             "input_ids": ids, "attention_mask": torch.ones(6, 9, dtype=torch.long),
             "input_ids_aug": ids.flip(0), "attention_mask_aug": torch.ones(6, 9, dtype=torch.long)}
    out = model(batch, generator=torch.Generator().manual_seed(1))
    total, terms = UniMlipLoss({"itm": 1.0, "mlm": 1.0})(out)
    total.backward()
    assert torch.isfinite(total) and set(terms) >= {"itc", "itm", "mlm", "image_ssl"}
    assert model.image_tower.backbone.parameters().__next__().grad is not None


def test_fuse_with_global_tokens_puts_the_pooled_features_first():
    model = UniMlipModel(tiny(image_tower="resnet", image_pool="attn", fusion_global=True)).eval()
    seen = {}
    model.fusion.register_forward_hook(lambda m, args, out: seen.update(text=args[0], image=args[2]))
    img = model.image_tokens(torch.rand(2, 1, 32, 32))
    ids, mask = torch.randint(5, 60, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    hid = model.text_hidden(ids, mask)
    model.fuse(hid, mask, img)
    torch.testing.assert_close(seen["image"][:, 0], model.pool_image(img))
    torch.testing.assert_close(seen["image"][:, 1:], img)
    torch.testing.assert_close(seen["text"][:, 0], model.pool_text(hid, mask))
    torch.testing.assert_close(seen["text"][:, 1:], hid[:, 1:])
    plain = UniMlipModel(tiny(fusion_global=False)).eval()
    plain.fusion.register_forward_hook(lambda m, args, out: seen.update(text=args[0], image=args[2]))
    img = plain.image_tokens(torch.rand(2, 1, 32, 32))
    plain.fuse(plain.text_hidden(ids, mask), mask, img)
    assert seen["image"].shape == img.shape
