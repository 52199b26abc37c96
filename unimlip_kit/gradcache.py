r"""Gradient-cached accumulation for :class:`~unimlip_kit.models.UniMlipModel` (Gao et al. 2021, arXiv 2101.06983).

Plain accumulation computes each micro-batch's loss on its own, so ``grad_accum``
micro-batches of ``B`` give each query ``B - 1`` negatives. Gradient caching
computes every contrastive term over the whole accumulated batch of
``N = grad_accum · B`` pairs while the towers only ever hold one micro-batch's
graph. :func:`grad_cache_step` runs one optimizer step's worth of micro-batches:

1. **Embed** every micro-batch without a graph (``torch.no_grad``), in the model's
   training mode, keeping only the contrastive outputs (``image_emb``, ``text_emb``,
   ``image_emb_feat``, ``text_emb_feat``, ``image_z1/z2`` (+ ``p1/p2``),
   ``text_h1/h2``): O(N·D) memory. The random streams of micro-batch ``m`` are
   restarted first (by the caller's ``reseed(m)``, or from seeds the step derives).
2. **Cached loss**: the contrastive terms of :class:`~unimlip_kit.losses.UniMlipLoss`
   (ITC, feature-level ITC, NT-Xent or SimSiam, SimCSE; InfoNCE or SigLIP) over the
   concatenated embeddings, made leaves, through the O(N·D) core; one backward gives
   :math:`g_k = \partial\mathcal L_c/\partial e_k` for every embedding row (and the
   logit scale's/bias's gradient directly).
3. **Hard negatives over the whole batch** (ITM): :func:`unimlip_kit.ops.sample_hard_negatives`
   on the concatenated ``image_emb``/``text_emb`` (same-group pairs excluded).
4. **Replay** micro-batch ``m`` with a graph under the *same* random streams (dropout,
   FLIP token keeping; MLM masks are drawn once in step 1 and reused) and run one
   backward of ``Σ_k ⟨e_k, g_k⟩ + w_itm·L_itm^{(m)} + w_mlm·L_mlm^{(m)}``
   (``torch.autograd.backward(embeddings + [per-pair loss], grads + [1])``).

Per-pair terms are weighted so their sum over micro-batches is the big-batch mean:
ITM by ``M_m / M`` (its pairs over all ITM pairs), MLM by ``K_m / K`` (its masked
tokens over all masked tokens). The result is the gradient of the objective on one
batch of ``N`` (``tests/test_gradcache.py``: 16 × 4 ends two AdamW steps with the
weights of 64 × 1, every term).

**ITM partners in other micro-batches.** Image ``i``'s hard negative text (or text
``j``'s hard negative image) may live in another micro-batch. Each ITM pair is
computed once, in the replay of the micro-batch that owns its anchor, and the
partner's tower states are *recomputed* there with a graph from that micro-batch's
stored inputs (view-1 image or caption; at most ``B`` foreign images and ``B``
foreign captions per micro-batch), so gradient also reaches the partner's tower as
in one big batch, and memory stays one (≤ 2×-row) micro-batch, independent of N.
Price: one more tower pass over the foreign rows when ITM is on. With tower dropout
> 0 the recomputed partner draws a fresh dropout mask (its own micro-batch's mask
cannot be replayed row by row); positives, MLM and every contrastive term replay
exactly. The alternative, caching every row's token states (N·(T+L)·W floats), was
not chosen: at ViT-B/16 scale that is ~0.4 MB per pair in bf16.

**Distributed.** The cached loss gathers every rank's accumulated batch through
:func:`unimlip_kit.distributed.all_gather_with_grad` (inside the losses), so it is the
loss of the global batch of ``W · N``; each rank's embedding gradient is
:math:`W\,\partial\mathcal L/\partial e`. The replays call the model's parts directly
(a ``DistributedDataParallel`` wrapper is unwrapped and its forward bypassed, so its
hooks stay idle) and the parameter gradients are averaged over ranks at the end, in
buckets, as DDP would (``sync_gradients``). Hard negatives are drawn from this rank's
accumulated batch. DDP's per-forward buffer broadcast does not happen; BatchNorm
running statistics are updated once per micro-batch by the replay only (step 1
restores them), as with plain accumulation, and normalise with micro-batch
statistics, as plain accumulation does (no method can make BatchNorm see N rows).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import torch
import torch.distributed as dist
from torch import nn

from unimlip_kit.distributed import any_rank, is_distributed
from unimlip_kit.ops.hard_negatives import sample_hard_negatives
from unimlip_kit.utils.checks import NonFiniteError
from unimlip_kit.utils.seeding import derive_seed

__all__ = ["CONTRASTIVE_TERMS", "GradCacheOutput", "PER_PAIR_TERMS", "grad_cache_step"]

#: Terms computed over the whole accumulated batch from cached embeddings.
CONTRASTIVE_TERMS = ("itc", "itc_feature", "image_ssl", "text_ssl")
#: Terms accumulated micro-batch by micro-batch (ITM's negatives come from the whole batch).
PER_PAIR_TERMS = ("itm", "mlm")

# every model output a contrastive term can read (the logit scale/bias are not cached: they are parameters)
_EMBEDDING_KEYS = ("image_emb", "text_emb", "image_emb_feat", "text_emb_feat", "image_z1", "image_z2",
                   "image_p1", "image_p2", "text_h1", "text_h2")


class GradCacheOutput(NamedTuple):
    """What :func:`grad_cache_step` returns: the accumulated batch's loss values (detached) and its size.

    Attributes:
        total: the weighted total over the whole accumulated batch (0-dim, detached).
        terms: each enabled term's unweighted value (contrastive terms over all N pairs, ITM and MLM
            the means over all pairs / masked tokens of the N pairs).
        pairs: N, the pairs of this rank's accumulated batch.

    Example:
        >>> out = GradCacheOutput(torch.tensor(1.5), {"itc": torch.tensor(1.5)}, 64)
        >>> out.pairs, float(out.terms["itc"])
        (64, 1.5)
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    pairs: int


