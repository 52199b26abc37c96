"""Held-out accuracy of the fused-modality heads: ITM with sampled hard negatives, and image-conditioned MLM.

Any model that follows :class:`unimlip_kit.models.UniMlipModel`'s output contract
(``itm_logits``/``itm_labels`` and ``mlm_logits``/``mlm_labels`` from
``model(batch, terms, generator=...)``) can be scored. The model runs in eval mode
(no dropout) under ``torch.no_grad``; hard negatives are drawn exactly as in
training (ALBEF: from the softmax of the contrastive similarities within a batch,
never from the pair's own meaning group) with a seeded generator, so the numbers
are reproducible and comparable with the training loss.

* ITM accuracy: ``mean(argmax logits = label)`` over the positives and hard negatives
  (1 positive : up to 2 negatives, so always answering "no match" scores about 2/3);
  also the cross-entropy, for comparison with the constant-predictor value
  ``H(1/3) = 0.637``, and the accuracy on positives and on negatives separately.
* MLM accuracy: ``mean(argmax logits = original token)`` over the masked positions.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F

__all__ = ["fused_metrics"]


@torch.no_grad()
def fused_metrics(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    terms: tuple[str, ...] = ("itm", "mlm"),
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """ITM and MLM accuracy (and loss) of ``model`` over held-out ``batches`` of model inputs.

    Each batch is a mapping the model's ``forward`` takes (``images``, ``input_ids``,
    ``attention_mask``, optionally ``group_ids``). Returns ``itm_accuracy``,
    ``itm_loss``, ``itm_positive_accuracy``, ``itm_negative_accuracy``, ``itm_pairs``,
    ``mlm_accuracy``, ``mlm_loss``, ``mlm_tokens`` for the requested ``terms``.

    Example:
        >>> from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
        >>> cfg = UniMlipModelConfig(vision_layers=1, text_layers=1, vision_width=32, text_width=32, vision_heads=2,
        ...                          text_heads=2, fusion_heads=2, embed_dim=16, vocab_size=50, mask_token_id=3,
        ...                          special_token_ids=[0, 1, 2, 3])
        >>> model = UniMlipModel(cfg)
        >>> g = torch.Generator().manual_seed(0)
        >>> batch = {"images": torch.rand(6, 1, 64, 64, generator=g), "input_ids": torch.randint(4, 50, (6, 9), generator=g),
        ...          "attention_mask": torch.ones(6, 9, dtype=torch.long)}
        >>> m = fused_metrics(model, [batch], generator=torch.Generator().manual_seed(0))
        >>> 0 <= m["itm_accuracy"] <= 1 and m["itm_pairs"] == 18 and m["mlm_tokens"] > 0
        True
    """
    unknown = set(terms) - {"itm", "mlm"}
    if unknown:
        raise ValueError(f"fused_metrics scores 'itm' and 'mlm' only, got {sorted(unknown)}")
    was = model.training
    model.eval()
    sums: dict[str, float] = {k: 0.0 for k in ("itm_hit", "itm_loss", "itm_n", "pos_hit", "pos_n", "neg_hit", "neg_n",
                                                "mlm_hit", "mlm_loss", "mlm_n")}
    try:
        for batch in batches:
            if batch["input_ids"].shape[0] < 2:
                continue  # one pair has no negative
            need = tuple(terms) + (("itc",) if "itm" in terms else ())
            out = model(batch, need, generator=generator)
            if "itm" in terms:
                logits, labels = out["itm_logits"].float(), out["itm_labels"]
                hit = logits.argmax(-1) == labels
                sums["itm_hit"] += float(hit.sum())
                sums["itm_loss"] += float(F.cross_entropy(logits, labels, reduction="sum"))
                sums["itm_n"] += labels.numel()
                sums["pos_hit"] += float(hit[labels == 1].sum())
                sums["pos_n"] += float((labels == 1).sum())
                sums["neg_hit"] += float(hit[labels == 0].sum())
                sums["neg_n"] += float((labels == 0).sum())
            if "mlm" in terms and out["mlm_labels"].numel():
                logits, labels = out["mlm_logits"].float(), out["mlm_labels"]
                sums["mlm_hit"] += float((logits.argmax(-1) == labels).sum())
                sums["mlm_loss"] += float(F.cross_entropy(logits, labels, reduction="sum"))
                sums["mlm_n"] += labels.numel()
    finally:
        model.train(was)

    def ratio(a: str, b: str) -> float:
        return sums[a] / sums[b] if sums[b] else float("nan")

    res: dict[str, Any] = {}
    if "itm" in terms:
        res.update(itm_accuracy=ratio("itm_hit", "itm_n"), itm_loss=ratio("itm_loss", "itm_n"),
                   itm_positive_accuracy=ratio("pos_hit", "pos_n"), itm_negative_accuracy=ratio("neg_hit", "neg_n"),
                   itm_pairs=int(sums["itm_n"]))
    if "mlm" in terms:
        res.update(mlm_accuracy=ratio("mlm_hit", "mlm_n"), mlm_loss=ratio("mlm_loss", "mlm_n"), mlm_tokens=int(sums["mlm_n"]))
    return res
