"""Gradient-cached accumulation (unimlip_kit.gradcache) against the model's own big-batch forward/backward.

The reference is always the plain path the recipe runs without caching:
``loss_fn(model(batch, terms))`` and one ``backward`` on the whole batch (or, where random
streams must differ per micro-batch, every micro-batch's forward with a graph, the outputs
concatenated, one loss and one backward). Randomness that is drawn per batch (dropout, FLIP
token keeping, MLM masking) is switched off or precomputed where the big batch and the
micro-batches could not share it.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unimlip_kit.gradcache import grad_cache_step
from unimlip_kit.losses import LogitBias, UniMlipLoss, mask_tokens
from unimlip_kit.models import UniMlipModel, UniMlipModelConfig

ALL = ("itc", "itc_feature", "image_ssl", "text_ssl", "itm", "mlm")


def tiny(**kw) -> UniMlipModelConfig:
    base = dict(image_size=32, patch_size=8, vision_width=32, text_width=32, vision_layers=1, text_layers=1,
                vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16, vocab_size=60,
                mask_token_id=4, special_token_ids=[0, 1, 2, 3, 4], max_text_len=16)
    base.update(kw)
    return UniMlipModelConfig(**base)


def make_batch(n: int, seed: int, length: int = 12) -> dict[str, torch.Tensor]:
    """n pairs, captions of varied real length padded to ``length``, a few shared groups, MLM masks drawn once."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.randint(5, 60, (n, length), generator=g) * mask
    ids[:, 0] = 2
    lengths2 = torch.randint(4, length + 1, (n,), generator=g)
    mask2 = (torch.arange(length)[None] < lengths2[:, None]).long()
    ids2 = torch.randint(5, 60, (n, length), generator=g) * mask2
    ids2[:, 0] = 2
    group = torch.arange(n)
    group[1::7] = group[0::7][: group[1::7].shape[0]]  # every 7th pair shares a group with its predecessor
    mlm_ids, mlm_labels = mask_tokens(ids, mask_token_id=4, vocab_size=60, special_token_ids=(0, 1, 2, 3, 4),
                                      attention_mask=mask, prob=0.3, generator=g)
    return {"images": torch.rand(n, 1, 32, 32, generator=g), "images_view2": torch.rand(n, 1, 32, 32, generator=g),
            "input_ids": ids, "attention_mask": mask, "input_ids_aug": ids2, "attention_mask_aug": mask2,
            "group_ids": group, "mlm_input_ids": mlm_ids, "mlm_labels": mlm_labels}