# ---------------------------------------------------------------------------------------------- random streams
def _own_streams(generator: torch.Generator | None) -> tuple[Callable[[int], None], Callable[[], None]]:
    """``reseed(m)`` from one seed drawn from torch's global RNG, and ``restore()`` of the caller's streams.

    Micro-batch ``m`` restarts torch's global RNG (CPU and CUDA) at ``derive_seed(b, "gradcache", m)``
    and the generator at ``derive_seed(b, "gradcache-generator", m)``, ``b`` drawn once per step, so the
    micro-batches' streams never overlap; ``restore()`` puts the global RNG one draw past its entry state
    and the generator back at its entry state.
    """
    base = int(torch.randint(0, 2**62, (1,)))
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    gen_state = generator.get_state() if generator is not None else None

    def reseed(m: int) -> None:
        torch.manual_seed(derive_seed(base, "gradcache", m))
        if generator is not None:
            generator.manual_seed(derive_seed(base, "gradcache-generator", m))

    def restore() -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if generator is not None:
            generator.set_state(gen_state)

    return reseed, restore


def _batchnorm_buffers(model: nn.Module) -> list[tuple[nn.Module, dict[str, torch.Tensor]]]:
    out = []
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training and mod.track_running_stats:
            out.append((mod, {k: b.clone() for k, b in mod.named_buffers(recurse=False) if b is not None}))
    return out


def _restore_buffers(saved: list[tuple[nn.Module, dict[str, torch.Tensor]]]) -> None:
    with torch.no_grad():
        for mod, bufs in saved:
            for k, v in bufs.items():
                getattr(mod, k).copy_(v)


