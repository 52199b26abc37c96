"""The README's ``model(batch)`` table ("Your own training loop") against UniMlipModel itself.

For each batch key the table lists the loss terms that read it: changing that key's values must change the
outputs of exactly those terms (the model's output-per-term contract: models/unimlip.py), and leaving an
optional key out must equal passing the default the table states, written out here by hand (all ones, the
first view, ``arange`` groups, :func:`unimlip_kit.losses.mask_tokens` with the config's settings).
The model runs in eval mode (no dropout) with a seeded ``generator``, so equal inputs give equal outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from unimlip_kit.losses import UniMlipLoss, mask_tokens
from unimlip_kit.models import TERMS, UniMlipModel, UniMlipModelConfig
from unimlip_kit.text import train_wordpiece_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"
CAPTIONS = ["Left lower lobe opacity.", "No focal lesion.", "Right upper hypodense lesion.",
            "Small left pleural effusion.", "Axial CT of the head.", "Large right liver mass."]
#: The outputs of each term (models/unimlip.py's table); a term "reads" a key when one of these changes with it.
TERM_OUTPUTS = {"itc": ("image_emb", "text_emb"), "itc_feature": ("image_emb_feat", "text_emb_feat"),
                "image_ssl": ("image_z1", "image_z2"), "text_ssl": ("text_h1", "text_h2"),
                "itm": ("itm_logits", "itm_labels"), "mlm": ("mlm_logits", "mlm_labels")}


def _readme_rows() -> dict[tuple[str, ...], set[str]]:
    """{batch keys of a row: the terms its "read for the terms" column names} from the README's table."""
    section = README.read_text(encoding="utf-8").split("## Your own training loop", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`"):
            continue
        keys = tuple(re.findall(r"`([a-z_0-9]+)`", cells[0]))
        rows[keys] = set(re.findall(r"`([a-z_]+)`", cells[2])) & set(TERMS)
    return rows


@pytest.fixture(scope="module")
def setup():
    tok = train_wordpiece_tokenizer(CAPTIONS * 5, vocab_size=90)
    torch.manual_seed(0)
    cfg = UniMlipModelConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                             text_width=32, text_layers=1, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16,
                             vocab_size=len(tok), max_text_len=16, mask_token_id=tok.mask_token_id,
                             special_token_ids=sorted(tok.all_special_ids))
    model = UniMlipModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    enc = tok(CAPTIONS, padding=True, return_tensors="pt")
    aug = tok([c.replace("lesion", "[MASK]") for c in CAPTIONS], padding=True, return_tensors="pt")
    mlm_ids, mlm_labels = mask_tokens(enc["input_ids"], tokenizer=tok, attention_mask=enc["attention_mask"],
                                      min_one_target=True, generator=torch.Generator().manual_seed(2))
    full = {"images": torch.rand(6, 1, 32, 32, generator=g), "images_view2": torch.rand(6, 1, 32, 32, generator=g),
            "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "input_ids_aug": aug["input_ids"], "attention_mask_aug": aug["attention_mask"],
            "group_ids": torch.arange(6), "mlm_input_ids": mlm_ids, "mlm_labels": mlm_labels}
    return model, tok, full


def _run(model, batch, terms=TERMS):
    with torch.no_grad():
        return model(batch, terms, generator=torch.Generator().manual_seed(0))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)


def _changed_terms(a: dict, b: dict) -> set[str]:
    return {t for t, keys in TERM_OUTPUTS.items() if any(not _same(a[k], b[k]) for k in keys)}


def _altered(full: dict, keys: tuple[str, ...], tok) -> dict:
    """``full`` with new values under ``keys`` (same shapes and dtypes)."""
    g = torch.Generator().manual_seed(7)
    out = dict(full)
    if keys == ("mlm_input_ids", "mlm_labels"):  # another masking of the same captions
        out["mlm_input_ids"], out["mlm_labels"] = mask_tokens(
            full["input_ids"], tokenizer=tok, attention_mask=full["attention_mask"], min_one_target=True,
            generator=torch.Generator().manual_seed(3))
        return out
    first_word, vocab = max(tok.all_special_ids) + 1, len(tok)
    for k in keys:
        v = full[k]
        if k.startswith("images"):
            out[k] = torch.rand(v.shape, generator=g)
        elif k == "group_ids":
            out[k] = torch.zeros_like(v)  # one group: no pair may be another's hard negative
        elif k.startswith("attention_mask"):
            m = v.clone()
            m[:, 3:] = 0  # only the first three tokens attended
            out[k] = m
        else:  # token ids: the special tokens kept, every word replaced by another
            words = v >= first_word
            out[k] = torch.where(words, (v - first_word + 7) % (vocab - first_word) + first_word, v)
    return out


def test_the_readme_table_lists_every_key_the_model_reads(setup):
    rows = _readme_rows()
    assert {k for keys in rows for k in keys} == {"images", "images_view2", "input_ids", "attention_mask",
                                                 "input_ids_aug", "attention_mask_aug", "group_ids",
                                                 "mlm_input_ids", "mlm_labels"}


@pytest.mark.parametrize("keys", list(_readme_rows()), ids=lambda k: "+".join(k))
def test_each_key_is_read_by_the_terms_the_table_names(setup, keys):
    model, tok, full = setup
    base = dict(full)
    if keys == ("input_ids",):  # the table: mlm masks input_ids when mlm_input_ids is absent
        base = {k: v for k, v in base.items() if not k.startswith("mlm_")}
    got = _changed_terms(_run(model, base), _run(model, _altered(base, keys, tok)))
    assert got == _readme_rows()[keys], f"{keys}: changing them changed the outputs of {sorted(got)}"


def test_absent_keys_equal_the_defaults_the_table_states(setup):
    model, tok, full = setup
    def without(*names):
        return {k: v for k, v in full.items() if k not in names}

    cases = [  # (batch without the keys, the same batch with the stated default written out)
        (without("images_view2"), dict(without("images_view2"), images_view2=full["images"])),
        (without("input_ids_aug", "attention_mask_aug"),
         dict(full, input_ids_aug=full["input_ids"], attention_mask_aug=full["attention_mask"])),
        (without("attention_mask", "attention_mask_aug"),
         dict(without("attention_mask_aug"), attention_mask=torch.ones_like(full["input_ids"]))),
        (without("group_ids"), dict(full, group_ids=torch.arange(6))),
    ]
    for absent, explicit in cases:
        a, b = _run(model, absent), _run(model, explicit)
        assert sorted(a) == sorted(b) and all(_same(a[k], b[k]) for k in a), sorted(set(full) - set(absent))
    # mlm inputs absent: the model masks input_ids with the config's mask_token_id, special ids and mlm_probability
    cfg = model.config
    ids, labels = mask_tokens(full["input_ids"], mask_token_id=cfg.mask_token_id, vocab_size=len(tok),
                              special_token_ids=cfg.special_token_ids, attention_mask=full["attention_mask"],
                              prob=cfg.mlm_probability, generator=torch.Generator().manual_seed(0))
    a = _run(model, without("mlm_input_ids", "mlm_labels"), ("mlm",))
    b = _run(model, dict(full, mlm_input_ids=ids, mlm_labels=labels), ("mlm",))
    assert _same(a["mlm_logits"], b["mlm_logits"]) and torch.equal(a["mlm_labels"], b["mlm_labels"])
    # uint8 images are scaled by 1/255
    u8 = (full["images"] * 255).round().to(torch.uint8)
    a, b = _run(model, dict(full, images=u8)), _run(model, dict(full, images=u8.float() / 255))
    assert all(_same(a[k], b[k]) for k in a)


def test_required_keys_and_the_loss_on_the_outputs(setup):
    model, _, full = setup
    for key in ("images", "input_ids"):
        with pytest.raises(ValueError, match=f"batch lacks '{key}'"):
            _run(model, {k: v for k, v in full.items() if k != key})
    loss_fn = UniMlipLoss()
    total, terms = loss_fn(_run(model, full, loss_fn.enabled_terms))
    assert sorted(terms) == sorted(TERMS) and torch.isfinite(total)
    no_mlm = UniMlipModel(UniMlipModelConfig(**{**model.config.__dict__, "mask_token_id": None})).eval()
    with pytest.raises(ValueError, match="mask_token_id"):
        _run(no_mlm, {k: v for k, v in full.items() if not k.startswith("mlm_")}, ("mlm",))
