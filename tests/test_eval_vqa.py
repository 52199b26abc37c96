"""VQA readers on fixture files in the published formats, accuracy splits, and fine-tuning a toy backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from unimlip_kit.eval import (
    AnswerVocab,
    VQAClassifier,
    VQADataset,
    VQASample,
    evaluate_vqa,
    read_slake,
    read_vqa_json,
    read_vqa_rad,
    train_vqa,
    vqa_accuracy,
)


class Skips:
    def __init__(self):
        self.items = []

    def add(self, item_id, reason, detail=""):
        self.items.append((item_id, reason))


def test_vqa_rad_public_json(tmp_path):
    # fields and values as in "VQA_RAD Dataset Public.json" (Lau et al. 2018); answers may be numbers
    rows = [
        {"qid": "0", "image_name": "synpic54610.jpg", "image_organ": "HEAD", "answer": "Yes", "answer_type": "CLOSED",
         "question_type": "PRES", "question": "Are regions of the brain infarcted?", "phrase_type": "freeform"},
        {"qid": "1", "image_name": "synpic54610.jpg", "image_organ": "HEAD", "answer": 2, "answer_type": "OPEN",
         "question_type": "COUNT", "question": "How many lesions?", "phrase_type": "test_freeform"},
        {"qid": "2", "image_name": "synpic29265.jpg", "image_organ": "CHEST", "answer": "Right upper lobe.",
         "answer_type": "OPEN", "question_type": "POS", "question": "Where is the mass?", "phrase_type": "para"},
        {"qid": "3", "image_name": "synpic29265.jpg", "image_organ": "CHEST", "answer": "", "answer_type": "OPEN",
         "question_type": "POS", "question": "Where?", "phrase_type": "para"},
        {"qid": "4", "image_organ": "CHEST", "answer": "no", "answer_type": "CLOSED", "question": "Is it normal?",
         "phrase_type": "test_para"},
    ]
    folder = tmp_path / "VQA_RAD Image Folder"
    folder.mkdir()
    p = tmp_path / "VQA_RAD Dataset Public.json"
    p.write_text(json.dumps(rows))
    skips = Skips()
    allq = read_vqa_rad(p, skips=skips)
    assert [(s.qid, s.answer, s.answer_type, s.split) for s in allq] == [
        ("0", "yes", "closed", "train"), ("1", "2", "open", "test"), ("2", "right upper lobe", "open", "train")
    ]
    assert allq[0].image_path == folder / "synpic54610.jpg" and allq[0].meta["image_organ"] == "HEAD"
    assert sorted(skips.items) == [("3", "empty_answer"), ("4", "bad_row")]
    assert [s.qid for s in read_vqa_rad(p, split="test")] == ["1"]
    with pytest.raises(ValueError, match="split"):
        read_vqa_rad(p, split="validation")


def test_slake_keeps_english(tmp_path):
    rows = [
        {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Does the picture contain liver?", "answer": "Yes",
         "q_lang": "en", "location": "Abdomen", "modality": "CT", "answer_type": "CLOSED", "base_type": "vqa",
         "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": 11},
        {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "图中有肝脏吗?", "answer": "是", "q_lang": "zh",
         "location": "Abdomen", "modality": "CT", "answer_type": "CLOSED", "base_type": "vqa", "content_type": "Organ",
         "triple": ["vhead", "_", "_"], "qid": 12},
        {"img_id": 2, "img_name": "xmlab2/source.jpg", "question": "What modality is used?", "answer": "MRI",
         "q_lang": "en", "answer_type": "OPEN", "qid": 13},
        {"img_id": 2, "img_name": "xmlab2/source.jpg", "question": "What modality?", "answer": "MRI",
         "q_lang": "en", "answer_type": "OPEN", "qid": 13},  # duplicate qid
    ]
    p = tmp_path / "validation.json"
    p.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    skips = Skips()
    got = read_slake(p, skips=skips)
    assert [(s.qid, s.answer, s.answer_type, s.split) for s in got] == [
        ("11", "yes", "closed", "validation"), ("13", "mri", "open", "validation")
    ]
    assert got[0].image_path == tmp_path / "imgs" / "xmlab1" / "source.jpg"
    assert skips.items == [("13", "duplicate_id")]
    assert len(read_slake(p, language=None, skips=Skips())) == 3


def test_generic_json_and_answer_type_inference(tmp_path):
    p = tmp_path / "qa.json"
    p.write_text(json.dumps({"questions": [
        {"id": "a", "image": "x.png", "question": "Is there a lesion?", "answer": "No", "split": "train"},
        {"id": "b", "image": str(tmp_path / "abs.png"), "question": "Which side?", "answer": "left", "split": "test"},
        "not an object",
    ]}))
    skips = Skips()
    got = read_vqa_json(p, skips=skips)
    assert [(s.answer_type, s.split) for s in got] == [("closed", "train"), ("open", "test")]
    assert got[0].image_path == tmp_path / "x.png" and got[1].image_path == tmp_path / "abs.png"
    assert skips.items[0][1] == "bad_row"
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON list"):
        read_vqa_json(tmp_path / "bad.json")


def test_vqa_accuracy_splits():
    ss = [VQASample(str(i), Path("x"), "q", a, t) for i, (a, t) in enumerate(
        [("yes", "closed"), ("no", "closed"), ("liver", "open"), ("left", "open"), ("3", "open")])]
    m = vqa_accuracy(["yes", "yes", "liver", "right", "3"], ss)
    assert m == {"accuracy": 0.6, "closed_accuracy": 0.5, "open_accuracy": 2 / 3, "n": 5, "n_closed": 2, "n_open": 3}
    with pytest.raises(ValueError):
        vqa_accuracy(["yes"], ss)


class ToyBackbone(nn.Module):
    """Implements the fusion-encoder interface VQAClassifier needs."""

    def __init__(self, vocab=64, width=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.img = nn.Linear(1, width)
        self.fusion_proj = nn.Linear(2 * width, width)

    def image_tokens(self, images):
        return self.img(images.flatten(2).transpose(1, 2))

    def text_hidden(self, ids, mask):
        h = self.emb(ids)
        return h + h.mean(1, keepdim=True)

    def fusion(self, text, mask, image):
        return self.fusion_proj(torch.cat([text, image.mean(1, keepdim=True).expand_as(text)], -1))


class ConstantClsBackbone(ToyBackbone):
    """Like a contrastively pre-trained tower whose raw [CLS] state is the same for every input."""

    def fusion(self, text, mask, image):
        out = super().fusion(text, mask, image)
        return torch.cat([torch.ones_like(out[:, :1]), out[:, 1:]], dim=1)


def toy_tokenize(texts):
    rows = [[1 + (sum(map(ord, w)) % 60) for w in t.lower().split()] for t in texts]
    n = max(map(len, rows))
    ids = torch.zeros(len(rows), n + 1, dtype=torch.long)
    mask = torch.zeros(len(rows), n + 1, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 1 : len(r) + 1] = torch.tensor(r)
        mask[i, : len(r) + 1] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _toy_samples(n, gen):
    images, samples = {}, []
    for i in range(n):
        bright = bool(torch.rand((), generator=gen) < 0.5)
        path = Path(f"img{i}.png")
        images[path] = torch.full((1, 4, 4), 0.8 if bright else 0.2) + 0.05 * torch.randn(1, 4, 4, generator=gen)
        if i % 2:
            samples.append(VQASample(f"q{i}", path, "Is the image bright?", "yes" if bright else "no", "closed"))
        else:
            samples.append(VQASample(f"q{i}", path, "What is the brightness?", "bright" if bright else "dark", "open"))
    return images, samples


@pytest.mark.parametrize("backbone", [ToyBackbone, ConstantClsBackbone])
def test_finetune_learns_toy_task_and_skips_bad_images(backbone):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    images, train = _toy_samples(64, gen)
    images2, test = _toy_samples(32, gen)
    images.update({Path("t" + str(k)): v for k, v in images2.items()})
    test = [VQASample(s.qid, Path("t" + str(s.image_path)), s.question, s.answer, s.answer_type) for s in test]
    test.append(VQASample("missing", Path("nope.png"), "Is the image bright?", "yes", "closed"))

    def load(p):
        if p not in images:
            raise FileNotFoundError(p)
        return images[p]

    vocab = AnswerVocab.from_samples(train)
    assert vocab.answers == ["bright", "dark", "no", "yes"]
    clf = VQAClassifier(backbone(), len(vocab), width=16)
    skips = Skips()
    ds_test = VQADataset(test, vocab, load_image=load, skips=skips)
    before, _ = evaluate_vqa(clf, toy_tokenize, ds_test)
    losses = train_vqa(clf, toy_tokenize, VQADataset(train, vocab, load_image=load), epochs=12, batch_size=16,
                       lr=1e-2, head_lr=1e-2, generator=torch.Generator().manual_seed(1))
    after, preds = evaluate_vqa(clf, toy_tokenize, ds_test)
    assert losses[-1] < losses[0]
    assert after["n"] == 32 and set(skips.items) == {("missing", "missing_image")}
    assert after["closed_accuracy"] >= 0.9 and after["open_accuracy"] >= 0.9, (before, after)
    assert all(p in vocab.answers for p in preds)


def test_training_skips_single_sample_batches():
    gen = torch.Generator().manual_seed(3)
    images, train = _toy_samples(17, gen)  # batches of 8, 8, 1: the last one cannot feed BatchNorm
    vocab = AnswerVocab.from_samples(train)
    clf = VQAClassifier(ToyBackbone(), len(vocab), width=16)
    losses = train_vqa(clf, toy_tokenize, VQADataset(train, vocab, load_image=images.__getitem__), epochs=2,
                       batch_size=8, generator=torch.Generator().manual_seed(0))
    assert len(losses) == 2 * 3 and all(l == l for l in losses)  # steps as planned, none on the 1-sample batch