# ---------------------------------------------------------------------------------------------- the model's passes
def _tower_outputs(model: nn.Module, batch: Mapping[str, torch.Tensor], terms: set[str],
                   generator: torch.Generator | None):
    """The contrastive outputs of ``UniMlipModel.forward`` in its order of random draws, plus view-1 states."""
    return model.tower_outputs(batch, terms, generator=generator)


def _pad_cols(x: torch.Tensor, length: int, value: float | int = 0) -> torch.Tensor:
    if x.shape[1] == length:
        return x
    pad = x.new_full((x.shape[0], length - x.shape[1]) + tuple(x.shape[2:]), value)
    return torch.cat([x, pad], dim=1)


def _text_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return mask if mask is not None else torch.ones_like(batch["input_ids"])


def _gather_rows(batches: Sequence[Mapping[str, torch.Tensor]], offsets: torch.Tensor, rows: torch.Tensor,
                 keys: Sequence[str], pad_id: int) -> list[torch.Tensor]:
    """``keys`` of the global ``rows`` (sorted) from the micro-batches that hold them; token keys padded to one length."""
    micro = torch.searchsorted(offsets, rows, right=True) - 1
    parts: list[list[torch.Tensor]] = [[] for _ in keys]
    for m in micro.unique().tolist():
        local = rows[micro == m] - offsets[m]
        b = batches[m]
        for p, k in zip(parts, keys):
            src = _text_mask(b) if k == "attention_mask" else b[k]
            p.append(src[local.to(src.device)])
    out = []
    for p, k in zip(parts, keys):
        if p[0].dim() == 2 and k in ("input_ids", "attention_mask"):
            length = max(t.shape[1] for t in p)
            p = [_pad_cols(t, length, pad_id if k == "input_ids" else 0) for t in p]
        out.append(torch.cat(p))
    return out


