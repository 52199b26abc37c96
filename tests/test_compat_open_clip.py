"""unimlip_kit.compat.open_clip inside open_clip's own training step, against open_clip's loss and a float64 reference.

``train_step`` is the loss part of ``open_clip_train.train.train_one_epoch`` (``accum_freq == 1``)
line for line; only the loss object differs. open_clip's package imports torchvision, so its
``loss.py`` is loaded from the installed file (tests/peers.py); those comparisons skip without it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from peers import open_clip_loss_module
from torch import nn

from unimlip_kit.compat.open_clip import ClipLoss, SigLipLoss, create_loss

D_IN, VOCAB, D = 6, 11, 5


class TinyCLIP(nn.Module):
    """The output contract of open_clip's ``CLIP.forward``: normalised features, exp'd scale, optional bias."""

    def __init__(self, init_logit_bias: float | None = None, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.visual = nn.Parameter(torch.randn(D, D_IN, generator=g, dtype=torch.float64))
        self.token_embedding = nn.Parameter(torch.randn(VOCAB, D, generator=g, dtype=torch.float64))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), dtype=torch.float64))
        self.logit_bias = (nn.Parameter(torch.tensor(init_logit_bias, dtype=torch.float64))
                           if init_logit_bias is not None else None)

    def forward(self, image, text):
        image_features = F.normalize(image @ self.visual.T, dim=-1)
        text_features = F.normalize(self.token_embedding[text].mean(1), dim=-1)
        out = {"image_features": image_features, "text_features": text_features, "logit_scale": self.logit_scale.exp()}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


def train_step(model, loss, images, texts, optimizer):
    """open_clip_train.train.train_one_epoch, the accum_freq == 1 branch (fp32, no distillation)."""
    optimizer.zero_grad()
    model_out = model(images, texts)
    logit_scale = model_out["logit_scale"]  # noqa: F841 - read as open_clip does (for logging)
    losses = loss(**model_out, output_dict=True)
    total_loss = sum(losses.values())
    losses["loss"] = total_loss
    total_loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return {k: v.detach() for k, v in losses.items()}


class NaiveClip(nn.Module):
    """CLIP's loss with the N×N logits, written out (float64 reference)."""

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        logits = logit_scale * image_features @ text_features.T
        labels = torch.arange(logits.shape[0])
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        return {"contrastive_loss": loss} if output_dict else loss


class NaiveSigLip(nn.Module):
    """SigLIP's loss written out: -Σ log σ(z (s x·y + b)) / N (float64 reference)."""

    def forward(self, image_features, text_features, logit_scale, logit_bias, output_dict=False):
        logits = logit_scale * image_features @ text_features.T + logit_bias
        z = 2 * torch.eye(logits.shape[0], dtype=logits.dtype) - 1
        loss = -F.logsigmoid(z * logits).sum() / logits.shape[0]
        return {"contrastive_loss": loss} if output_dict else loss


def _batches(n, steps=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, D_IN, generator=g, dtype=torch.float64), torch.randint(0, VOCAB, (n, 4), generator=g))
            for _ in range(steps)]


def _train(loss, siglip):
    model = TinyCLIP(init_logit_bias=-10.0 if siglip else None)
    if siglip:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    logs = [train_step(model, loss, x, t, opt) for x, t in _batches(8)]
    return logs, [p.detach().clone() for p in model.parameters()]


def _reference(kind):
    if kind == "naive":
        return {"clip": NaiveClip, "siglip": NaiveSigLip}
    module = open_clip_loss_module()
    if module is None:
        pytest.skip("open_clip (pip install --no-deps open_clip_torch) is not installed")
    return {"clip": module.ClipLoss, "siglip": module.SigLipLoss}


@pytest.mark.parametrize("reference", ["naive", "open_clip"])
@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_open_clip_training_step_with_only_the_import_changed(reference, loss_name):
    ours_cls = {"clip": ClipLoss, "siglip": SigLipLoss}[loss_name]
    ref_cls = _reference(reference)[loss_name]
    ours_logs, ours_params = _train(ours_cls(), loss_name == "siglip")
    ref_logs, ref_params = _train(ref_cls(), loss_name == "siglip")
    for a, b in zip(ours_logs, ref_logs):
        assert list(a) == list(b) == ["contrastive_loss", "loss"]
        torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-12, atol=1e-13)
    for a, b in zip(ours_params, ref_params):  # three SGD steps later the weights agree
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_logit_bias_on_clip_loss_is_a_no_op_with_zero_gradient():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    loss = ClipLoss()(img, txt, torch.tensor(10.0, dtype=torch.float64), bias)
    loss.backward()
    torch.testing.assert_close(loss, NaiveClip()(img, txt, 10.0), rtol=1e-13, atol=1e-13)
    assert float(bias.grad) == 0.0
    module = open_clip_loss_module()
    if module is not None:
        theirs = module.ClipLoss()(img, txt, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64))
        torch.testing.assert_close(loss.detach(), theirs, rtol=1e-13, atol=1e-13)


