"""Two gloo processes on this machine: gathered losses and gradients equal the single-process ones.

DDP's gradient averaging is replicated with an explicit all-reduce(SUM)/W of the
parameter gradients, so the test checks exactly the semantics documented in
``unimlip_kit.distributed``, including unequal per-rank batch sizes.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from unimlip_kit.distributed import all_gather_with_grad
from unimlip_kit.losses import image_text_contrastive_loss, nt_xent_loss, simcse_loss

D_IN, D = 6, 5


def _problem(n_total: int):
    g = torch.Generator().manual_seed(0)
    x_img = torch.randn(n_total, D_IN, generator=g, dtype=torch.float64)
    x_txt = torch.randn(n_total, D_IN, generator=g, dtype=torch.float64)
    w_img = torch.randn(D, D_IN, generator=g, dtype=torch.float64)
    w_txt = torch.randn(D, D_IN, generator=g, dtype=torch.float64)
    return x_img, x_txt, w_img, w_txt


def _loss(kind, img, txt, log_scale, **kw):
    if kind == "itc":
        return image_text_contrastive_loss(img, txt, log_scale.exp(), **kw)
    if kind == "ntxent":
        return nt_xent_loss(img, txt, 0.2)
    return simcse_loss(img, txt, 0.1, symmetric=True)


def _grads(kind, x_img, x_txt, w_img, w_txt, **kw):
    params = [w_img.clone().requires_grad_(True), w_txt.clone().requires_grad_(True),
              torch.tensor(2.0, dtype=torch.float64, requires_grad=True)]
    img = F.normalize(x_img @ params[0].T, dim=1)
    txt = F.normalize(x_txt @ params[1].T, dim=1)
    loss = _loss(kind, img, txt, params[2], **kw)
    loss.backward()
    return loss.detach(), [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


CASES = [
    ("itc", False, (3, 4)),
    ("itc", True, (3, 4)),
    ("itc", True, (4, 4)),
    ("ntxent", False, (2, 5)),
    ("simcse", False, (3, 3)),
]


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for case, (kind, local_loss, sizes) in enumerate(CASES):
            x_img, x_txt, w_img, w_txt = _problem(sum(sizes))
            lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
            kw = {"local_loss": local_loss} if kind == "itc" else {}
            loss, grads = _grads(kind, x_img[lo:hi], x_txt[lo:hi], w_img, w_txt, **kw)
            for g in grads:  # what DDP does: average parameter gradients over ranks
                dist.all_reduce(g, op=dist.ReduceOp.SUM)
                g /= world
            mean_loss = loss.clone()
            dist.all_reduce(mean_loss, op=dist.ReduceOp.SUM)
            gathered = all_gather_with_grad(torch.full((hi - lo, 2), float(rank)))
            torch.save({"loss": loss, "mean_loss": mean_loss / world, "grads": grads, "sizes": gathered.sizes,
                        "offset": gathered.offset}, os.path.join(out_dir, f"case{case}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results():
    """Spawn two gloo ranks once; each runs every case and saves its losses and averaged gradients."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        return {c: [torch.load(os.path.join(tmp, f"case{c}_rank{r}.pt")) for r in range(2)] for c in range(len(CASES))}


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{k}-local{l}-{s[0]}+{s[1]}" for k, l, s in CASES])
def test_two_rank_gloo_matches_single_process(two_rank_results, case):
    kind, local_loss, sizes = CASES[case]
    results = two_rank_results[case]
    x_img, x_txt, w_img, w_txt = _problem(sum(sizes))
    ref_loss, ref_grads = _grads(kind, x_img, x_txt, w_img, w_txt)
    for r, res in enumerate(results):
        assert res["sizes"] == list(sizes) and res["offset"] == sum(sizes[:r])
        if local_loss:
            # each rank holds its weighted local rows; their mean over ranks is the global loss
            torch.testing.assert_close(res["mean_loss"], ref_loss, rtol=1e-10, atol=1e-12)
        else:
            torch.testing.assert_close(res["loss"], ref_loss, rtol=1e-10, atol=1e-12)
        for got, want in zip(res["grads"], ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
