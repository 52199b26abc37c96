"""SimSiam against a float64 loop over Chen & He's Algorithm 1."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimlip_kit.losses import SimSiamLoss, simsiam_loss


def _reference(p1, p2, z1, z2) -> float:
    def d(p, z):  # negative cosine, averaged over the batch
        total = 0.0
        for pi, zi in zip(p.tolist(), z.tolist()):
            dot = sum(a * b for a, b in zip(pi, zi))
            total += -dot / (math.sqrt(sum(a * a for a in pi)) * math.sqrt(sum(b * b for b in zi)))
        return total / len(p)

    return 0.5 * d(p1, z2) + 0.5 * d(p2, z1)


@pytest.mark.parametrize("n,dim", [(1, 3), (5, 7), (16, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(n, dim, dtype):
    g = torch.Generator().manual_seed(n * dim)
    p1, p2, z1, z2 = (torch.randn(n, dim, generator=g, dtype=dtype) for _ in range(4))
    got = simsiam_loss(p1, p2, z1, z2)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert abs(float(got) - _reference(p1.double(), p2.double(), z1.double(), z2.double())) < tol
    assert torch.equal(SimSiamLoss()(p1, p2, z1, z2), got)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), dim=st.integers(1, 6), seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_range_and_stop_gradient(n, dim, seed, scale):
    g = torch.Generator().manual_seed(seed)
    p1, p2, z1, z2 = (scale * torch.randn(n, dim, generator=g) for _ in range(4))
    for t in (p1, p2, z1, z2):
        t.requires_grad_(True)
    loss = simsiam_loss(p1, p2, z1, z2)
    assert -1.0 - 1e-5 <= loss.item() <= 1.0 + 1e-5
    loss.backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p2.grad is not None


def test_extremes_and_symmetry():
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    assert simsiam_loss(x, y, y, x).item() == pytest.approx(-1.0, abs=1e-6)
    assert simsiam_loss(x, y, -y, -x).item() == pytest.approx(1.0, abs=1e-6)
    # Swapping the two views leaves the loss unchanged.
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.allclose(simsiam_loss(x, y, z1, z2), simsiam_loss(y, x, z2, z1))


def test_byol_identity():
    """BYOL's symmetrised ||p̄ - z̄||² equals 4 + 4·L (the docstring's claim)."""
    p1, p2, z1, z2 = (torch.randn(6, 5, dtype=torch.float64) for _ in range(4))
    nz = torch.nn.functional.normalize
    byol = ((nz(p1, dim=1) - nz(z2, dim=1)) ** 2).sum(1).mean() + ((nz(p2, dim=1) - nz(z1, dim=1)) ** 2).sum(1).mean()
    assert torch.allclose(byol, 4 + 4 * simsiam_loss(p1, p2, z1, z2))


def test_bad_inputs():
    with pytest.raises(ValueError, match="p1 and z2"):
        simsiam_loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="p1 and p2"):
        simsiam_loss(torch.randn(3, 4), torch.randn(2, 4), torch.randn(2, 4), torch.randn(3, 4))
