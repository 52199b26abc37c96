"""Two gloo ranks: SigLIP, the open_clip and lightly compat losses and the memory bank across ranks.

Each rank builds its slice of one float64 problem, computes a loss, backpropagates to shared
parameters and averages their gradients over ranks as DDP does. References:

* the single-process loss on the whole batch (float64, logits written out in this file) — the
  averaged gradient must equal its gradient where the loss claims the exact gradient;
* open_clip's own ``ClipLoss`` / ``SigLipLoss`` (every ``dist_impl``) running in the same ranks, when
  its ``loss.py`` is installed — per-rank values and averaged gradients must be identical, which
  also pins down ``gather_with_grad=False`` (feature gradients 1/W of the exact ones).
"""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from peers import open_clip_loss_module

D_IN, D = 6, 5
CLIP_CASES = [(local, gwg) for local in (False, True) for gwg in (False, True)]
SIGLIP_IMPLS = ("bidir", "shift", "reduce", "gather")
EQUAL, UNEQUAL = (4, 4), (3, 5)


def _problem(n_total):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n_total, D_IN, generator=g, dtype=torch.float64),
            torch.randn(n_total, D_IN, generator=g, dtype=torch.float64),
            torch.randn(D, D_IN, generator=g, dtype=torch.float64),
            torch.randn(D, D_IN, generator=g, dtype=torch.float64))


def _params(w_img, w_txt):
    return [w_img.clone().requires_grad_(True), w_txt.clone().requires_grad_(True),
            torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True),
            torch.tensor(-5.0, dtype=torch.float64, requires_grad=True)]


def _features(params, x_img, x_txt):
    return F.normalize(x_img @ params[0].T, dim=1), F.normalize(x_txt @ params[1].T, dim=1)


def _run(fn, x_img, x_txt, w_img, w_txt):
    params = _params(w_img, w_txt)
    img, txt = _features(params, x_img, x_txt)
    loss = fn(img, txt, params[2].exp(), params[3])
    loss.backward()
    return loss.detach(), [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


def _cases(rank, world):
    """(name, sizes, fn) for this rank; fn(img, txt, scale, bias) -> loss."""
    from unimlip_kit.compat.lightly import NTXentLoss
    from unimlip_kit.compat.open_clip import ClipLoss, SigLipLoss
    from unimlip_kit.losses import siglip_loss

    oc = open_clip_loss_module()
    cases = []
    for local, gwg in CLIP_CASES:
        kw = dict(local_loss=local, gather_with_grad=gwg, rank=rank, world_size=world)
        cases.append((f"clip-local{local}-gwg{gwg}-ours", EQUAL, lambda i, t, s, b, kw=kw: ClipLoss(**kw)(i, t, s)))
        if oc is not None:
            cases.append((f"clip-local{local}-gwg{gwg}-open_clip", EQUAL,
                          lambda i, t, s, b, kw=kw: oc.ClipLoss(**kw)(i, t, s)))
    for impl in SIGLIP_IMPLS:
        kw = dict(rank=rank, world_size=world, dist_impl=impl)
        cases.append((f"siglip-{impl}-ours", EQUAL, lambda i, t, s, b, kw=kw: SigLipLoss(**kw)(i, t, s, b)))
        if oc is not None:
            cases.append((f"siglip-{impl}-open_clip", EQUAL, lambda i, t, s, b, kw=kw: oc.SigLipLoss(**kw)(i, t, s, b)))
    cases.append(("siglip-native-unequal", UNEQUAL, lambda i, t, s, b: siglip_loss(i, t, s, b)))
    cases.append(("lightly-gather-unequal", UNEQUAL,
                  lambda i, t, s, b: NTXentLoss(temperature=0.3, gather_distributed=True)(i, t)))
    return cases


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for name, sizes, fn in _cases(rank, world):
            lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
            x_img, x_txt, w_img, w_txt = _problem(sum(sizes))
            loss, grads = _run(fn, x_img[lo:hi], x_txt[lo:hi], w_img, w_txt)
            for g in grads:  # DDP: average parameter gradients over ranks
                dist.all_reduce(g, op=dist.ReduceOp.SUM)
                g /= world
            results[name] = {"loss": loss, "grads": grads}
        from unimlip_kit.losses import MemoryBank

        bank = MemoryBank((8, 3), gather_distributed=True)
        bank.enqueue(torch.full((2 + rank, 3), float(rank + 1)))
        results["bank"] = {"bank": bank.bank.clone(), "ptr": int(bank.ptr)}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks():
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]


# ------------------------------------------------------------------ single-process references (float64, written out)


