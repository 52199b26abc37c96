"""Meaning-level retrieval, held-out ITM/MLM accuracy and the evaluation suite's VQA filter and floor."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unimlip_kit.eval import fused_metrics, meaning_level_metrics
from unimlip_kit.models import UniMlipModel, UniMlipModelConfig


def naive_meaning(img: torch.Tensor, txt: torch.Tensor, groups: list[str]) -> tuple[float, float, float]:
    s = F.normalize(img.double(), dim=-1) @ F.normalize(txt.double(), dim=-1).T
    n = len(groups)
    i2t = sum(groups[int(s[i].argmax())] == groups[i] for i in range(n)) / n
    t2i = sum(groups[int(s[:, j].argmax())] == groups[j] for j in range(n)) / n
    ceiling = sum(1 / groups.count(g) for g in groups) / n
    return i2t, t2i, ceiling


def test_meaning_level_recall_matches_a_float64_naive_count_in_small_tiles():
    g = torch.Generator().manual_seed(0)
    groups = [f"g{int(k)}" for k in torch.randint(0, 7, (53,), generator=g)]
    centres = torch.randn(7, 12, generator=g)
    gi = torch.tensor([int(x[1:]) for x in groups])
    img = centres[gi] + 0.8 * torch.randn(53, 12, generator=g)
    txt = centres[gi] + 0.8 * torch.randn(53, 12, generator=g)
    m = meaning_level_metrics(img, txt, groups, chunk_size=5)
    i2t, t2i, ceiling = naive_meaning(img, txt, groups)
    assert abs(m["i2t_R@1_meaning"] - i2t) < 1e-12 and abs(m["t2i_R@1_meaning"] - t2i) < 1e-12
    assert abs(m["ceiling_R@1"] - ceiling) < 1e-12 and m["distinct_meanings"] == len(set(groups))
    assert 0.2 < i2t < 1.0  # the data is neither trivial nor hopeless, so the comparison means something


def test_meaning_level_metrics_reject_mismatched_groups():
    import pytest

    with pytest.raises(ValueError, match="one entry per pair"):
        meaning_level_metrics(torch.randn(3, 4), torch.randn(3, 4), ["a", "b"])


def test_fused_metrics_equal_a_manual_count_over_the_model_outputs():
    cfg = UniMlipModelConfig(vision_layers=1, text_layers=1, vision_width=32, text_width=32, vision_heads=2, text_heads=2,
                             fusion_heads=2, embed_dim=16, vocab_size=50, mask_token_id=3, special_token_ids=[0, 1, 2, 3],
                             image_size=32)
    model = UniMlipModel(cfg)
    g = torch.Generator().manual_seed(0)
    batches = [{"images": torch.rand(5, 1, 32, 32, generator=g), "input_ids": torch.randint(4, 50, (5, 8), generator=g),
                "attention_mask": torch.ones(5, 8, dtype=torch.long)} for _ in range(3)]
    m = fused_metrics(model, batches, generator=torch.Generator().manual_seed(7))
    model.eval()
    hit = n = loss = pos = npos = mh = mn = 0.0
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for b in batches:
            out = model(b, ("itm", "mlm", "itc"), generator=gen)
            lg, lb = out["itm_logits"].double(), out["itm_labels"]
            hit += float((lg.argmax(-1) == lb).sum())
            n += lb.numel()
            loss += float(F.cross_entropy(lg, lb, reduction="sum"))
            pos += float((lg.argmax(-1) == lb)[lb == 1].sum())
            npos += float((lb == 1).sum())
            mh += float((out["mlm_logits"].argmax(-1) == out["mlm_labels"]).sum())
            mn += out["mlm_labels"].numel()
    assert m["itm_pairs"] == n == 45
    assert abs(m["itm_accuracy"] - hit / n) < 1e-9 and abs(m["itm_loss"] - loss / n) < 1e-5
    assert abs(m["itm_positive_accuracy"] - pos / npos) < 1e-9
    assert m["mlm_tokens"] == mn and abs(m["mlm_accuracy"] - mh / mn) < 1e-9
    assert model.training is False  # left as it was found (eval here)
