"""Gradient checkpointing of the towers: the same gradients (dropout replayed), less saved activation memory."""

from __future__ import annotations

import pytest
import torch

from unimlip_kit.gradcache import grad_cache_step
from unimlip_kit.losses import UniMlipLoss
from unimlip_kit.models import UniMlipModel, UniMlipModelConfig, enable_gradient_checkpointing

TERMS = ("itc", "itc_feature", "image_ssl", "text_ssl", "itm", "mlm")


def cfg(tower: str, **kw) -> UniMlipModelConfig:
    base = dict(image_size=32, patch_size=8, vision_width=32, text_width=32, vision_layers=2, text_layers=2,
                vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16, vocab_size=60,
                mask_token_id=4, special_token_ids=[0, 1, 2, 3, 4], max_text_len=16, image_tower=tower,
                cnn_hidden_sizes=[8, 16], cnn_depths=[2, 1], dropout=0.2, image_keep_ratio=0.5)
    base.update(kw)
    return UniMlipModelConfig(**base)


def batch(n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (n, 10), generator=g)
    ids[:, 0] = 2
    return {"images": torch.rand(n, 1, 32, 32, generator=g), "images_view2": torch.rand(n, 1, 32, 32, generator=g),
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "input_ids_aug": ids.flip(1)}


def checkpointing_on(tower) -> bool:
    name = "is_activation_checkpointing" if hasattr(type(tower), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(tower, name))


def run(model: UniMlipModel, data, saved: list[int] | None = None) -> list[torch.Tensor]:
    """One step of every term, seeded; ``saved`` collects the bytes autograd keeps for backward."""
    torch.manual_seed(3)

    def pack(t: torch.Tensor) -> torch.Tensor:
        if saved is not None:
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, _ = UniMlipLoss()(model(data, TERMS, generator=torch.Generator().manual_seed(4)))
    total.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("tower", ["vit", "resnet", "convnext"])
def test_checkpointed_towers_give_the_same_gradients_with_less_saved_memory(tower):
    torch.manual_seed(0)
    plain = UniMlipModel(cfg(tower))
    ckpt = UniMlipModel(cfg(tower, gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    assert list(plain.state_dict()) == list(ckpt.state_dict())  # checkpointing changes no key
    data = batch()
    saved_plain: list[int] = []
    saved_ckpt: list[int] = []
    want = run(plain, data, saved_plain)
    got = run(ckpt, data, saved_ckpt)
    scale = max(float(w.abs().max()) for w in want)
    for (name, _), a, b in zip(plain.named_parameters(), got, want):
        assert float((a - b).abs().max()) <= 1e-5 * scale, name
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers()):  # BatchNorm statistics updated once
        assert torch.allclose(a.float(), b.float()), name
    assert sum(saved_ckpt) < 0.8 * sum(saved_plain), (sum(saved_ckpt), sum(saved_plain))


def test_disable_restores_the_plain_towers_and_eval_runs_plainly():
    torch.manual_seed(0)
    model = UniMlipModel(cfg("resnet", gradient_checkpointing=True))
    stage = model.image_tower.backbone.encoder.stages[0]
    assert "forward" in vars(stage)
    assert enable_gradient_checkpointing(model, enabled=False) == {"image": "2 CNN stages", "text": "transformers layers"}
    assert "forward" not in vars(stage) and not checkpointing_on(model.text_tower)
    enable_gradient_checkpointing(model)
    enable_gradient_checkpointing(model)  # twice is once
    assert checkpointing_on(model.text_tower)
    model.eval()
    with torch.no_grad():
        assert model.encode_image(torch.rand(2, 1, 32, 32)).shape == (2, 16)


def test_checkpointing_composes_with_gradient_caching():
    """grad_cache_step on a checkpointed model: the replay's towers recompute in backward, same gradients."""
    data = batch(12)
    micro = [{k: v[i * 4:(i + 1) * 4] for k, v in data.items()} for i in range(3)]
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = UniMlipModel(cfg("vit", gradient_checkpointing=flag))
        torch.manual_seed(9)
        grad_cache_step(model, UniMlipLoss(), micro, generator=torch.Generator().manual_seed(1))
        grads.append([p.grad for p in model.parameters()])
    scale = max(float(g.abs().max()) for g in grads[0])
    assert all(float((a - b).abs().max()) <= 1e-5 * scale for a, b in zip(*grads))


def test_a_tower_without_checkpointing_is_named():
    model = UniMlipModel(cfg("vit"))
    model.text_tower = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="text tower Linear supports no gradient checkpointing"):
        enable_gradient_checkpointing(model)
    with pytest.raises(ValueError, match="has no image_tower/text_tower"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))
