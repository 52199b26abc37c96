"""unimlip_kit.compat.lightly.NTXentLoss under lightly's own NT-Xent and memory-bank test calls.

The calls, grids and expected values are those of lightly's tests (tests/loss/test_ntx_ent_loss.py
and tests/models/modules/test_memory_bank.py: SimCLR's Algorithm 1 as the reference, log(M + 1) for
perfectly correlated embeddings with a full bank, symmetry), with the import changed to
unimlip_kit; the reference implementations here are written independently in float64. lightly itself
is compared when it is installed (``pip install --no-deps lightly``: its NT-Xent file is loaded without the
package's torchvision imports, tests/peers.py), else that test skips.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peers import lightly_loss_module, lightly_ntxent_module
from torch import distributed as dist

from unimlip_kit.compat.lightly import NTXentLoss
from unimlip_kit.losses import MemoryBank, MemoryBankNTXentLoss, memory_bank_nt_xent_loss


def simclr_reference(out0: torch.Tensor, out1: torch.Tensor, temperature: float) -> float:
    """SimCLR (Chen et al. 2020) Algorithm 1 in float64: 2N anchors, the other view positive, all others negative."""
    z = np.concatenate([out0.detach().double().numpy(), out1.detach().double().numpy()])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = z.shape[0]
    n = n2 // 2
    sim = z @ z.T / temperature
    total = 0.0
    for i in range(n2):
        others = np.array([sim[i, k] for k in range(n2) if k != i])
        m = others.max()
        total += m + math.log(np.exp(others - m).sum()) - sim[i, (i + n) % n2]
    return total / n2


def moco_reference(q, k, negatives, temperature) -> torch.Tensor:
    """MoCo's InfoNCE with the logits written out: [q·k | q·n_1..n_K] / t, class 0."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))


def test_gather_distributed_checks_availability_once(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "is_available", lambda: calls.append(1) or True)
    NTXentLoss(gather_distributed=True)
    assert len(calls) == 1
    monkeypatch.setattr(dist, "is_available", lambda: calls.append(1) or False)
    with pytest.raises(ValueError, match="gather_distributed is True but torch.distributed is not available"):
        NTXentLoss(gather_distributed=True)
    assert len(calls) == 2


@pytest.mark.parametrize("n_samples", [1, 2, 4])
@pytest.mark.parametrize("dimension", [1, 2, 16, 64])
@pytest.mark.parametrize("temperature", [0.1, 1, 10])
@pytest.mark.parametrize("gather_distributed", [False, True])
def test_with_values(n_samples, dimension, temperature, gather_distributed):
    rng = np.random.default_rng(n_samples * 1000 + dimension)
    out0 = torch.tensor(rng.normal(0, 1, size=(n_samples, dimension)), dtype=torch.float32)
    out1 = torch.tensor(rng.normal(0, 1, size=(n_samples, dimension)), dtype=torch.float32)
    loss_function = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)
    l1 = float(loss_function(out0, out1))
    l2 = float(loss_function(out1, out0))
    expected = simclr_reference(out0, out1, temperature)
    assert l1 == pytest.approx(l2, abs=1e-5)
    assert l1 == pytest.approx(expected, abs=1e-5)
    assert l2 == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("n_samples", [1, 2, 8, 16])
@pytest.mark.parametrize("memory_bank_size", [0, 1, 2, 8, 15, 16, 17])
@pytest.mark.parametrize("temperature", [0.1, 1, 7])
@pytest.mark.parametrize("gather_distributed", [False, True])
def test_with_correlated_embedding(n_samples, memory_bank_size, temperature, gather_distributed):
    rng = np.random.default_rng(n_samples + 100 * memory_bank_size)
    out0_np = rng.random((n_samples, 1))
    out1_np = rng.random((n_samples, 1))
    out0 = torch.tensor(np.concatenate([out0_np, 2 * out0_np], axis=1), dtype=torch.float32)
    out1 = torch.tensor(np.concatenate([out1_np, 2 * out1_np], axis=1), dtype=torch.float32)
    out0.requires_grad = True
    loss_function = NTXentLoss(temperature=temperature, memory_bank_size=memory_bank_size,
                               gather_distributed=gather_distributed)
    if memory_bank_size > 0:
        for _ in range(int(memory_bank_size / n_samples) + 2):  # fill the memory bank over several rounds
            loss = float(loss_function(out0, out1))
        expected_loss = -1 * np.log(1 / (memory_bank_size + 1))
    else:
        loss = float(loss_function(out0, out1))
        expected_loss = -1 * np.log(1 / (2 * n_samples - 1))
    assert loss == pytest.approx(expected_loss)