def _clip_global(img, txt, s, b):
    logits = s * img @ txt.T
    labels = torch.arange(img.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _siglip_global(img, txt, s, b):
    z = 2 * torch.eye(img.shape[0], dtype=img.dtype) - 1
    return -F.logsigmoid(z * (s * img @ txt.T + b)).sum() / img.shape[0]


def _lightly_rank_mean(sizes):
    """lightly's objective under DDP: the mean over ranks of each rank's mean over its own 2·n_r anchors."""

    def loss(img, txt, s, b):
        n = img.shape[0]
        z = torch.cat([img, txt])
        sim = (z @ z.T / 0.3).fill_diagonal_(float("-inf"))
        per_anchor = torch.logsumexp(sim, 1) - sim[torch.arange(2 * n), (torch.arange(2 * n) + n) % (2 * n)]
        total = 0.0
        for r in range(len(sizes)):
            lo, hi = sum(sizes[:r]), sum(sizes[: r + 1])
            rows = torch.cat([torch.arange(lo, hi), torch.arange(lo, hi) + n])
            total = total + per_anchor[rows].mean()
        return total / len(sizes)

    return loss


def _reference(fn, sizes):
    x_img, x_txt, w_img, w_txt = _problem(sum(sizes))
    return _run(fn, x_img, x_txt, w_img, w_txt)


def _assert_grads(got, want, factor=1.0, features_only=False):
    for k, (g, w) in enumerate(zip(got, want)):
        if features_only and k >= 2:
            continue
        torch.testing.assert_close(g, factor * w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("local,gwg", CLIP_CASES)
def test_clip_loss_distributed(ranks, local, gwg):
    name = f"clip-local{local}-gwg{gwg}"
    ref_loss, ref_grads = _reference(_clip_global, EQUAL)
    ours = [r[f"{name}-ours"] for r in ranks]
    mean_loss = sum(o["loss"] for o in ours) / 2
    torch.testing.assert_close(mean_loss, ref_loss, rtol=1e-10, atol=1e-12)
    if gwg:  # exact gradient
        _assert_grads(ours[0]["grads"], ref_grads)
    elif not local:  # open_clip's default: feature gradients are 1/W of the exact ones, the scale's is exact
        _assert_grads(ours[0]["grads"], ref_grads, factor=0.5, features_only=True)
        torch.testing.assert_close(ours[0]["grads"][2], ref_grads[2], rtol=1e-9, atol=1e-12)
    if f"{name}-open_clip" not in ranks[0]:
        pytest.skip("open_clip's loss.py not installed: compared with the single-process reference only")
    for r in ranks:
        torch.testing.assert_close(r[f"{name}-ours"]["loss"], r[f"{name}-open_clip"]["loss"], rtol=1e-12, atol=1e-13)
        _assert_grads(r[f"{name}-ours"]["grads"], r[f"{name}-open_clip"]["grads"])


@pytest.mark.parametrize("impl", SIGLIP_IMPLS)
def test_siglip_loss_distributed(ranks, impl):
    name = f"siglip-{impl}"
    ref_loss, ref_grads = _reference(_siglip_global, EQUAL)
    ours = [r[f"{name}-ours"] for r in ranks]
    torch.testing.assert_close(sum(o["loss"] for o in ours) / 2, ref_loss, rtol=1e-10, atol=1e-12)
    _assert_grads(ours[0]["grads"], ref_grads)  # exact, for every dist_impl
    if f"{name}-open_clip" not in ranks[0]:
        pytest.skip("open_clip's loss.py not installed: compared with the single-process reference only")
    for r in ranks:
        torch.testing.assert_close(r[f"{name}-ours"]["loss"], r[f"{name}-open_clip"]["loss"], rtol=1e-12, atol=1e-13)
        _assert_grads(r[f"{name}-ours"]["grads"], r[f"{name}-open_clip"]["grads"])


def test_native_siglip_unequal_batches(ranks):
    ref_loss, ref_grads = _reference(_siglip_global, UNEQUAL)
    res = [r["siglip-native-unequal"] for r in ranks]
    torch.testing.assert_close(sum(o["loss"] for o in res) / 2, ref_loss, rtol=1e-10, atol=1e-12)
    _assert_grads(res[0]["grads"], ref_grads)
    _assert_grads(res[1]["grads"], ref_grads)


def test_lightly_gather_distributed(ranks):
    ref_loss, ref_grads = _reference(_lightly_rank_mean(UNEQUAL), UNEQUAL)
    res = [r["lightly-gather-unequal"] for r in ranks]
    torch.testing.assert_close(sum(o["loss"] for o in res) / 2, ref_loss, rtol=1e-10, atol=1e-12)
    _assert_grads(res[0]["grads"], ref_grads, features_only=True)


def test_memory_bank_gathers_all_ranks(ranks):
    expected = torch.cat([torch.full((2, 3), 1.0), torch.full((3, 3), 2.0)])
    for r in ranks:
        assert r["bank"]["ptr"] == 5
        assert torch.equal(r["bank"]["bank"][:5], expected.to(r["bank"]["bank"].dtype))
    # the entries not yet written keep each rank's own random start (torch's global RNG, as in lightly)