def _itm_micro(model: nn.Module, batches, batch: Mapping[str, torch.Tensor], offsets: torch.Tensor, m: int,
               img_tokens: torch.Tensor,
               txt_hidden: torch.Tensor, t4i: torch.Tensor, i4t: torch.Tensor):
    """(logits, labels) of the ITM pairs anchored in micro-batch ``m``, partners recomputed with a graph."""
    r0, r1 = int(offsets[m]), int(offsets[m + 1])
    b, dev = r1 - r0, img_tokens.device
    t4i_m, i4t_m = t4i[r0:r1].to(dev), i4t[r0:r1].to(dev)
    img_has, txt_has = t4i_m >= 0, i4t_m >= 0
    neg_text, neg_image = t4i_m[img_has], i4t_m[txt_has]  # global rows of the partners
    foreign_txt = neg_text[(neg_text < r0) | (neg_text >= r1)].unique()
    foreign_img = neg_image[(neg_image < r0) | (neg_image >= r1)].unique()

    pad_id = int(getattr(model.config, "pad_token_id", 0))
    mask = _text_mask(batch).to(dev)
    image_states, text_states, text_masks = [img_tokens], [txt_hidden], [mask]
    if foreign_img.numel():
        (imgs,) = _gather_rows(batches, offsets.cpu(), foreign_img.cpu(), ("images",), pad_id)
        image_states.append(model.image_tokens(imgs.to(dev)))
    if foreign_txt.numel():
        ids_f, mask_f = _gather_rows(batches, offsets.cpu(), foreign_txt.cpu(), ("input_ids", "attention_mask"), pad_id)
        ids_f, mask_f = ids_f.to(dev), mask_f.to(dev)
        text_states.append(model.text_hidden(ids_f, mask_f))
        text_masks.append(mask_f)
    length = max(t.shape[1] for t in text_states)
    all_img = torch.cat(image_states)
    all_txt = torch.cat([_pad_cols(t, length) for t in text_states])
    all_mask = torch.cat([_pad_cols(t, length) for t in text_masks])

    def position(rows: torch.Tensor, foreign: torch.Tensor) -> torch.Tensor:
        inside = (rows >= r0) & (rows < r1)
        pos = rows - r0
        if foreign.numel():
            pos = torch.where(inside, pos, b + torch.searchsorted(foreign, rows))
        return pos

    ar = torch.arange(b, device=dev)
    image_index = torch.cat([ar, ar[img_has], position(neg_image, foreign_img)])
    text_index = torch.cat([ar, position(neg_text, foreign_txt), ar[txt_has]])
    labels = torch.zeros(image_index.shape[0], dtype=torch.long, device=dev)
    labels[:b] = 1
    fused = model.fuse(all_txt[text_index], all_mask[text_index], all_img[image_index])
    return model.itm_head(fused[:, 0]), labels


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _average_gradients(model: nn.Module, bucket_bytes: int = 25 * 2**20) -> None:
    """DDP's gradient average over ranks: parameters with a gradient on any rank, in flat buckets."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    world = dist.get_world_size()
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    todo = []
    for p, h in zip(params, has.tolist()):
        if h:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            todo.append(p.grad)
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for g in todo:
        buckets.setdefault((g.dtype, g.device), []).append(g)
    for grads in buckets.values():
        start = 0
        while start < len(grads):
            chunk, size = [], 0
            while start < len(grads) and (not chunk or size + grads[start].numel() * grads[start].element_size() <= bucket_bytes):
                chunk.append(grads[start])
                size += grads[start].numel() * grads[start].element_size()
                start += 1
            flat = torch.cat([g.reshape(-1) for g in chunk])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= world
            off = 0
            for g in chunk:
                g.copy_(flat[off: off + g.numel()].view_as(g))
                off += g.numel()


def _renumber_groups(parts: Sequence[tuple[int, torch.Tensor | None]]) -> torch.Tensor | None:
    """Per-micro-batch ``(size, group_ids or None)`` renumbered so groups of different micro-batches never merge."""
    if all(g is None for _, g in parts):
        return None
    out, base = [], 0
    for n, g in parts:
        g = torch.arange(n) if g is None else torch.as_tensor(g).reshape(-1).long().cpu()
        g = torch.unique(g, return_inverse=True)[1]
        out.append(g + base)
        base += int(g.max()) + 1 if n else 0
    return torch.cat(out)


def _group_ids(batches: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor | None:
    return _renumber_groups([(b["input_ids"].shape[0], b.get("group_ids")) for b in batches])


def _check_batches(batches: Sequence[Mapping[str, torch.Tensor]]) -> None:
    if isinstance(batches, Mapping) or not isinstance(batches, Sequence) or len(batches) == 0:
        raise ValueError(f"batches must be a non-empty sequence of micro-batch mappings, got {type(batches).__name__}")


def _check_micro(m: int, b: Mapping[str, torch.Tensor]) -> int:
    for key in ("images", "input_ids"):
        if key not in b:
            raise ValueError(f"micro-batch {m} lacks {key!r}; it has {sorted(b)}")
    n = b["input_ids"].shape[0]
    if n == 0 or b["images"].shape[0] != n:
        raise ValueError(f"micro-batch {m} has {b['images'].shape[0]} images and {n} captions; "
                         f"each micro-batch needs the same number (>= 1) of both")
    g = b.get("group_ids")
    if g is not None and torch.as_tensor(g).reshape(-1).shape[0] != n:
        raise ValueError(f"micro-batch {m}: group_ids has {torch.as_tensor(g).reshape(-1).shape[0]} entries for {n} pairs")
    return int(n)


# ---------------------------------------------------------------------------------------------- the four stages
class _PerPairPlan(NamedTuple):
    """Stage 3's result: ITM's hard negatives over the whole batch and the per-pair terms' denominators."""

    t4i: torch.Tensor | None  # per image row, the global row of its hard negative text (-1: none); None without ITM
    i4t: torch.Tensor | None  # per text row, the global row of its hard negative image (-1: none)
    itm_total: int  # ITM pairs over the accumulated batch (positives and negatives)
    mlm_total: int  # masked tokens over the accumulated batch


