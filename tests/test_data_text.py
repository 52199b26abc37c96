"""Tokenizers on captions: WordPiece training (synthetic and the real ROCO validation captions) and the bundled BERT."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from unimlip_kit.data import SyntheticConfig, generate_samples, infer_modality, read_roco
from unimlip_kit.text import SPECIAL_TOKENS, has_bundled_model, load_bundled_tokenizer, train_wordpiece_tokenizer

SHARED_TSV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "roco_captions" / "validation.tsv"


@pytest.fixture(scope="module")
def roco_rows() -> list[dict[str, str]]:
    if not SHARED_TSV.is_file():
        pytest.skip(f"real ROCO captions not available at {SHARED_TSV}")
    with open(SHARED_TSV, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _synthetic_captions(n: int = 200) -> list[str]:
    return [s["caption"] for s in generate_samples(SyntheticConfig(image_size=16), "train", 0, n)]


def test_wordpiece_on_synthetic_captions() -> None:
    caps = _synthetic_captions()
    tok = train_wordpiece_tokenizer(caps, vocab_size=500)
    assert tok.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4)
    # the attribute words the benchmark relies on are whole tokens, never [UNK]
    for word in ("left", "right", "small", "large", "hyperdense", "hypodense", "lesion", "no"):
        assert tok.tokenize(word) == [word]
    enc = tok(caps[:8], padding=True, return_tensors="pt")
    assert enc["input_ids"].shape[0] == 8 and bool((enc["input_ids"][:, 0] == 2).all())
    assert tok.unk_token_id not in enc["input_ids"].tolist()[0]
    for c, ids in zip(caps[:8], enc["input_ids"]):
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == c.lower().replace(" ", "")
    # deterministic for a given caption list (ids included), whatever the caption order
    assert train_wordpiece_tokenizer(caps, vocab_size=500).get_vocab() == tok.get_vocab()
    assert train_wordpiece_tokenizer(caps[::-1], vocab_size=500).get_vocab() == tok.get_vocab()


def test_wordpiece_small_budget_splits_rare_words() -> None:
    caps = ["alpha beta gamma"] * 5 + ["alphabet soup"]
    tok = train_wordpiece_tokenizer(caps, vocab_size=5 + 2 * 16 + 4)
    vocab = tok.get_vocab()
    assert "alpha" in vocab and len(vocab) <= 41
    pieces = tok.tokenize("alphabet soup")
    assert tok.unk_token not in pieces
    assert "".join(p.removeprefix("##") for p in pieces) == "alphabetsoup"


def test_library_trainer_option() -> None:
    tok = train_wordpiece_tokenizer(_synthetic_captions(50), vocab_size=300, algorithm="trainer")
    assert tok.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    assert tok.tokenize("left lesion") == ["left", "lesion"]


def test_wordpiece_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        train_wordpiece_tokenizer(["", "  "])
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece_tokenizer(["a b"], vocab_size=3)


def test_real_captions_reader_modality_and_tokenizers(roco_rows: list[dict[str, str]], tmp_path: Path) -> None:
    # Write a ROCO-layout captions.txt (temporary, never in the repo) and read it with PMC-named images.
    from PIL import Image

    rows = roco_rows[:200]
    d = tmp_path / "data" / "validation" / "radiology"
    (d / "images").mkdir(parents=True)
    (d / "captions.txt").write_text("".join(f"{r['roco_id']}\t {r['caption']}\n" for r in rows), encoding="utf-8")
    for r in rows[:50]:
        Image.new("L", (4, 4)).save(d / "images" / r["pmc_image"])
    recs = read_roco(tmp_path, "validation", pmc_names=SHARED_TSV)
    assert [r.id for r in recs] == [r["roco_id"] for r in rows[:50] if r["caption"].strip()]

    caps = [r["caption"] for r in roco_rows if r["caption"].strip()]
    modality = Counter(infer_modality(c) for c in caps)
    # ROCO radiology captions nearly always name CT, MRI, X-ray or ultrasound
    assert modality["unknown"] < 0.35 * len(caps), modality
    assert min(modality[m] for m in ("ct", "mri", "xray", "ultrasound")) > 0.03 * len(caps), modality

    tok = train_wordpiece_tokenizer(caps, vocab_size=3000)
    assert len(tok) == 3000
    ids = tok(caps[:300])["input_ids"]
    assert not any(i == tok.unk_token_id for seq in ids for i in seq)  # character fallback: never [UNK]
    norm = tok.backend_tokenizer.normalizer.normalize_str  # BERT: lower-case, accents stripped, odd spaces
    for c, seq in zip(caps[:300], ids):
        assert "".join(tok.decode(seq, skip_special_tokens=True).split()) == "".join(norm(c).split())
    if has_bundled_model():
        bert = load_bundled_tokenizer()
        lens = [len(x) for x in bert(caps[:200])["input_ids"]]
        assert max(lens) < 512 and min(lens) >= 3
