"""Zero-shot classifier, linear probe and classification metrics against independent references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unimlip_kit.eval import (
    LinearProbe,
    classification_metrics,
    linear_probe_evaluate,
    zero_shot_classifier,
    zero_shot_evaluate,
)


def test_classification_metrics_hand_computed():
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    lab = torch.tensor([0, 1, 2, 2, 2, 0])
    m = classification_metrics(pred, lab)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recall per class: c0 1/2, c1 1/1, c2 2/3
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="same length"):
        classification_metrics(pred, lab[:3])


def test_zero_shot_classifier_is_normalised_prompt_ensemble():
    gen = torch.Generator().manual_seed(0)
    table: dict[str, torch.Tensor] = {}

    def enc(texts):
        for t in texts:
            table.setdefault(t, torch.randn(6, generator=gen) * (1 + len(t)))
        return torch.stack([table[t] for t in texts])

    names, temps = ["left lesion", "right lesion", "normal"], ["{}", "a scan of {}", "{} seen"]
    w = zero_shot_classifier(enc, names, temps)
    for c, n in enumerate(names):  # independent: per-class loop in float64
        e = torch.stack([table[t.format(n)].double() for t in temps])
        ref = (e / e.norm(dim=1, keepdim=True)).mean(0)
        torch.testing.assert_close(w[c].double(), ref / ref.norm(), rtol=1e-5, atol=1e-6)
    img = torch.stack([w[2], w[0], w[1]]) * 3 + 0.01
    assert zero_shot_evaluate(img, torch.tensor([2, 0, 1]), w)["accuracy"] == 1.0
    with pytest.raises(ValueError, match="templates"):
        zero_shot_classifier(enc, names, ["no placeholder"])
    with pytest.raises(ValueError, match="encode_text must return"):
        zero_shot_classifier(lambda xs: torch.zeros(1, 3), names, temps)


def _newton_reference(x: torch.Tensor, y: torch.Tensor, c: int, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 Newton's method on the same objective (independent of L-BFGS)."""
    x = (x - x.mean(0)) / x.std(0, unbiased=False)
    d = x.shape[1]

    def obj(theta):
        w, b = theta[: c * d].view(c, d), theta[c * d :]
        return F.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * (w * w).sum()

    theta = torch.zeros(c * d + c, dtype=torch.float64)
    for _ in range(15):
        g = torch.autograd.functional.jacobian(obj, theta)
        h = torch.autograd.functional.hessian(obj, theta) + 1e-10 * torch.eye(theta.numel(), dtype=torch.float64)
        # the bias has a flat direction (softmax shift invariance): least-squares step
        theta = theta - torch.linalg.lstsq(h, g).solution
    return theta[: c * d].view(c, d), theta[c * d :]


def test_linear_probe_matches_newton_reference():
    gen = torch.Generator().manual_seed(3)
    n, d, c = 60, 4, 3
    y = torch.randint(0, c, (n,), generator=gen)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) + F.one_hot(y, d).double()
    probe = LinearProbe(l2=0.05, num_classes=c).fit(x, y)
    w_ref, b_ref = _newton_reference(x, y, c, 0.05)
    xs = (x - probe.mean) / probe.std
    # logits are identifiable up to a per-row constant (bias shift), so compare centred logits
    got = xs @ probe.weight.T + probe.bias
    want = xs @ w_ref.T + b_ref
    torch.testing.assert_close(got - got.mean(1, keepdim=True), want - want.mean(1, keepdim=True), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probe.weight, w_ref, rtol=1e-5, atol=1e-5)


def test_linear_probe_sweep_and_errors():
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (200,), generator=gen)
    x = torch.randn(200, 8, generator=gen) + 2.5 * F.one_hot(y, 8).float()
    m = linear_probe_evaluate(x[:150], y[:150], x[150:], y[150:], generator=torch.Generator().manual_seed(0))
    assert m["accuracy"] > 0.8 and m["l2"] in LinearProbe().l2_grid
    # chance-level features give chance-level accuracy (no leakage from the test split)
    noise = torch.randn(200, 8, generator=gen)
    assert linear_probe_evaluate(noise[:150], y[:150], noise[150:], y[150:], l2=1e-2)["accuracy"] < 0.5
    with pytest.raises(RuntimeError, match="fit"):
        LinearProbe().predict(x)
    with pytest.raises(ValueError, match="labels"):
        LinearProbe(l2=1.0).fit(x, y[:10])
    with pytest.raises(ValueError, match="D=8"):
        LinearProbe(l2=1.0).fit(x, y).predict(x[:, :3])


def test_prompt_ensemble_uneven_groups():
    from unimlip_kit.eval import prompt_ensemble

    gen = torch.Generator().manual_seed(5)
    vecs = {p: torch.randn(4, generator=gen) for p in "abcdef"}
    groups = [["a"], ["b", "c", "d"], ["e", "f"]]
    w = prompt_ensemble(lambda xs: torch.stack([vecs[x] for x in xs]), groups)
    for c, g in enumerate(groups):
        m = torch.stack([vecs[p] / vecs[p].norm() for p in g]).mean(0)
        torch.testing.assert_close(w[c], m / m.norm())
    with pytest.raises(ValueError, match="at least one prompt"):
        prompt_ensemble(lambda xs: torch.zeros(len(xs), 4), [["a"], []])
