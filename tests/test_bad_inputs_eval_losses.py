"""Evaluation and loss functions on bad and edge-case input: unknown/out-of-range/float labels, NaN logits and
embeddings, empty dimensions, integer ids, meta tensors, malformed templates and weights.

References: float64 ``torch.nn.functional.cross_entropy`` on the kept rows, counts written by hand, and each
function's own result on the cleaned input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from unimlip_kit.eval import LinearProbe, classification_metrics, vqa_accuracy, zero_shot_classifier, zero_shot_evaluate
from unimlip_kit.eval.vqa_data import VQASample
from unimlip_kit.losses import (
    IGNORE_INDEX,
    UniMlipLoss,
    image_text_contrastive_loss,
    image_text_matching_loss,
    mask_tokens,
    masked_language_modeling_loss,
    random_token_keep,
)

# ------------------------------------------------------------------ zero-shot / classification labels


def test_unknown_labels_are_not_scored_and_are_counted() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    out = zero_shot_evaluate(emb, torch.tensor([0, -1, 1, 1]), torch.eye(2))
    # scored: (pred 0, label 0) right, (pred 0, label 1) wrong, (pred 1, label 1) right
    assert out == {"accuracy": 2 / 3, "balanced_accuracy": 0.75, "n": 3, "n_unknown": 1}


def test_labels_outside_the_classes_or_float_labels_raise() -> None:
    emb = torch.eye(2)
    with pytest.raises(ValueError, match=r"labels hold class 2 but num_classes=2"):
        zero_shot_evaluate(emb, torch.tensor([0, 2]), torch.eye(2))
    with pytest.raises(ValueError, match="labels must be integer class indices, got dtype torch.float32"):
        zero_shot_evaluate(emb, torch.tensor([0.0, 1.0]), torch.eye(2))
    with pytest.raises(ValueError, match=r"labels must be class indices >= 0 or -1"):
        classification_metrics(torch.tensor([0]), torch.tensor([-2]))
    with pytest.raises(ValueError, match="pred must be class indices >= 0"):
        classification_metrics(torch.tensor([-1]), torch.tensor([0]))


@settings(max_examples=40, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 3), st.integers(-1, 3)), max_size=20))
def test_classification_metrics_match_a_hand_count_over_known_labels(pairs) -> None:
    pred = torch.tensor([p for p, _ in pairs], dtype=torch.long)
    labels = torch.tensor([y for _, y in pairs], dtype=torch.long)
    out = classification_metrics(pred, labels, num_classes=4)
    known = [(p, y) for p, y in pairs if y >= 0]
    assert out["n"] == len(known) and out.get("n_unknown", 0) == len(pairs) - len(known)
    if not known:
        assert out["accuracy"] != out["accuracy"]  # NaN: nothing to score
        return
    assert out["accuracy"] == pytest.approx(sum(p == y for p, y in known) / len(known))
    recalls = [sum(p == y for p, y in known if y == c) / sum(y == c for _, y in known) for c in {y for _, y in known}]
    assert out["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))


# ------------------------------------------------------------------ zero-shot templates and NaN prompts


def _encode(texts: list[str]) -> torch.Tensor:
    return torch.stack([torch.tensor([float(len(t)), 1.0]) for t in texts])


@pytest.mark.parametrize("template", ["{} and {}", "an image of {name}", "{0} {1}", "no slot", "{"])
def test_templates_without_exactly_one_slot_are_rejected_by_name(template: str) -> None:
    with pytest.raises(ValueError, match="templates"):
        zero_shot_classifier(_encode, ["a", "b"], [template])


def test_literal_braces_and_positional_slot_are_accepted() -> None:
    w = zero_shot_classifier(_encode, ["a", "bb"], ["{{x}} {}", "{0}"])
    ref = zero_shot_classifier(_encode, ["a", "bb"], ["{x} {}".replace("{x}", "{{x}}"), "{}"])
    torch.testing.assert_close(w, ref)


def test_nan_prompt_embeddings_raise_naming_the_prompts() -> None:
    def enc(texts: list[str]) -> torch.Tensor:
        out = _encode(texts)
        out[1] = float("nan")
        return out

    with pytest.raises(ValueError, match=r"NaN or infinite embeddings for 1 prompts, e.g. \['b'\]"):
        zero_shot_classifier(enc, ["a", "b"], ["{}"])


# ------------------------------------------------------------------ linear probe settings


@pytest.mark.parametrize("kwargs, match", [
    ({"l2": -1.0}, "l2 must be None"), ({"l2": float("nan")}, "l2 must be None"), ({"l2": float("inf")}, "l2 must be None"),
    ({"l2_grid": ()}, "l2_grid must be a non-empty"), ({"l2_grid": (1e-3, -1.0)}, "l2_grid"),
    ({"max_iter": 0}, "max_iter"), ({"val_fraction": 1.0}, "val_fraction"), ({"num_classes": 0}, "num_classes"),
])
def test_linear_probe_rejects_settings_lbfgs_cannot_use(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LinearProbe(**kwargs)
    probe = LinearProbe(l2=1e-3)
    for k, v in kwargs.items():
        setattr(probe, k, v)
    with pytest.raises(ValueError, match=match):
        probe.fit(torch.randn(10, 3), torch.arange(10) % 2)


def test_linear_probe_l2_zero_is_a_valid_unregularised_fit() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.randn(40, 2, generator=g) + 4 * y[:, None]
    assert float((LinearProbe(l2=0.0).fit(x, y).predict(x) == y).float().mean()) == 1.0


# ------------------------------------------------------------------ VQA normalisation


def test_vqa_accuracy_normalises_predictions_like_answers() -> None:
    ss = [VQASample("1", Path("a"), "q", "yes", "closed"), VQASample("2", Path("a"), "q", "Left Lung", "open")]
    assert vqa_accuracy(["Yes.", "  left   lung. "], ss)["accuracy"] == 1.0
    assert vqa_accuracy(["no", "left"], ss)["accuracy"] == 0.0


# ------------------------------------------------------------------ ITM / MLM: non-finite logits, empty dims, ids


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_itm_and_mlm_reject_non_finite_logits_like_the_contrastive_losses(bad: float) -> None:
    logits = torch.zeros(4, 2)
    logits[2, 1] = bad
    with pytest.raises(ValueError, match="logits contains NaN or infinite values"):
        image_text_matching_loss(logits, torch.tensor([1, 1, 0, 0]))
    mlm = torch.zeros(2, 3, 5)
    mlm[1, 2, 4] = bad
    labels = torch.tensor([[1, -100, -100], [-100, -100, 3]])
    with pytest.raises(ValueError, match="logits at the selected positions contains NaN"):
        masked_language_modeling_loss(mlm, labels)
    emb = torch.zeros(2, 3)
    emb[0, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        image_text_contrastive_loss(emb, torch.ones(2, 3), 10.0)


def test_mlm_nan_at_an_unscored_position_does_not_change_the_loss() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1, -100, -100], [-100, -100, 3]])
    ref = F.cross_entropy(logits[labels != -100], labels[labels != -100])
    logits[0, 1] = float("nan")
    torch.testing.assert_close(masked_language_modeling_loss(logits, labels), ref)


def test_mlm_loss_with_an_empty_vocabulary_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="empty vocabulary dimension"):
        masked_language_modeling_loss(torch.zeros(2, 3, 0), torch.full((2, 3), -100))


@pytest.mark.parametrize("shape", [(2, 0), (0, 5), (0, 0), (0,)])
@pytest.mark.parametrize("min_one_target", [False, True])
def test_mask_tokens_on_empty_dimensions_returns_empty_results(shape: tuple, min_one_target: bool) -> None:
    ids = torch.zeros(shape, dtype=torch.long)
    masked, labels = mask_tokens(ids, mask_token_id=4, vocab_size=10, special_token_ids=(), min_one_target=min_one_target)
    assert masked.shape == shape and labels.shape == shape


def test_random_token_keep_on_an_empty_batch_returns_an_empty_batch() -> None:
    kept = random_token_keep(torch.zeros(0, 5, 3), 0.5)
    assert kept.tokens.shape[0] == 0 and kept.index.shape[0] == 0 and kept.mask.shape[0] == 0


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_mask_tokens_labels_hold_minus_100_for_every_integer_dtype(dtype: torch.dtype) -> None:
    ids = torch.arange(5, 45).remainder(50).to(dtype)[None]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    masked, labels = mask_tokens(ids, mask_token_id=4, vocab_size=50, special_token_ids=(0,), generator=g1)
    ref_masked, ref_labels = mask_tokens(ids.long(), mask_token_id=4, vocab_size=50, special_token_ids=(0,), generator=g2)
    assert masked.dtype == dtype and torch.equal(masked.long(), ref_masked)
    assert torch.equal(labels.long(), ref_labels) and bool((labels == IGNORE_INDEX).any())
    assert set(labels.long().unique().tolist()) <= set(ids.long().unique().tolist()) | {IGNORE_INDEX}


def test_mask_tokens_refuses_a_dtype_too_small_for_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="cannot hold ids up to vocab_size - 1 = 999"):
        mask_tokens(torch.zeros(1, 4, dtype=torch.uint8), mask_token_id=4, vocab_size=1000, special_token_ids=())


@settings(max_examples=30, deadline=None)
@given(b=st.integers(0, 3), l=st.integers(0, 6), v=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_mlm_loss_on_any_small_shape_equals_float64_cross_entropy_on_kept_rows(b, l, v, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, l, v, generator=g)
    labels = torch.randint(-1, v, (b, l), generator=g).masked_fill_(torch.rand(b, l, generator=g) < 0.5, -100)
    labels[labels == -1] = -100
    got = masked_language_modeling_loss(logits, labels)
    keep = labels != -100
    if not bool(keep.any()):
        assert float(got) == 0.0
    else:
        ref = F.cross_entropy(logits.double()[keep], labels[keep])
        assert abs(float(got) - float(ref)) < 1e-5


# ------------------------------------------------------------------ meta tensors reach the backend registry


def test_meta_tensors_get_the_backend_registry_message_not_an_item_error() -> None:
    from unimlip_kit.backends import BackendUnavailableError

    a = torch.randn(4, 8, device="meta")
    with pytest.raises(BackendUnavailableError, match="no backend can run contrastive_lse on meta"):
        image_text_contrastive_loss(a, a, 10.0)
    with pytest.raises(BackendUnavailableError, match="on meta"):
        image_text_contrastive_loss(a, a, torch.tensor(10.0, device="meta"))


# ------------------------------------------------------------------ UniMlipLoss weights


@pytest.mark.parametrize("weights, err", [
    (["itm"], TypeError), ({"itm": "abc"}, ValueError), ({"itm": True}, ValueError),
    ({"itm": float("nan")}, ValueError), ({"itm": -1.0}, ValueError), ({"nope": 1.0}, ValueError),
])
def test_unimlip_loss_weights_must_be_a_mapping_of_finite_numbers(weights, err) -> None:
    with pytest.raises(err, match="weight|terms"):
        UniMlipLoss(weights)


def test_unimlip_loss_names_a_list_given_for_the_outputs_mapping() -> None:
    loss = UniMlipLoss()
    with pytest.raises(TypeError, match=r"UniMlipLoss expects a mapping of model outputs .* got list"):
        loss([torch.zeros(2, 4), torch.zeros(2, 4)])