def _embed_without_graph(core: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], terms: set[str],
                         per_pair: Sequence[str], generator: torch.Generator | None, reseed: Callable[[int], None],
                         restore: Callable[[], None] | None):
    """Stage 1: every micro-batch's contrastive outputs without a graph, concatenated over the accumulated batch.

    Micro-batch ``m`` runs after ``reseed(m)``; with MLM its masked inputs are drawn here once (the replay
    reuses them). BatchNorm running statistics are restored afterwards. A NaN or infinity met by any rank
    raises :class:`NonFiniteError` on every rank (one all-reduce) before stage 2's gathers. ``restore``
    (given when the step drew its own streams) runs before that error and before returning, so that stage
    3's hard negatives come from the caller's generator as it stood at entry.

    Returns:
        ``(cache, mlm_inputs, groups, offsets, device)``: the (N, ...) outputs by key, each micro-batch's
        ``(input_ids, labels)`` for MLM, its ``(size, group_ids)``, the row offsets ``[0, B_0, B_0 + B_1, ...]``
        and the first micro-batch's device.
    """
    saved_bn = _batchnorm_buffers(core)
    cached: dict[str, list[torch.Tensor]] = {}
    mlm_inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
    sizes: list[int] = []
    groups: list[tuple[int, torch.Tensor | None]] = []
    nonfinite: NonFiniteError | None = None
    with torch.no_grad():
        for m in range(len(batches)):
            batch = batches[m]  # a lazy Sequence may rebuild the micro-batch on each access
            sizes.append(_check_micro(m, batch))
            groups.append((sizes[-1], batch.get("group_ids")))
            if m == 0:
                device = batch["images"].device
            reseed(m)
            try:
                out, _, _ = _tower_outputs(core, batch, terms, generator)
            except NonFiniteError as err:
                nonfinite = err
                break
            bad = [k for k, v in out.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
            if bad:
                nonfinite = NonFiniteError(f"micro-batch {m}: {', '.join(bad)} contain NaN or infinite values",
                                           name=bad[0])
                break
            for k, v in out.items():
                cached.setdefault(k, []).append(v.detach())
            if "mlm" in per_pair:
                mlm_inputs.append(tuple(t.detach() for t in core._masked(batch, generator)))
    _restore_buffers(saved_bn)
    # every rank learns of a NaN any of them met before the gathers of stage 2, so none is left waiting there
    if any_rank(nonfinite is not None, device):
        if restore is not None:
            restore()
        raise nonfinite or NonFiniteError("another rank's embeddings contain NaN or infinite values", name="embeddings")
    offsets = torch.tensor([0] + sizes).cumsum(0)
    if restore is not None:
        restore()  # the hard negatives of stage 3 come from the caller's generator as it stood at entry
    cache = {k: torch.cat(v) for k, v in cached.items()}
    return cache, mlm_inputs, groups, offsets, device


def _contrastive_gradients(core: nn.Module, loss_fn: nn.Module, cache: dict[str, torch.Tensor],
                           contrastive: Sequence[str], scale: torch.Tensor,
                           extra_outputs: Mapping[str, torch.Tensor] | None
                           ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stage 2: the contrastive terms over the whole accumulated batch and the gradient of every embedding row.

    The cached embeddings are made leaves in place, the weighted sum of ``contrastive`` runs once (the losses
    gather every rank's batch) and one backward gives each row its gradient; the logit scale's (and bias's)
    gradient goes straight to ``.grad``. Returns ``(values, grads)``: each term's detached value, and the
    (N, ...) gradient of each embedding key. Both empty when no contrastive term is on.
    """
    weights = loss_fn.weights
    values: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    if contrastive:
        leaves = {k: v.requires_grad_(True) for k, v in cache.items() if k in _EMBEDDING_KEYS}
        inputs: dict[str, Any] = dict(leaves, logit_scale=scale)
        bias = getattr(core, "logit_bias", None)
        if bias is not None:
            inputs["logit_bias"] = bias() if callable(bias) else bias
        inputs.update(extra_outputs or {})
        total_c = None
        for t in contrastive:
            missing = [k for k in loss_fn.term_keys(t) if inputs.get(k) is None]
            if missing:
                raise ValueError(f"term {t!r} needs {missing}; the model gives {sorted(cache)} "
                                 f"(SigLIP needs a logit_bias: build the model with logit_bias_init, or pass extra_outputs={{'logit_bias': ...}})")
            value = getattr(loss_fn, f"loss_{t}")(inputs)
            values[t] = value.detach()
            total_c = weights[t] * value if total_c is None else total_c + weights[t] * value
        total_c.backward()
        grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
    return values, grads


def _hard_negatives_and_totals(cache: dict[str, torch.Tensor], scale: torch.Tensor, per_pair: Sequence[str],
                               groups: Sequence[tuple[int, torch.Tensor | None]], group_ids: torch.Tensor | None,
                               mlm_inputs: Sequence[tuple[torch.Tensor, torch.Tensor]], offsets: torch.Tensor,
                               device: torch.device, generator: torch.Generator | None) -> _PerPairPlan:
    """Stage 3: ITM's hard negatives over the whole accumulated batch, and the ITM pairs and masked tokens in all.

    Same-group pairs are excluded (``group_ids``, else the micro-batches' groups renumbered apart); the
    negatives are drawn from ``generator``. Raises when ``group_ids`` does not cover the batch or MLM finds
    no masked token anywhere.
    """
    n = int(offsets[-1])
    t4i = i4t = None
    itm_total = mlm_total = 0
    if "itm" in per_pair:
        ids = group_ids if group_ids is not None else _renumber_groups(groups)
        if ids is not None and tuple(ids.shape) != (n,):
            raise ValueError(f"group_ids must have shape ({n},) for the accumulated batch, got {tuple(ids.shape)}")
        t4i, i4t = sample_hard_negatives(cache["image_emb"].detach(), cache["text_emb"].detach(), scale.detach(),
                                         ids=None if ids is None else ids.to(device), generator=generator)
        itm_total = n + int((t4i >= 0).sum()) + int((i4t >= 0).sum())
    if "mlm" in per_pair:
        mlm_total = sum(int((lab != -100).sum()) for _, lab in mlm_inputs)
        if mlm_total == 0:
            raise ValueError("the mlm term found no masked token in the whole accumulated batch")
    return _PerPairPlan(t4i, i4t, itm_total, mlm_total)


def _replay_with_graph(core: nn.Module, loss_fn: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]],
                       terms: set[str], per_pair: Sequence[str], generator: torch.Generator | None,
                       reseed: Callable[[int], None], restore: Callable[[], None] | None, *, offsets: torch.Tensor,
                       grads: Mapping[str, torch.Tensor], plan: _PerPairPlan,
                       mlm_inputs: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 4: replay each micro-batch with a graph and backpropagate its rows' cached gradients and per-pair terms.

    Micro-batch ``m`` runs again after ``reseed(m)``; one ``torch.autograd.backward(embeddings + [per-pair
    loss], grads + [1])``, ITM weighted by its pairs over ``plan.itm_total`` (partners in other micro-batches
    recomputed with a graph) and MLM by its masked tokens over ``plan.mlm_total``. With the step's own
    streams, they are restored afterwards and the generator left where stage 3 left it. Returns the
    detached ITM and MLM values over the accumulated batch.
    """
    weights = loss_fn.weights
    t4i, i4t, itm_total, mlm_total = plan
    gen_after = generator.get_state() if restore is not None and generator is not None else None
    itm_sum = torch.zeros((), device=device)
    mlm_sum = torch.zeros((), device=device)
    for m in range(len(batches)):
        batch = batches[m]
        reseed(m)
        r0, r1 = int(offsets[m]), int(offsets[m + 1])
        out, img_tokens, txt_hidden = _tower_outputs(core, batch, terms, generator)
        tensors = [out[k] for k in grads]
        tensor_grads = [grads[k][r0:r1] for k in grads]
        pair_loss = None
        if "itm" in per_pair:
            logits, labels = _itm_micro(core, batches, batch, offsets, m, img_tokens, txt_hidden, t4i, i4t)
            part = loss_fn.loss_itm({"itm_logits": logits, "itm_labels": labels}) * (labels.shape[0] / itm_total)
            itm_sum += part.detach()
            pair_loss = weights["itm"] * part
        if "mlm" in per_pair:
            mlm_ids, mlm_labels = mlm_inputs[m]
            selected = mlm_labels != -100
            k_m = int(selected.sum())
            if k_m:
                mask = batch.get("attention_mask")
                fused = core.fuse(core.text_hidden(mlm_ids, mask), mask, img_tokens)
                part = loss_fn.loss_mlm({"mlm_logits": core.mlm_head(fused[selected]),
                                         "mlm_labels": mlm_labels[selected]}) * (k_m / mlm_total)
                mlm_sum += part.detach()
                pair_loss = weights["mlm"] * part if pair_loss is None else pair_loss + weights["mlm"] * part
        if pair_loss is not None:
            tensors.append(pair_loss)
            tensor_grads.append(torch.ones_like(pair_loss))
        if tensors:
            torch.autograd.backward(tensors, tensor_grads)
        del out, img_tokens, txt_hidden, tensors, tensor_grads
    if restore is not None:
        restore()
        if gen_after is not None:
            generator.set_state(gen_after)
    return itm_sum, mlm_sum


# ---------------------------------------------------------------------------------------------- the step
def grad_cache_step(
    model: nn.Module,
    loss_fn: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    terms: Iterable[str] | None = None,
    generator: torch.Generator | None = None,
    reseed: Callable[[int], None] | None = None,
    group_ids: torch.Tensor | None = None,
    extra_outputs: Mapping[str, torch.Tensor] | None = None,
    sync_gradients: bool = True,
) -> GradCacheOutput:
    r"""Accumulate into ``.grad`` the gradient of ``loss_fn`` on the concatenation of ``batches`` (GradCache).

    Gao, Zhang, Han, Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
    Limited Setup" (arXiv 2101.06983); the four stages are in the module docstring. The gradient
    equals that of one forward/backward of ``loss_fn(model(cat(batches)))`` when every random
    draw replays (dropout 0 or replayed streams, per-row augmentation done before), to float
    rounding; contrastive memory is O(N·D), tower memory one micro-batch.

    Args:
        model: a :class:`~unimlip_kit.models.UniMlipModel` (or DDP around one) in the mode to train in.
        loss_fn: a :class:`~unimlip_kit.losses.UniMlipLoss`; its weights, ``itc_loss`` (InfoNCE or
            SigLIP), ``image_ssl`` and ``backend`` apply.
        batches: the micro-batches of this optimizer step (the model's batch mappings, already
            augmented and tokenised), read twice (embedding pass, replay) and, with ITM, again
            for the partner rows of other micro-batches. A list keeps every input in memory
            (N images); a lazy ``Sequence`` whose ``__getitem__`` rebuilds micro-batch ``m``
            identically (same augmentation seed) keeps one at a time.
        terms: the model terms to run (default: ``loss_fn.enabled_terms``).
        generator: the model's generator (token keeping, MLM masking, hard negatives).
        reseed: ``reseed(m)`` restarts every random stream of micro-batch ``m`` (the recipe's
            ``derive_seed(seed, ..., step, m, rank)`` for torch's global RNG and ``generator``);
            called before its embedding pass and again before its replay. The hard negatives are
            drawn from ``generator`` after the last embedding pass. ``None``: one seed ``b`` is drawn
            from torch's global RNG; micro-batch ``m`` restarts it at ``derive_seed(b, "gradcache", m)``
            and ``generator`` at ``derive_seed(b, "gradcache-generator", m)``; the hard negatives come
            from ``generator`` as it stood at entry; afterwards the global RNG stands one draw on.
        group_ids: (N,) ids over the whole accumulated batch: same-id pairs are never each other's
            hard negative. Default: each micro-batch's ``group_ids``, renumbered so that groups of
            different micro-batches stay apart (pass global ids to exclude across micro-batches).
        extra_outputs: differentiable outputs the loss reads that are not per-pair, e.g.
            ``{"logit_bias": bias()}`` for SigLIP; a model attribute ``logit_bias`` is used otherwise.
        sync_gradients: under ``torch.distributed``, average the parameter gradients over ranks at the
            end (what DDP's backward does).

    Returns:
        :class:`GradCacheOutput` (detached values for logging; the gradients are in ``.grad``).

    Example:
        >>> from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
        >>> from unimlip_kit.losses import UniMlipLoss
        >>> _ = torch.manual_seed(0)
        >>> cfg = UniMlipModelConfig(image_size=32, vision_layers=1, text_layers=1, vision_width=32, text_width=32,
        ...                          vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16,
        ...                          vocab_size=50, mask_token_id=3, special_token_ids=[0, 1, 2, 3])
        >>> model, loss_fn = UniMlipModel(cfg), UniMlipLoss(weights={"mlm": 0})
        >>> micro = [{"images": torch.rand(4, 1, 32, 32), "input_ids": torch.randint(4, 50, (4, 7))} for _ in range(3)]
        >>> out = grad_cache_step(model, loss_fn, micro, generator=torch.Generator().manual_seed(0))
        >>> out.pairs, sorted(out.terms), all(p.grad is not None for p in model.text_proj.parameters())
        (12, ['image_ssl', 'itc', 'itc_feature', 'itm', 'text_ssl'], True)
    """
    _check_batches(batches)
    core = _unwrap(model)
    terms = set(loss_fn.enabled_terms if terms is None else terms)
    weights = loss_fn.weights
    contrastive = [t for t in CONTRASTIVE_TERMS if t in terms and weights.get(t, 0) > 0]
    per_pair = [t for t in PER_PAIR_TERMS if t in terms and weights.get(t, 0) > 0]
    if not contrastive and not per_pair:
        raise ValueError(f"nothing to optimise: terms {sorted(terms)} with weights {weights}")
    restore = None
    if reseed is None:
        reseed, restore = _own_streams(generator)

    cache, mlm_inputs, groups, offsets, device = _embed_without_graph(core, batches, terms, per_pair, generator, reseed,
                                                                      restore)
    scale = core.logit_scale()  # stages 2 and 3 read the same one
    values, grads = _contrastive_gradients(core, loss_fn, cache, contrastive, scale, extra_outputs)
    plan = _hard_negatives_and_totals(cache, scale, per_pair, groups, group_ids, mlm_inputs, offsets, device, generator)
    del cache  # the replays hold the embeddings' gradients, not the embeddings
    itm_sum, mlm_sum = _replay_with_graph(core, loss_fn, batches, terms, per_pair, generator, reseed, restore,
                                          offsets=offsets, grads=grads, plan=plan, mlm_inputs=mlm_inputs, device=device)

    if "itm" in per_pair:
        values["itm"] = itm_sum
    if "mlm" in per_pair:
        values["mlm"] = mlm_sum
    if sync_gradients and is_distributed():
        _average_gradients(core)
    ordered = {t: values[t] for t in loss_fn.enabled_terms if t in values}
    total = torch.stack([weights[t] * v.to(device, torch.float32) for t, v in ordered.items()]).sum()
    return GradCacheOutput(total.detach(), ordered, int(offsets[-1]))