def split(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """Micro-batches as a collate would make them: each padded only to its own longest caption."""
    n = batch["input_ids"].shape[0]
    size = n // parts
    out = []
    for m in range(parts):
        mb = {k: v[m * size:(m + 1) * size] for k, v in batch.items()}
        for ids_key, mask_key in (("input_ids", "attention_mask"), ("input_ids_aug", "attention_mask_aug")):
            keep = int(mb[mask_key].sum(1).max())
            mb[ids_key], mb[mask_key] = mb[ids_key][:, :keep], mb[mask_key][:, :keep]
        keep = int(mb["attention_mask"].sum(1).max())
        mb["mlm_input_ids"], mb["mlm_labels"] = mb["mlm_input_ids"][:, :keep], mb["mlm_labels"][:, :keep]
        out.append(mb)
    return out


def weights_for(terms) -> dict[str, float]:
    return {t: (1.0 if t in terms else 0.0) for t in ALL}


def grads_of(params) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def assert_close_lists(got, want, what: str, rtol: float = 2e-4) -> None:
    scale = max(float(w.abs().max()) for w in want)
    for i, (a, b) in enumerate(zip(got, want)):
        err = float((a - b).abs().max()) if a.numel() else 0.0
        assert err <= rtol * scale + rtol * float(b.abs().max()), f"{what}[{i}] {tuple(b.shape)}: max |diff| {err:.3g} (scale {scale:.3g})"


CASES = {
    "itc": (("itc",), {}, {}),
    "itc_feature": (("itc_feature",), {}, {}),
    "image_ssl_ntxent": (("image_ssl",), {}, {}),
    "image_ssl_simsiam": (("image_ssl",), {"image_ssl": "simsiam"}, {"image_ssl_predictor": True}),
    "text_ssl": (("text_ssl",), {}, {}),
    "itm": (("itm",), {}, {}),
    "mlm": (("mlm",), {}, {}),
    "siglip": (("itc", "itc_feature"), {"itc_loss": "siglip"}, {}),
    "all": (ALL, {}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_16x4_ends_two_steps_with_the_weights_of_64x1(case):
    """Acceptance (issue 14): batch 16 × grad_accum 4 == batch 64 × 1 after two AdamW steps, every term."""
    terms, loss_kw, model_kw = CASES[case]
    cfg = tiny(dropout=0.0, image_keep_ratio=1.0, **model_kw)  # nothing random that a big batch draws differently
    torch.manual_seed(0)
    ref, gc = UniMlipModel(cfg), UniMlipModel(cfg)
    gc.load_state_dict(ref.state_dict())
    bias_ref, bias_gc = LogitBias(), LogitBias()
    loss_fn = UniMlipLoss(weights_for(terms), **loss_kw)
    siglip = loss_kw.get("itc_loss") == "siglip"
    opt_ref = torch.optim.AdamW(list(ref.parameters()) + list(bias_ref.parameters()), lr=1e-3)
    opt_gc = torch.optim.AdamW(list(gc.parameters()) + list(bias_gc.parameters()), lr=1e-3)
    params_ref = list(ref.parameters()) + list(bias_ref.parameters())
    params_gc = list(gc.parameters()) + list(bias_gc.parameters())
    for step in range(2):
        batch = make_batch(64, seed=step)
        out = ref(batch, terms, generator=torch.Generator().manual_seed(100 + step))
        if siglip:
            out["logit_bias"] = bias_ref()
        total, parts = loss_fn(out)
        total.backward()
        res = grad_cache_step(gc, loss_fn, split(batch, 4), terms=terms,
                              generator=torch.Generator().manual_seed(100 + step), group_ids=batch["group_ids"],
                              extra_outputs={"logit_bias": bias_gc()} if siglip else None)
        assert res.pairs == 64 and sorted(res.terms) == sorted(parts)
        for t in parts:
            assert torch.allclose(res.terms[t], parts[t], rtol=1e-5, atol=1e-6), (t, res.terms[t], parts[t])
        assert torch.allclose(res.total, total.detach(), rtol=1e-5, atol=1e-6)
        assert_close_lists(grads_of(params_gc), grads_of(params_ref), f"{case} step {step} grad")
        want = grads_of(ref.parameters())
        scale = max(float(g.abs().max()) for g in want)
        masks = [g.abs() <= 1e-7 * scale for g in want]
        noise_masks = masks if step == 0 else [a | b for a, b in zip(noise_masks, masks)]
        opt_ref.step(), opt_gc.step()
        opt_ref.zero_grad(), opt_gc.zero_grad()
    # A key bias has an exactly-zero gradient (softmax is shift-invariant): both paths hold float noise of
    # ~1e-11 of the gradient scale there, and Adam turns noise into steps of up to lr. Only those entries
    # may differ (by at most Adam's bound); every other weight must agree to float32 tolerance.
    for (name, a), b, noise in zip(ref.named_parameters(), gc.parameters(), noise_masks):
        err = (a - b).detach().abs()
        plain, zero_grad = float(err.masked_fill(noise, 0).max()), float(err.masked_fill(~noise, 0).max())
        assert plain <= 2e-6, f"{case}: {name} differs by {plain:.3g}"
        assert zero_grad <= 2 * 2 * 1e-3, f"{case}: {name} (zero-gradient entries) differs by {zero_grad:.3g}"


def test_itm_partners_cross_micro_batches():
    """The ITM test above is meaningful: with 4 micro-batches most hard negatives live in another one."""
    from unimlip_kit.ops import sample_hard_negatives

    torch.manual_seed(0)
    model = UniMlipModel(tiny(dropout=0.0, image_keep_ratio=1.0))
    out = model(make_batch(64, 0), ("itc",))
    t4i, i4t = sample_hard_negatives(out["image_emb"].detach(), out["text_emb"].detach(), 14.0,
                                     generator=torch.Generator().manual_seed(0))
    own = torch.arange(64) // 16
    assert int((own[t4i] != own).sum()) > 32 and int((own[i4t] != own).sum()) > 32


@pytest.mark.parametrize("tower", ["vit", "resnet"])
@pytest.mark.parametrize("per_pair", ["itm", "mlm"])
def test_one_micro_batch_replays_dropout_and_token_keeping(tower, per_pair):
    """grad_accum = 1 with dropout, FLIP keeping and generator-drawn MLM masks: the same gradient as the plain step.

    Only the replay of every random stream (and the restored BatchNorm statistics of the CNN) can make them agree.
    """
    terms = ("itc", "itc_feature", "image_ssl", "text_ssl", per_pair)
    cfg = tiny(dropout=0.2, image_keep_ratio=0.5, image_tower=tower, cnn_hidden_sizes=[8, 16], cnn_depths=[1, 1])
    torch.manual_seed(0)
    ref, gc = UniMlipModel(cfg), UniMlipModel(cfg)
    gc.load_state_dict(ref.state_dict())
    batch = {k: v for k, v in make_batch(12, 3).items() if not k.startswith("mlm_")}
    loss_fn = UniMlipLoss(weights_for(terms))
    gen = torch.Generator()

    def reseed(m: int) -> None:  # the recipe's per-micro-batch streams
        torch.manual_seed(7 + m)
        gen.manual_seed(5 + m)

    reseed(0)
    total, parts = loss_fn(ref(batch, terms, generator=gen))
    total.backward()
    res = grad_cache_step(gc, loss_fn, [batch], terms=terms, generator=gen, reseed=reseed)
    for t in parts:
        assert torch.allclose(res.terms[t], parts[t], rtol=1e-5, atol=1e-6), t
    assert_close_lists(grads_of(gc.parameters()), grads_of(ref.parameters()), "grad", rtol=1e-5)
    for (name, a), b in zip(ref.named_buffers(), gc.buffers()):
        assert torch.allclose(a.float(), b.float()), f"buffer {name} (BatchNorm statistics must update once)"


def test_replay_with_reseed_matches_every_micro_batch_with_a_graph():
    """3 micro-batches, dropout and token keeping on, streams restarted per micro-batch by ``reseed`` (the recipe's way).

    Reference: each micro-batch's ``model.forward`` with a graph under the same reseeding, the outputs
    concatenated, one ``UniMlipLoss`` over the concatenation (contrastive terms over all 24 pairs, MLM over
    all masked tokens) and one backward: what a GPU large enough for the whole batch would compute.
    """
    terms = ("itc", "itc_feature", "image_ssl", "text_ssl", "mlm")
    cfg = tiny(dropout=0.2, image_keep_ratio=0.5)
    torch.manual_seed(0)
    ref, gc = UniMlipModel(cfg), UniMlipModel(cfg)
    gc.load_state_dict(ref.state_dict())
    micro = [{k: v for k, v in b.items() if not k.startswith("mlm_")} for b in split(make_batch(24, 4), 3)]
    loss_fn = UniMlipLoss(weights_for(terms))
    gen = torch.Generator()

    def reseed(m: int) -> None:
        torch.manual_seed(1000 + m)
        gen.manual_seed(2000 + m)

    outs = []
    for m, b in enumerate(micro):
        reseed(m)
        outs.append(ref(b, terms, generator=gen))
    cat = {k: torch.cat([o[k] for o in outs]) for k in outs[0] if k != "logit_scale"}
    cat["logit_scale"] = outs[0]["logit_scale"]
    total, parts = loss_fn(cat)
    total.backward()
    res = grad_cache_step(gc, loss_fn, micro, terms=terms, generator=gen, reseed=reseed)
    for t in parts:
        assert torch.allclose(res.terms[t], parts[t], rtol=1e-5, atol=1e-6), t
    assert_close_lists(grads_of(gc.parameters()), grads_of(ref.parameters()), "grad")


def test_own_streams_are_reproducible_and_advance_the_caller_by_one_draw():
    """reseed=None: the same entry streams give the same gradient; afterwards torch's RNG stands one draw on."""
    cfg = tiny(dropout=0.2, image_keep_ratio=0.5)
    micro = split(make_batch(12, 5), 2)
    loss_fn = UniMlipLoss(weights_for(ALL))
    grads = []
    for _ in range(2):
        torch.manual_seed(0)
        model = UniMlipModel(cfg)
        torch.manual_seed(11)
        gen = torch.Generator().manual_seed(3)
        grad_cache_step(model, loss_fn, micro, generator=gen)
        grads.append(grads_of(model.parameters()))
        after = torch.rand(2)
        torch.manual_seed(11)
        torch.randint(0, 2**62, (1,))
        assert torch.equal(after, torch.rand(2))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_default_group_ids_keep_micro_batches_apart():
    """Without global group_ids, each micro-batch's (local) ids are renumbered, never merged across micro-batches."""
    from unimlip_kit.gradcache import _group_ids

    a = {"input_ids": torch.zeros(3, 2, dtype=torch.long), "group_ids": torch.tensor([0, 0, 1])}
    b = {"input_ids": torch.zeros(2, 2, dtype=torch.long), "group_ids": torch.tensor([0, 1])}
    c = {"input_ids": torch.zeros(2, 2, dtype=torch.long)}
    assert _group_ids([a, b, c]).tolist() == [0, 0, 1, 2, 3, 4, 5]
    assert _group_ids([c, c]) is None


def test_bad_inputs_name_the_problem():
    model = UniMlipModel(tiny(dropout=0.0))
    b = split(make_batch(8, 0), 2)
    with pytest.raises(ValueError, match="non-empty sequence"):
        grad_cache_step(model, UniMlipLoss(), [])
    with pytest.raises(ValueError, match="non-empty sequence"):
        grad_cache_step(model, UniMlipLoss(), b[0])
    with pytest.raises(ValueError, match="lacks 'images'"):
        grad_cache_step(model, UniMlipLoss(), [{"input_ids": b[0]["input_ids"]}])
    with pytest.raises(ValueError, match="group_ids must have shape \\(8,\\)"):
        grad_cache_step(model, UniMlipLoss(weights_for(("itm",))), b, group_ids=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="logit_bias"):
        grad_cache_step(model, UniMlipLoss(weights_for(("itc",)), itc_loss="siglip"), b)
    with pytest.raises(ValueError, match="nothing to optimise"):
        grad_cache_step(model, UniMlipLoss(weights_for(("itm",))), b, terms=("itc",))


# ------------------------------------------------------------------------------------------- two gloo ranks
DDP_TERMS = ("itc", "itc_feature", "image_ssl", "text_ssl")


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = UniMlipModel(tiny(dropout=0.0, image_keep_ratio=1.0))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        batch = make_batch(32, 1)
        mine = {k: v[16 * rank:16 * (rank + 1)] for k, v in batch.items()}
        # unequal micro-batches on rank 1 (10 + 6) to exercise unequal gathers inside the loss
        parts = split(mine, 2) if rank == 0 else [{k: v[:10] for k, v in mine.items()}, {k: v[10:] for k, v in mine.items()}]
        res = grad_cache_step(ddp, UniMlipLoss(weights_for(DDP_TERMS)), parts, terms=DDP_TERMS)
        torch.save({"grads": grads_of(model.parameters()), "total": res.total}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_on_the_global_batch():
    """DDP, 2 ranks × 16 pairs (rank 1 in unequal micro-batches): every rank's averaged gradient equals 32 × 1 in one process."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        got = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    torch.manual_seed(0)
    model = UniMlipModel(tiny(dropout=0.0, image_keep_ratio=1.0))
    total, _ = UniMlipLoss(weights_for(DDP_TERMS))(model(make_batch(32, 1), DDP_TERMS))
    total.backward()
    want = grads_of(model.parameters())
    for r in range(2):
        assert torch.allclose(got[r]["total"], total.detach(), rtol=1e-5), (r, got[r]["total"], total)
        assert_close_lists(got[r]["grads"], want, f"rank {r} grad")


def _nan_on_one_rank_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from unimlip_kit.utils.checks import NonFiniteError

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=__import__("datetime").timedelta(seconds=60))
    ddp = None
    try:
        torch.manual_seed(0)
        model = UniMlipModel(tiny(dropout=0.0, image_keep_ratio=1.0))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        batch = make_batch(16, 1)
        if rank == 1:  # one rank's images hold a NaN (a corrupt decode): only its embeddings are non-finite
            batch["images"][3] = float("nan")
        try:
            grad_cache_step(ddp, UniMlipLoss(weights_for(DDP_TERMS)), split(batch, 2), terms=DDP_TERMS)
            outcome = "no error"
        except NonFiniteError as err:
            outcome = f"NonFiniteError: {err}"
        open(os.path.join(out_dir, f"rank{rank}.txt"), "w").write(outcome)
    finally:
        # DDP's reducer, left mid-step by the error, must go before its process group: destroyed after it (when
        # the function's locals are collected) it aborted the process now and then ("terminate called ...")
        del ddp
        import gc

        gc.collect()
        try:
            dist.barrier()
        except Exception:  # a rank that failed elsewhere: the test's assertions say so, not a hung barrier
            pass
        dist.destroy_process_group()


def test_a_nan_on_one_rank_stops_every_rank_before_the_gather():
    """Gradient caching under DDP: rank 1 alone meets a NaN; both ranks raise, neither waits in a collective."""
    import time

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        mp.spawn(_nan_on_one_rank_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        took = time.time() - t0
        outcomes = [open(os.path.join(tmp, f"rank{r}.txt")).read() for r in range(2)]
    assert outcomes[0] == "NonFiniteError: another rank's embeddings contain NaN or infinite values"
    assert outcomes[1].startswith("NonFiniteError: micro-batch 0: ") and "contain NaN or infinite values" in outcomes[1]
    assert took < 50  # well inside the 60 s collective timeout: nobody hung