def test_create_loss_with_open_clip_args():
    args = SimpleNamespace(distill=False, model="ViT-B-32", siglip=False, local_loss=True, gather_with_grad=True,
                           rank=0, world_size=1, horovod=False, loss_dist_impl=None)
    clip = create_loss(args)
    assert isinstance(clip, ClipLoss) and clip.local_loss and clip.gather_with_grad and clip.cache_labels
    sig = create_loss(SimpleNamespace(**{**vars(args), "siglip": True, "loss_dist_impl": "gather"}))
    assert isinstance(sig, SigLipLoss) and sig.dist_impl == "gather"
    with pytest.raises(NotImplementedError, match="CoCa"):
        create_loss(SimpleNamespace(**{**vars(args), "model": "coca_ViT-B-32"}))
    with pytest.raises(NotImplementedError, match="distillation"):
        create_loss(SimpleNamespace(**{**vars(args), "distill": True}))


def test_constructor_arguments_and_errors():
    loss = ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=True, rank=0, world_size=1, use_horovod=False)
    x = F.normalize(torch.randn(3, 4), dim=1)
    assert isinstance(loss(x, x, torch.tensor(10.0)), torch.Tensor)
    assert set(loss(x, x, torch.tensor(10.0), output_dict=True)) == {"contrastive_loss"}
    with pytest.raises(ValueError, match="dist_impl"):
        SigLipLoss(dist_impl="ring")
    with pytest.raises(ValueError, match="rank < world_size"):
        ClipLoss(rank=2, world_size=2)
    with pytest.raises(RuntimeError, match="not initialised"):
        ClipLoss(rank=0, world_size=2)(x, x, torch.tensor(10.0))
    with pytest.raises(NotImplementedError, match="Horovod"):
        ClipLoss(rank=0, world_size=2, use_horovod=True)(x, x, torch.tensor(10.0))
    with pytest.raises(ValueError, match="same batch size"):
        SigLipLoss()(x, x[:2], torch.tensor(10.0), torch.tensor(-10.0))


def test_train_step_is_still_the_installed_open_clip_train_loop():
    """``train_step`` above is open_clip's loss call, line for line: check it against the installed release's source.

    open_clip_train is not imported (its package imports torchvision); its ``train.py`` is read as text, and the
    statements of the ``accum_freq == 1`` branch must appear in ``train_one_epoch`` in this order.
    """
    import ast
    import importlib.util
    import inspect
    from pathlib import Path

    spec = importlib.util.find_spec("open_clip_train")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip_train (pip install --no-deps open_clip_torch) is not installed")
    source = (Path(list(spec.submodule_search_locations)[0]) / "train.py").read_text(encoding="utf-8")
    theirs = next(n for n in ast.walk(ast.parse(source))
                  if isinstance(n, ast.FunctionDef) and n.name == "train_one_epoch")
    their_lines = [ast.unparse(n) for n in ast.walk(theirs) if isinstance(n, ast.stmt)]
    ours = ast.parse(inspect.getsource(train_step)).body[0]
    wanted = [ast.unparse(n) for n in ours.body
              if isinstance(n, (ast.Assign, ast.Expr)) and "loss" in ast.unparse(n) and not isinstance(n, ast.Return)]
    assert wanted[:3] == ["losses = loss(**model_out, output_dict=True)", "total_loss = sum(losses.values())",
                          "losses['loss'] = total_loss"]
    positions = [their_lines.index(line) for line in wanted[:3] if line in their_lines]
    assert len(positions) == 3 and positions == sorted(positions), (
        f"open_clip_train.train.train_one_epoch no longer contains {wanted[:3]} in order: "
        "unimlip_kit.compat.open_clip targets that loss call")


def test_siglip_logit_bias_is_the_models_and_zero_when_omitted():
    """README: SigLipLoss takes the model's ``logit_bias`` (open_clip requires it; here it may be left out: 0)."""
    g = torch.Generator().manual_seed(2)
    img = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    scale = torch.tensor(10.0, dtype=torch.float64)
    for bias in (-10.0, 0.0, 2.5):
        got = SigLipLoss()(img, txt, scale, torch.tensor(bias, dtype=torch.float64))
        torch.testing.assert_close(got, NaiveSigLip()(img, txt, scale, bias), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(SigLipLoss()(img, txt, scale), NaiveSigLip()(img, txt, scale, 0.0), rtol=1e-12, atol=1e-12)
    model_out = TinyCLIP(init_logit_bias=-10.0)(torch.randn(4, D_IN, dtype=torch.float64), torch.randint(0, VOCAB, (4, 3)))
    losses = SigLipLoss()(**model_out, output_dict=True)  # the model's logit_bias arrives with **model_out
    ref = NaiveSigLip()(model_out["image_features"], model_out["text_features"], model_out["logit_scale"], -10.0)
    torch.testing.assert_close(losses["contrastive_loss"], ref, rtol=1e-12, atol=1e-12)
