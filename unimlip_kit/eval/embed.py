"""Embed a dataset with a dual encoder: joint-space image and text embeddings, batched, without gradients.

``model`` needs ``encode_image(images)`` and ``encode_text(input_ids, attention_mask)``
(:class:`unimlip_kit.models.UniMlipModel`); ``tokenize(list[str])`` returns a mapping
with ``input_ids`` (and optionally ``attention_mask``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch

__all__ = ["encode_texts", "encode_loader"]

Tokenize = Callable[[list[str]], Mapping[str, torch.Tensor]]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenize: Tokenize, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """(N, D) text embeddings of ``texts`` (on the CPU), in order.

    Example:
        >>> class M(torch.nn.Module):
        ...     def __init__(self): super().__init__(); self.e = torch.nn.Embedding(10, 3)
        ...     def encode_text(self, ids, mask=None): return self.e(ids).mean(1)
        >>> tok = lambda xs: {"input_ids": torch.tensor([[len(x) % 10] for x in xs])}
        >>> encode_texts(M(), tok, ["a", "bb", "ccc"], batch_size=2).shape
        torch.Size([3, 3])
    """
    was = model.training
    model.eval()
    dev = _device(model)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenize(texts[i : i + batch_size])
        mask = enc.get("attention_mask")
        out.append(model.encode_text(enc["input_ids"].to(dev), None if mask is None else mask.to(dev)).float().cpu())
    model.train(was)
    if not out:
        raise ValueError("encode_texts got no texts")
    return torch.cat(out)


@torch.no_grad()
def encode_loader(
    model: torch.nn.Module,
    tokenize: Tokenize,
    batches: Iterable[Mapping[str, Any]],
    *,
    text: bool = True,
    progress: bool = False,
    desc: str = "embedding",
) -> dict[str, Any]:
    """Embed every batch of an image–caption loader (``images``, ``captions``, ``ids``, ``labels``).

    Returns ``image_emb`` (N, D), ``text_emb`` (N, D) when ``text``, ``labels`` (N,)
    and ``ids``; batches' ``skipped`` entries are collected under ``skipped``.

    Example:
        >>> class M(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__(); self.lin = torch.nn.Linear(4, 3); self.e = torch.nn.Embedding(10, 3)
        ...     def encode_image(self, x): return self.lin(x.flatten(1))
        ...     def encode_text(self, ids, mask=None): return self.e(ids).mean(1)
        >>> tok = lambda xs: {"input_ids": torch.tensor([[len(x) % 10] for x in xs])}
        >>> batches = [{"images": torch.rand(2, 1, 2, 2), "captions": ["a", "bb"], "ids": ["p1", "p2"], "labels": [0, 1]},
        ...            {"images": torch.rand(0, 1, 2, 2), "captions": [], "skipped": [("p3", "missing_image")]}]
        >>> out = encode_loader(M(), tok, batches)
        >>> out["image_emb"].shape, out["text_emb"].shape, out["labels"].tolist(), out["ids"], out["skipped"]
        (torch.Size([2, 3]), torch.Size([2, 3]), [0, 1], ['p1', 'p2'], [('p3', 'missing_image')])
    """
    from tqdm.auto import tqdm

    was = model.training
    model.eval()
    dev = _device(model)
    img, txt, labels, ids, skipped = [], [], [], [], []
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        skipped += list(batch.get("skipped", ()))
        if len(batch["images"]) == 0:
            continue
        img.append(model.encode_image(batch["images"].to(dev)).float().cpu())
        if text:
            enc = tokenize(list(batch["captions"]))
            mask = enc.get("attention_mask")
            txt.append(model.encode_text(enc["input_ids"].to(dev), None if mask is None else mask.to(dev)).float().cpu())
        labels.append(torch.as_tensor(batch.get("labels", torch.full((len(batch["images"]),), -1))).long())
        ids += list(batch.get("ids", []))
    model.train(was)
    if not img:
        raise ValueError("no image could be embedded (every sample was skipped or the loader was empty)")
    out: dict[str, Any] = {"image_emb": torch.cat(img), "labels": torch.cat(labels), "ids": ids, "skipped": skipped}
    if text:
        out["text_emb"] = torch.cat(txt)
    return out
