"""UniMlipLoss: total == Σ w·term against float64 references, gradient isolation, the key contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import unimlip_kit.losses.unimlip as unimlip_mod
from unimlip_kit.losses import DEFAULT_WEIGHTS, TERM_KEYS, MissingLossInputsError, UniMlipLoss

N, D, V = 6, 5, 11


def _ce(logits, target):  # float64 cross-entropy from the definition
    return (torch.logsumexp(logits, dim=1) - logits.gather(1, target[:, None]).squeeze(1)).mean()


def _ref_clip(x, y, s):
    lg = s * x @ y.T
    t = torch.arange(len(x))
    return (_ce(lg, t) + _ce(lg.T, t)) / 2


def _ref_ntxent(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * len(z1), dtype=torch.bool), float("-inf"))
    return _ce(sim, (torch.arange(2 * len(z1)) + len(z1)) % (2 * len(z1)))


def _ref_simcse(h1, h2, tau):
    return _ce(F.normalize(h1, dim=1) @ F.normalize(h2, dim=1).T / tau, torch.arange(len(h1)))


def _ref_simsiam(p1, p2, z1, z2):
    return -(F.cosine_similarity(p1, z2, dim=1).mean() + F.cosine_similarity(p2, z1, dim=1).mean()) / 2


def _outputs(seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    emb = lambda: F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1)  # noqa: E731
    out = {k: emb() for k in ("image_emb", "text_emb", "image_emb_feat", "text_emb_feat",
                              "image_z1", "image_z2", "image_p1", "image_p2", "text_h1", "text_h2")}
    out["logit_scale"] = torch.tensor(7.0, dtype=torch.float64)
    out["itm_logits"] = torch.randn(3 * N, 2, generator=g, dtype=torch.float64)
    out["itm_labels"] = torch.tensor([1] * N + [0] * 2 * N)
    out["mlm_logits"] = torch.randn(N, 4, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (N, 4), generator=g)
    labels[torch.rand(N, 4, generator=g) < 0.5] = -100
    labels[:, 0] = 3
    out["mlm_labels"] = labels
    if grad:
        for v in out.values():
            if v.is_floating_point():
                v.requires_grad_(True)
    return out


def _references(o, image_ssl="ntxent"):
    sel = o["mlm_labels"] != -100
    return {
        "itc": _ref_clip(o["image_emb"], o["text_emb"], o["logit_scale"]),
        "itc_feature": _ref_clip(o["image_emb_feat"], o["text_emb_feat"], o["logit_scale"]),
        "image_ssl": (_ref_ntxent(o["image_z1"], o["image_z2"], 0.2) if image_ssl == "ntxent"
                      else _ref_simsiam(o["image_p1"], o["image_p2"], o["image_z1"].detach(), o["image_z2"].detach())),
        "text_ssl": _ref_simcse(o["text_h1"], o["text_h2"], 0.05),
        "itm": _ce(o["itm_logits"], o["itm_labels"]),
        "mlm": _ce(o["mlm_logits"][sel], o["mlm_labels"][sel]),
    }


@pytest.mark.parametrize("image_ssl", ["ntxent", "simsiam"])
def test_total_is_weighted_sum_of_reference_terms(image_ssl):
    weights = {"itc": 1.0, "itc_feature": 0.5, "image_ssl": 2.0, "text_ssl": 0.25, "itm": 1.5, "mlm": 0.75}
    o = _outputs()
    loss_fn = UniMlipLoss(weights, image_ssl=image_ssl, image_temperature=0.2, text_temperature=0.05)
    total, terms = loss_fn(o)
    refs = _references(o, image_ssl)
    assert set(terms) == set(weights)
    for k, ref in refs.items():
        assert not terms[k].requires_grad
        assert torch.allclose(terms[k], ref.detach(), atol=1e-10), k
    expected = sum(weights[k] * refs[k] for k in refs)
    assert torch.allclose(total, expected, atol=1e-10)
    # the gradient of the total equals the gradient of the reference total
    keys = [k for k, v in o.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    g_got = torch.autograd.grad(total, [o[k] for k in keys], allow_unused=True)
    g_ref = torch.autograd.grad(expected, [o[k] for k in keys], allow_unused=True)
    for k, a, b in zip(keys, g_got, g_ref):
        assert (a is None) == (b is None), k
        if a is not None:
            assert torch.allclose(a, b, atol=1e-9), k


@pytest.mark.parametrize("term,image_ssl", [(t, "ntxent") for t in DEFAULT_WEIGHTS] + [("image_ssl", "simsiam")])
def test_gradient_reaches_only_the_term_inputs(term, image_ssl):
    o = _outputs(seed=1)
    weights = {t: (1.0 if t == term else 0.0) for t in DEFAULT_WEIGHTS}
    loss_fn = UniMlipLoss(weights, image_ssl=image_ssl)
    total, terms = loss_fn(o)
    assert list(terms) == [term]
    total.backward()
    used = set(loss_fn.term_keys(term))
    if image_ssl == "simsiam" and term == "image_ssl":
        used -= {"image_z1", "image_z2"}  # stop-gradient targets
    for k, v in o.items():
        if isinstance(v, torch.Tensor) and v.requires_grad:
            assert (v.grad is not None and bool(v.grad.abs().sum() > 0)) == (k in used), k


def test_missing_inputs_name_term_and_keys():
    o = _outputs(grad=False)
    del o["text_h2"], o["mlm_labels"], o["mlm_logits"]
    o["itm_labels"] = None
    with pytest.raises(MissingLossInputsError) as err:
        UniMlipLoss()(o)
    msg = str(err.value)
    assert "'text_ssl'" in msg and "['text_h2']" in msg
    assert "'itm'" in msg and "['itm_labels']" in msg
    assert "'mlm'" in msg and "['mlm_logits', 'mlm_labels']" in msg
    assert "'itc'" not in msg
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    # the same outputs are fine once those terms are switched off
    total, terms = UniMlipLoss({"text_ssl": 0, "itm": 0, "mlm": 0})(o)
    assert sorted(terms) == ["image_ssl", "itc", "itc_feature"]


def test_zero_weight_costs_nothing(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a weight-0 term was computed")

    for name in ("simsiam_loss", "nt_xent_loss", "simcse_loss", "image_text_matching_loss", "masked_language_modeling_loss"):
        monkeypatch.setattr(unimlip_mod, name, boom)
    o = {"image_emb": torch.randn(3, 4), "text_emb": torch.randn(3, 4), "logit_scale": 5.0,
         "image_emb_feat": torch.randn(3, 4), "text_emb_feat": torch.randn(3, 4),
         "image_z1": "not even a tensor"}
    total, terms = UniMlipLoss({"image_ssl": 0, "text_ssl": 0, "itm": 0, "mlm": 0})(o)
    assert sorted(terms) == ["itc", "itc_feature"] and torch.isfinite(total)


def test_contract_and_config_errors():
    assert TERM_KEYS["itc"] == ("image_emb", "text_emb", "logit_scale")
    assert UniMlipLoss().required_keys()["image_ssl"] == ("image_z1", "image_z2")
    assert UniMlipLoss(image_ssl="simsiam").required_keys()["image_ssl"] == ("image_p1", "image_p2", "image_z1", "image_z2")
    with pytest.raises(ValueError, match="unknown UniMlipLoss term 'itx'"):
        UniMlipLoss({"itx": 1.0})
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        UniMlipLoss({"itc": -1.0})
    with pytest.raises(ValueError, match="image_ssl must be"):
        UniMlipLoss(image_ssl="byol")
    with pytest.raises(ValueError, match="every weight at 0"):
        UniMlipLoss({k: 0 for k in DEFAULT_WEIGHTS})({})
    assert "image_ssl='ntxent'" in repr(UniMlipLoss())


def test_backend_is_forwarded():
    o = _outputs(grad=False)
    w = {"itc": 1, "itc_feature": 1, "image_ssl": 1, "text_ssl": 1, "itm": 0, "mlm": 0}
    ref = UniMlipLoss(w, backend="reference")(o)
    tiled = UniMlipLoss(w, backend="tiled")(o)
    for k in ref.terms:
        assert torch.allclose(ref.terms[k], tiled.terms[k], atol=1e-10)
    with pytest.raises(Exception, match="no_such_backend|unknown|not registered"):
        UniMlipLoss(w, backend="no_such_backend")(o)