@pytest.mark.parametrize("dim,temperature", [(32, 0.5), (1, 0.5), (32, -1.0)])
def test_forward_pass_symmetry(dim, temperature):
    loss = NTXentLoss(temperature=temperature, memory_bank_size=0)
    for bsz in range(1, 20):
        batch_1 = torch.randn((bsz, dim))
        batch_2 = torch.randn((bsz, dim))
        l1 = loss(batch_1, batch_2)
        l2 = loss(batch_2, batch_1)
        assert (l1 - l2).pow(2).item() == pytest.approx(0.0)


@pytest.mark.parametrize("size", [64, (64, 32)])
def test_forward_pass_memory_bank(size):
    loss = NTXentLoss(memory_bank_size=size)
    for bsz in range(1, 20):
        batch_1 = torch.randn((bsz, 32), requires_grad=True)
        batch_2 = torch.randn((bsz, 32))
        value = loss(batch_1, batch_2)
        assert torch.isfinite(value) and value.requires_grad
    assert loss.memory_bank.bank.shape == (64, 32)
    assert "memory_bank.bank" not in loss.state_dict()  # lightly's bank is not persistent


@pytest.mark.skipif(not torch.cuda.is_available(), reason="No cuda")
def test_forward_pass_cuda():
    loss = NTXentLoss(memory_bank_size=64)
    for bsz in range(1, 20):
        loss(torch.randn((bsz, 32)).cuda().requires_grad_(), torch.randn((bsz, 32)).cuda())
    loss = NTXentLoss(memory_bank_size=0)
    b1, b2 = torch.randn((8, 32)).cuda(), torch.randn((8, 32)).cuda()
    assert (loss(b1, b2) - loss(b2, b1)).pow(2).item() == pytest.approx(0.0)


def test_illegal_temperature():
    with pytest.raises(ValueError, match="Illegal temperature"):
        NTXentLoss(temperature=0.0)


# ---------------------------------------------------------------- the memory bank (lightly's memory-bank tests)


def test_memory_bank_queue_order_and_wrap():
    """lightly's test_forward: read before update, FIFO writes, a batch reaching the end fills the tail only."""
    torch.manual_seed(0)
    bank = MemoryBank((5, 2))
    x0 = torch.randn(3, 2)
    bank0 = bank.negatives()
    bank.enqueue(x0)
    assert bank0.shape == (5, 2) and bank0[:3].tolist() != x0.tolist()
    assert bank.bank[:3].tolist() == x0.tolist()
    x1 = torch.randn(3, 2)
    bank1 = bank.negatives()
    bank.enqueue(x1)
    assert bank1[:3].tolist() == x0.tolist() and bank1[3:].tolist() != x1[:2].tolist()
    assert bank.bank[3:].tolist() == x1[:2].tolist() and int(bank.ptr) == 0  # full: x1[2] was not stored
    x2 = torch.randn(3, 2)
    bank2 = bank.negatives()
    bank.enqueue(x2)
    assert bank2[:3].tolist() == x0.tolist() and bank2[3:].tolist() == x1[:2].tolist()
    assert bank.bank[:3].tolist() == x2.tolist()


def test_memory_bank_sizes_and_state():
    lazy = MemoryBank(5)
    assert not lazy.initialised
    lazy.enqueue(torch.randn(2, 4))
    assert lazy.bank.shape == (5, 4) and int(lazy.ptr) == 2
    restored = MemoryBank(5)
    restored.load_state_dict(lazy.state_dict())  # a lazily sized bank resumes exactly
    assert torch.equal(restored.bank, lazy.bank) and int(restored.ptr) == 2
    initial = MemoryBank((100, 3)).bank
    torch.testing.assert_close(initial.norm(dim=1), torch.ones(100))  # random unit vectors
    for bad in (-1, (10, -1), (1, 2, 3), True):
        with pytest.raises(ValueError, match="memory bank size"):
            MemoryBank(bad)
    with pytest.raises(ValueError, match="holds dimension 3"):
        MemoryBank((4, 3)).enqueue(torch.randn(2, 5))


