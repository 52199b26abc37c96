"""Shared test configuration: hypothesis profiles, tolerances, small tiles, the shared captions file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# A small profile locally, a larger one in CI (CI=true); deadline off (first calls compile/warm up).
settings.register_profile(
    "dev", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], derandomize=True
)
settings.register_profile(
    "ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], derandomize=True
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ROCO_CAPTIONS = SHARED / "data" / "roco_captions" / "validation.tsv"

# One tolerance table: (rtol, atol) per dtype for comparisons against a float64 reference.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (5e-3, 5e-3),
}


@pytest.fixture
def small_tiles(monkeypatch):
    """Force the tiled backend to use tiny tiles so small problems span many tiles."""
    import unimlip_kit.ops.tiled as tiled

    monkeypatch.setattr(tiled, "DEFAULT_BLOCK_M", 3)
    monkeypatch.setattr(tiled, "DEFAULT_TILE_ELEMENTS", 3 * 5)


@pytest.fixture(scope="session")
def roco_captions() -> list[str]:
    """The real ROCO validation captions from ../shared, or skip when absent."""
    if not ROCO_CAPTIONS.exists():
        pytest.skip(f"shared captions not found at {ROCO_CAPTIONS}")
    import csv

    with open(ROCO_CAPTIONS, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["caption"] for r in rows]


@pytest.fixture
def killed_run(monkeypatch):
    """``killed_run(argv, step)``: the training recipe run with ``argv`` and killed right after its step-``step`` checkpoint.

    The kill is a ``KeyboardInterrupt`` raised once the checkpoint is on disk, as a preempted job dies; the
    resume tests compare ``--resume`` from there with an uninterrupted run.
    """
    from recipes import uni_mlip_roco

    def run(argv: list[str], step: int) -> None:
        original = uni_mlip_roco.save_checkpoint

        def save_then_die(run_dir, at, *a, **k):
            original(run_dir, at, *a, **k)
            if at == step:
                raise KeyboardInterrupt(f"simulated kill after the step-{step} checkpoint")

        monkeypatch.setattr(uni_mlip_roco, "save_checkpoint", save_then_die)
        try:
            with pytest.raises(KeyboardInterrupt):
                uni_mlip_roco.main(argv)
        finally:
            monkeypatch.setattr(uni_mlip_roco, "save_checkpoint", original)

    return run
