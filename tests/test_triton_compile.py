"""Every Triton kernel compiles for sm_80 and sm_90 (A100, H100/H200) within the hardware limits — without a GPU.

The interpreter tests (tests/test_triton_kernels.py, tests/test_hard_negatives.py) never call the
compiler. Here :mod:`unimlip_kit.kernels.aot_check` runs in a subprocess (``TRITON_INTERPRET`` unset,
since ``@triton.jit`` picks the interpreter at import): it records the launches the public entry points
make with the CUDA configs, compiles each through the JIT's own warmup path for a ``GPUTarget`` of each
arch with the ptxas the Triton wheel ships, and reads shared memory, registers and local memory (spills)
from the cubin. Cubins are cached per Triton version and kernel source in
``~/.cache/unimlip_kit/triton-aot`` (``UNIMLIP_AOT_CACHE``): cold about a minute, warm a few seconds.

``UNIMLIP_AOT_FULL=1`` also compiles the odd-batch specialisation (N = 37), as the CLI does by default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
try:
    from triton.backends import backends as _triton_backends
except ImportError:  # pragma: no cover - very old Triton
    _triton_backends = {}
if "nvidia" not in _triton_backends:
    pytest.skip("this Triton build has no CUDA backend (ptxas)", allow_module_level=True)

from unimlip_kit.kernels import aot_check  # noqa: E402
from unimlip_kit.kernels.infonce import CUDA_CONFIGS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("UNIMLIP_AOT_CACHE", Path.home() / ".cache" / "unimlip_kit" / "triton-aot"))
FULL = os.environ.get("UNIMLIP_AOT_FULL") == "1"
SHAPES = list(aot_check.SHAPES) if FULL else ["aligned"]
CASES = [(arch, dtype) for arch in sorted(aot_check.ARCHS) for dtype in aot_check.DTYPES]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(CACHE), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "unimlip_kit.kernels.aot_check", "--json", str(out), "--shape", *SHAPES]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    if not out.exists():
        pytest.fail(f"aot_check crashed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    data = json.loads(out.read_text())
    print(proc.stdout)  # the one-line summary and any problems, shown with -s
    return data


def _records(report: dict, arch: int, dtype: str) -> list[dict]:
    return [r for r in report["records"] if r["arch"] == arch and r["dtype"] == dtype]


@pytest.mark.parametrize("arch,dtype", CASES, ids=[f"sm{a}-{d}" for a, d in CASES])
def test_every_kernel_compiles(report, arch, dtype):
    recs = _records(report, arch, dtype)
    assert {r["kernel"] for r in recs} == set(aot_check.kernel_names()), "a kernel was never launched or compiled"
    assert {r["shape"] for r in recs} == set(SHAPES)
    errors = [f"{r['kernel']} [{r['variant']}, {r['shape']}]: {r['error']}" for r in recs if r["error"]]
    assert not errors, "\n\n".join(errors)


@pytest.mark.parametrize("arch,dtype", CASES, ids=[f"sm{a}-{d}" for a, d in CASES])
def test_resources_within_hardware_limits(report, arch, dtype):
    # shared memory per block, registers per thread and per SM, no local memory (spills), lock protocol
    problems = [f"{p} [{r['variant']}, {r['shape']}, {r['config']}]"
                for r in _records(report, arch, dtype) if not r["error"] for p in aot_check.check_resources(r)]
    assert not problems, "\n".join(problems)


def test_compiled_what_the_launchers_run(report):
    """Signatures and configs come from the launch sites: pointer dtypes, i32 sizes, CUDA_CONFIGS entries."""
    kind = {"_lse_fwd_kernel": "fwd", "_lse_bwd_kernel": "bwd", "_hard_negative_kernel": "sampler"}
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    assert set(kind) == set(aot_check.kernel_names())
    for r in report["records"]:
        want = CUDA_CONFIGS[(kind[r["kernel"]], "fp32" if r["dtype"] == "float32" else "half")]
        assert r["config"] == want, (r["kernel"], r["dtype"], r["config"])
        sig = dict(item.split(":") for item in r["signature"].split(", "))
        first = "X" if r["kernel"] == "_hard_negative_kernel" else "A"
        second = "Y" if first == "X" else "B"
        assert sig[first] == sig[second] == "*" + short[r["dtype"]], r["signature"]  # inputs as given, not upcast
        assert sig["SCALE"] == "*fp32" and sig["D"] == "i32"
        if r["kernel"] == "_lse_bwd_kernel":
            # half inputs accumulate gradients in float32 scratch; float32 inputs write their own gradients
            assert sig["DA"] == sig["DB"] == "*fp32"
        if r["kernel"] == "_hard_negative_kernel":
            assert sig["seed"] == "i32"  # do_not_specialize: one compile whatever the seed
            assert sig["ROW_IDX"] == sig["COL_IDX"] == "*i64"


def test_lock_sites_are_checked(report):
    """The lock check is not vacuous: kernels with a column lock have one acquire per lock in their PTX."""
    for r in report["records"]:
        if r["error"]:
            continue
        has_lock = r["kernel"] == "_hard_negative_kernel" or (
            r["kernel"] == "_lse_fwd_kernel" and not set(r["variant"].split(", ")) <= {"rows-only", "two-pass"})
        assert (r["lock_sites"] >= 1) == has_lock, (r["kernel"], r["variant"], r["lock_sites"])


def test_lock_protocol_check_catches_a_missing_barrier():
    acquire = "@%p1 atom.global.acq_rel.gpu.cas.b32 %r1, [ %rd1 + 0 ], %r2, %r3;\n"
    body = "ld.global.cg.b32 %r4, [ %rd2 + 0 ];\nst.global.b32 [ %rd2 + 0 ], { %r4 };\n"
    release = "@%p1 atom.global.gpu.acq_rel.exch.b32 %r5, [ %rd1 + 0 ], %r6;\n"
    good = acquire + "bar.sync 0;\n" + body + "bar.sync 0;\n" + release
    assert aot_check.check_lock_protocol(good) == []
    no_release_barrier = acquire + "bar.sync 0;\n" + body + release
    assert "release" in " ".join(aot_check.check_lock_protocol(no_release_barrier))
    no_acquire_barrier = acquire + body + "bar.sync 0;\n" + release
    assert "acquire" in " ".join(aot_check.check_lock_protocol(no_acquire_barrier))
    assert "releases" in " ".join(aot_check.check_lock_protocol(acquire + "bar.sync 0;\n" + body))


def test_resource_check_flags_each_limit():
    base = dict(kernel="k", arch=80, error=None, shared_bytes=100 * 1024, regs=128, local_bytes=0, stack_bytes=0,
                ptx_local_decls=0, lock_problems=[], config=dict(num_warps=8))
    assert aot_check.check_resources(base) == []
    assert "shared memory" in aot_check.check_resources({**base, "shared_bytes": 164 * 1024})[0]  # A100: 163 KB/block
    assert aot_check.check_resources({**base, "arch": 90, "shared_bytes": 164 * 1024}) == []  # H100: 227 KB/block
    assert "registers per thread" in aot_check.check_resources({**base, "regs": 256})[0]
    assert "per SM" in aot_check.check_resources({**base, "regs": 255, "config": dict(num_warps=16)})[0]
    assert "spills" in aot_check.check_resources({**base, "stack_bytes": 8})[0]
    assert "compile failed" in aot_check.check_resources({**base, "error": "NameError: _NEG_BIG"})[0]