def test_memory_bank_loss_against_written_out_logits(small_tiles):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    neg = F.normalize(torch.randn(11, 5, generator=g, dtype=torch.float64), dim=1)
    got = memory_bank_nt_xent_loss(q, k, neg, 0.2)
    ref = moco_reference(q, k, neg, 0.2)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (q, k)), torch.autograd.grad(ref, (q, k))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_memory_bank_module_reads_before_and_writes_after():
    torch.manual_seed(0)
    loss_fn = MemoryBankNTXentLoss((6, 3), temperature=0.3)
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3)
    before = loss_fn.memory_bank.negatives()
    got = loss_fn(z1, z2)
    torch.testing.assert_close(got, moco_reference(z1, z2, before, 0.3))
    assert torch.allclose(loss_fn.memory_bank.bank[:4], F.normalize(z2, dim=1))
    with torch.no_grad():  # evaluation (no gradient) leaves the queue as it is
        loss_fn(z1.detach(), z2)
    assert int(loss_fn.memory_bank.ptr) == 4
    with pytest.raises(ValueError, match="memory_bank_size must be > 0"):
        MemoryBankNTXentLoss(0)


def test_equals_lightly_when_installed():
    lightly_loss = lightly_loss_module() or lightly_ntxent_module()
    if lightly_loss is None:
        pytest.skip("lightly is not installed (pip install --no-deps lightly)")
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)) for _ in range(4)]
    for kwargs in ({"temperature": 0.5}, {"temperature": 0.2, "memory_bank_size": (20, 16)}):
        values, grads = [], []
        for cls in (NTXentLoss, lightly_loss.NTXentLoss):
            torch.manual_seed(1)  # the bank's random initial entries
            loss_fn = cls(**kwargs)
            vals, gs = [], []
            for a, b in batches:
                a = a.clone().requires_grad_()
                loss = loss_fn(a, b)
                loss.backward()
                vals.append(float(loss.detach()))
                gs.append(a.grad)
            values.append(vals)
            grads.append(gs)
        assert values[0] == pytest.approx(values[1], abs=1e-5), kwargs
        for ours, theirs in zip(*grads):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_readme_moco_queue_of_4096():
    """README: ``memory_bank_size=4096`` gives MoCo negatives from a queue of earlier ``out1`` (FIFO, read first)."""
    torch.manual_seed(0)
    loss_fn = NTXentLoss(temperature=0.2, memory_bank_size=4096)
    g = torch.Generator().manual_seed(1)
    seen = []
    for step in range(3):
        out0 = torch.randn(16, 8, generator=g, requires_grad=True)
        out1 = torch.randn(16, 8, generator=g)
        before = loss_fn.memory_bank.negatives().clone() if step else None
        loss = loss_fn(out0, out1)
        if before is not None:  # the bank is read before this batch is enqueued
            torch.testing.assert_close(loss, moco_reference(out0, out1, before, 0.2))
        seen.append(F.normalize(out1, dim=1))
    bank = loss_fn.memory_bank.bank
    assert bank.shape == (4096, 8) and int(loss_fn.memory_bank.ptr) == 48
    torch.testing.assert_close(bank[:48], torch.cat(seen))
    torch.testing.assert_close(bank[48:].norm(dim=1), torch.ones(4096 - 48))  # the rest: random unit vectors


def test_native_memory_bank_is_saved_and_a_resumed_run_continues_exactly():
    """README: the native MemoryBankNTXentLoss keeps its bank in the state_dict (lightly's compat class does not)."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)) for _ in range(6)]
    torch.manual_seed(3)
    run = MemoryBankNTXentLoss((10, 6), temperature=0.3)
    for a, b in batches[:3]:
        run(a.clone().requires_grad_(), b)
    state = {k: v.clone() for k, v in run.state_dict().items()}
    assert any("bank" in k for k in state)
    torch.manual_seed(99)  # another random start: only the loaded state can make the runs agree
    resumed, fresh = MemoryBankNTXentLoss((10, 6), temperature=0.3), MemoryBankNTXentLoss((10, 6), temperature=0.3)
    resumed.load_state_dict(state)
    for a, b in batches[3:]:
        want = run(a.clone().requires_grad_(), b).detach()
        assert torch.equal(resumed(a.clone().requires_grad_(), b).detach(), want)
        assert not torch.equal(fresh(a.clone().requires_grad_(), b).detach(), want)
    compat = NTXentLoss(memory_bank_size=(10, 6))
    assert not any("bank" in k for k in compat.state_dict())
