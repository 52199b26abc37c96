r"""Ahead-of-time compile check of the Triton kernels for CUDA GPUs, on a machine without one.

The interpreter (``TRITON_INTERPRET=1``) runs the kernels as Python and never
calls the compiler, so a kernel can pass every CPU test and still fail to
compile on its first CUDA call. This module compiles what users run:

1. **Launches** (:func:`record_launches`): the real launchers
   (:func:`~unimlip_kit.kernels.infonce.contrastive_lse_triton` forward and
   backward, :func:`~unimlip_kit.kernels.infonce.contrastive_lse_two_pass`,
   :func:`~unimlip_kit.kernels.hard_negatives.sample_hard_negatives_triton`) run
   on small CPU tensors with the CUDA launch configurations (``CUDA_CONFIGS``)
   while each ``@triton.jit`` kernel is replaced by a recorder, so the argument
   list, dtypes, constexprs and launch options come from the launch site itself.
2. **Compile** (:func:`compile_launch`): the recorded call goes through the
   JIT's own ``warmup`` path (its binder derives the signature — ``*bf16``,
   ``i32``, divisibility-16 attributes, constexprs — exactly as a CUDA call
   would) under a stand-in driver that reports a ``GPUTarget("cuda", arch, 32)``
   and launches nothing. ptxas from the Triton wheel makes the cubin.
3. **Resources** (:func:`check_resources`): dynamic shared memory
   (``metadata.shared``), registers and local memory per thread (``cuobjdump
   -res-usage`` of the cubin; local memory > 0 means register spills or stack
   arrays) against the per-architecture limits in :data:`ARCHS`, and the spin-lock
   protocol in the PTX (:func:`check_lock_protocol`).

Run it as a script (in a process without ``TRITON_INTERPRET=1``; it must be unset
before Triton is imported, because ``@triton.jit`` picks the interpreter then)::

    python -m unimlip_kit.kernels.aot_check --json out.json --markdown

``tests/test_triton_compile.py`` runs it in a subprocess and caches the cubins in
``~/.cache/unimlip_kit/triton-aot`` (Triton's own cache, whose keys include the
Triton version and the kernel source).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import triton

from unimlip_kit.kernels import hard_negatives, infonce

__all__ = [
    "ARCHS",
    "DTYPES",
    "Launch",
    "SHAPES",
    "blocks_per_sm",
    "check_lock_protocol",
    "check_resources",
    "compile_launch",
    "kernel_names",
    "main",
    "markdown_table",
    "record_launches",
]


@dataclass(frozen=True)
class ArchLimits:
    """Hardware limits of one CUDA architecture (CUDA programming guide, compute capability table)."""

    name: str
    max_shared_per_block: int  #: opt-in dynamic shared memory per block (what Triton's launch checks)
    shared_per_sm: int  #: shared memory per SM (includes the 1 KB the runtime reserves per block)
    max_regs_per_thread: int = 255
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048


#: sm_80 (A100): 164 KB shared per SM, 163 KB per block; sm_90 (H100/H200): 228 KB per SM, 227 KB per block
ARCHS: dict[int, ArchLimits] = {
    80: ArchLimits("A100 (sm_80)", max_shared_per_block=163 * 1024, shared_per_sm=164 * 1024),
    90: ArchLimits("H100/H200 (sm_90)", max_shared_per_block=227 * 1024, shared_per_sm=228 * 1024),
}
#: input dtypes the kernels accept
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
_RESERVED_SHARED_PER_BLOCK = 1024


@dataclass
class Launch:
    """One recorded kernel launch: the kernel, where it came from, and its exact arguments.

    Example:
        >>> x = record_launches("float16", n=16, d=32)[0]
        >>> (x.kernel, x.variant, x.dtype, x.args[0].dtype)
        ('_lse_fwd_kernel', 'itc', 'float16', torch.float16)
    """

    kernel: str
    variant: str
    dtype: str
    shape: str
    fn: Any = field(repr=False)
    grid: tuple = field(repr=False)
    args: tuple = field(repr=False)
    kwargs: dict = field(repr=False)


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` is recorded, not run."""

    def __init__(self, fn: Any, sink: list, label: dict) -> None:
        self.fn, self.sink, self.label = fn, sink, label

    def __getitem__(self, grid: tuple):
        def launch(*args: Any, **kwargs: Any) -> None:
            self.sink.append(Launch(self.fn.__name__, fn=self.fn, grid=tuple(grid), args=args, kwargs=kwargs, **self.label))

        return launch


def _jit_kernels(module: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if k.startswith("_") and k.endswith("_kernel") and hasattr(v, "fn")}


def kernel_names() -> list[str]:
    """Names of every ``@triton.jit`` kernel in the kernel modules (each must show up in :func:`record_launches`)."""
    return sorted({k for m in (infonce, hard_negatives) for k in _jit_kernels(m)})


@contextlib.contextmanager
def _recording(sink: list, label: dict) -> Iterator[None]:
    """Swap the kernels for recorders and make the launchers pick the CUDA configs for CPU tensors."""
    saved: list[tuple[Any, str, Any]] = []

    def swap(module: Any, name: str, value: Any) -> None:
        saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)

    try:
        for module in (infonce, hard_negatives):
            for name, fn in _jit_kernels(module).items():
                swap(module, name, _Recorder(fn, sink, label))
            swap(module, "_check", lambda a, b: None)
        swap(infonce, "_interpreting", lambda t: False)
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


def record_launches(dtype: str, n: int = 256, d: int = 768, shape: str | None = None) -> list[Launch]:
    """Record every kernel launch the public entry points make for (n, d) inputs of ``dtype``.

    Paths: ITC (both directions, forward and backward), NT-Xent (diagonal excluded),
    rows only (the two-pass variant's row kernel), a column-only upstream gradient,
    the two-pass variant, and the hard-negative sampler with and without ids.

    Example:
        >>> launches = record_launches("bfloat16", n=32, d=64)
        >>> sorted({x.kernel for x in launches}) == kernel_names()
        True
        >>> fwd = next(x for x in launches if x.kernel == "_lse_fwd_kernel")
        >>> fwd.kwargs["BLOCK_M"] == infonce.CUDA_CONFIGS[("fwd", "half")]["BLOCK_M"]
        True
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    dt = getattr(torch, dtype)
    shape = shape or f"N={n},D={d}"
    g = torch.Generator().manual_seed(0)
    sink: list[Launch] = []

    def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = torch.randn(n, d, generator=g).to(dt).requires_grad_()
        b = torch.randn(n, d, generator=g).to(dt).requires_grad_()
        return a, b, torch.tensor(10.0, requires_grad=True)

    def run(variant: str, fn: Any, exclude: bool, need_cols: bool, use_rows: bool = True) -> None:
        with _recording(sink, dict(variant=variant, dtype=dtype, shape=shape)):
            a, b, s = inputs()
            rows, cols = fn(a, b, s, exclude, need_cols)
            # an unused output reaches the backward as None (no HAS_ROW / HAS_COL specialisation)
            loss = (rows.sum() if use_rows else 0.0) + (cols.sum() if need_cols else 0.0)
            loss.backward()

    run("itc", infonce.contrastive_lse_triton, False, True)
    run("nt-xent", infonce.contrastive_lse_triton, True, True)
    run("rows-only", infonce.contrastive_lse_triton, False, False)
    run("cols-grad-only", infonce.contrastive_lse_triton, False, True, use_rows=False)
    run("two-pass", infonce.contrastive_lse_two_pass, False, True)
    for variant, ids in (("sampler", None), ("sampler+ids", torch.arange(n) % 7)):
        with _recording(sink, dict(variant=variant, dtype=dtype, shape=shape)):
            x, y, s = inputs()
            hard_negatives.sample_hard_negatives_triton(x, y, s, ids=ids, generator=torch.Generator().manual_seed(1))
    return sink


class _OfflineDriver:
    """The three calls ``JITFunction.run(warmup=True)`` makes of a driver: a fixed target, no device, no launch."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 1000 + self.target.arch  # one JIT binder cache per arch, never a real device id

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


_CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "num_warps", "num_stages", "maxnreg")
_RES_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _cubin_resources(cubin: bytes) -> dict[str, int]:
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", f.name], capture_output=True, text=True, check=True)
    m = _RES_RE.search(out.stdout)
    if m is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no resource line:\n{out.stdout}{out.stderr}")
    regs, stack, static_shared, local = map(int, m.groups())
    return dict(regs=regs, stack_bytes=stack, static_shared_bytes=static_shared, local_bytes=local)


def check_lock_protocol(ptx: str) -> list[str]:
    r"""Check the per-column spin lock in a kernel's PTX; returns the problems found (empty: fine).

    The lock is taken by one thread (``atom.cas``, acquire) and released by one
    thread (``atom.exch``, release), while every thread of the block reads and
    writes the guarded column statistics. That is only safe if a block barrier
    (``bar.sync``) separates the acquire from the first guarded load and the
    last guarded store from the release — otherwise another block can take the
    lock before this block's stores land (a lost update). Per the PTX memory
    model, barrier + gpu-scope acquire/release makes the whole block's accesses
    ordered with the lock.

    Example:
        >>> ok = "atom.global.acq_rel.gpu.cas.b32 %r1, [%rd1], 0, 1;\nbar.sync 0;\nld.global.cg.b32 %r2, [%rd2];\n"
        >>> ok += "st.global.b32 [%rd2], %r2;\nbar.sync 0;\natom.global.gpu.acq_rel.exch.b32 %r3, [%rd1], 0;\n"
        >>> check_lock_protocol(ok)
        []
        >>> check_lock_protocol(ok.replace("bar.sync 0;\natom.global.gpu", "atom.global.gpu"))
        ['line 5: st.global between the last bar.sync and the lock release (atom.exch)']
    """
    lines = [ln.strip() for ln in ptx.splitlines()]
    problems = []
    cas = [i for i, ln in enumerate(lines) if re.search(r"\batom\.\S*\bcas\b", ln)]
    exch = [i for i, ln in enumerate(lines) if re.search(r"\batom\.\S*\bexch\b", ln)]
    if len(cas) != len(exch):
        problems.append(f"{len(cas)} lock acquires (atom.cas) but {len(exch)} releases (atom.exch)")
    for i in cas:
        for j in range(i + 1, len(lines)):
            if lines[j].startswith("bar.sync") or lines[j].startswith("barrier.sync"):
                break
            if re.search(r"\bld\.global\b", lines[j]):
                problems.append(f"line {j + 1}: ld.global after the lock acquire (atom.cas) with no bar.sync between")
                break
    for i in exch:
        for j in range(i - 1, -1, -1):
            if lines[j].startswith("bar.sync") or lines[j].startswith("barrier.sync"):
                break
            if re.search(r"\bst\.global\b", lines[j]):
                problems.append(f"line {i + 1}: st.global between the last bar.sync and the lock release (atom.exch)")
                break
    return problems


def compile_launch(launch: Launch, arch: int) -> dict[str, Any]:
    """Compile one recorded launch for ``sm_<arch>`` through the JIT's warmup path; returns a result record.

    The record has the kernel, variant, dtype, arch, launch config, signature,
    ``shared_bytes`` (dynamic), ``regs``, ``local_bytes``, ``lock_problems`` and the
    compile ``seconds``; ``error`` holds the message when compilation failed.

    Example:
        >>> launch = record_launches("float32", n=32, d=64)[0]
        >>> if type(launch.fn).__name__ == "JITFunction":  # not under TRITON_INTERPRET=1
        ...     rec = compile_launch(launch, 90)
        ...     ok = rec["error"] is None and rec["regs"] <= 255 and rec["signature"].startswith("A:*fp32")
        ... else:
        ...     ok = True
        >>> ok
        True
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    from triton.runtime.driver import driver

    if type(launch.fn).__name__ != "JITFunction":
        raise RuntimeError(
            f"{launch.kernel} is a {type(launch.fn).__name__}: TRITON_INTERPRET=1 was set when Triton was imported; "
            "run the compile check in a process without it"
        )
    cfg = {k: launch.kwargs[k] for k in _CONFIG_KEYS if k in launch.kwargs}
    rec: dict[str, Any] = dict(kernel=launch.kernel, variant=launch.variant, dtype=launch.dtype, shape=launch.shape,
                               arch=arch, config=cfg, error=None)
    t0 = time.perf_counter()
    previous = getattr(driver, "_active", None)  # None without a GPU: reset_active() would raise
    driver.set_active(_OfflineDriver(arch))
    try:
        compiled = launch.fn.warmup(*launch.args, grid=launch.grid, **launch.kwargs)
    except Exception as e:  # noqa: BLE001 - every compile failure is a result to report
        rec.update(error=f"{type(e).__name__}: {e}"[:4000], seconds=round(time.perf_counter() - t0, 2))
        return rec
    finally:
        driver._active = previous
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    rec["hash"] = compiled.metadata.hash
    src = getattr(compiled, "src", None)
    rec["signature"] = ", ".join(f"{k}:{v}" for k, v in src.signature.items() if v != "constexpr") if src else None
    rec["shared_bytes"] = int(compiled.metadata.shared)
    rec.update(_cubin_resources(compiled.asm["cubin"]))
    rec["ptx_local_decls"] = len(re.findall(r"^\s*\.local\b", compiled.asm["ptx"], flags=re.M))
    rec["lock_sites"] = len(re.findall(r"\batom\.\S*\bcas\b", compiled.asm["ptx"]))
    rec["lock_problems"] = check_lock_protocol(compiled.asm["ptx"])
    return rec


def check_resources(rec: dict[str, Any]) -> list[str]:
    """Problems of one compile record against :data:`ARCHS` (empty list: within every limit).

    Checks: compiled at all; dynamic shared memory ≤ the per-block opt-in limit;
    registers ≤ 255 per thread and ≤ 65536 per SM for one block; no local memory
    (spills) and no PTX ``.local`` arrays; the lock protocol.

    Example:
        >>> rec = dict(kernel="k", arch=90, error=None, shared_bytes=240 * 1024, regs=200, local_bytes=0,
        ...            stack_bytes=0, ptx_local_decls=0, lock_problems=[], config=dict(num_warps=8))
        >>> check_resources(rec)
        ['k sm_90: shared memory 240.0 KB > 227.0 KB per block']
    """
    where = f"{rec['kernel']} sm_{rec['arch']}"
    if rec.get("error"):
        return [f"{where}: compile failed: {rec['error']}"]
    lim = ARCHS[rec["arch"]]
    threads = 32 * rec["config"].get("num_warps", 4)
    out = []
    if rec["shared_bytes"] > lim.max_shared_per_block:
        out.append(f"{where}: shared memory {rec['shared_bytes'] / 1024:.1f} KB > {lim.max_shared_per_block / 1024:.1f} KB per block")
    if rec["regs"] > lim.max_regs_per_thread:
        out.append(f"{where}: {rec['regs']} registers per thread > {lim.max_regs_per_thread}")
    if _alloc_regs(rec["regs"]) * threads > lim.regs_per_sm:
        out.append(f"{where}: {rec['regs']} registers × {threads} threads > {lim.regs_per_sm} per SM")
    if rec["local_bytes"] or rec["stack_bytes"]:
        out.append(f"{where}: {rec['local_bytes']} B local memory, {rec['stack_bytes']} B stack per thread (register spills)")
    if rec["ptx_local_decls"]:
        out.append(f"{where}: {rec['ptx_local_decls']} .local declarations in the PTX")
    out += [f"{where}: lock protocol: {p}" for p in rec["lock_problems"]]
    return out


def _alloc_regs(regs: int) -> int:
    return -(-max(regs, 1) // 8) * 8  # registers are allocated per thread in units of 8 (256 per warp)


def blocks_per_sm(rec: dict[str, Any]) -> int:
    """Resident blocks per SM allowed by registers, shared memory and threads (occupancy).

    Example:
        >>> blocks_per_sm(dict(arch=90, regs=128, shared_bytes=64 * 1024, config=dict(num_warps=4)))
        3
    """
    lim = ARCHS[rec["arch"]]
    threads = 32 * rec["config"].get("num_warps", 4)
    by_regs = lim.regs_per_sm // (_alloc_regs(rec["regs"]) * threads)
    by_smem = lim.shared_per_sm // (rec["shared_bytes"] + _RESERVED_SHARED_PER_BLOCK)
    return int(min(by_regs, by_smem, lim.max_threads_per_sm // threads, 32))


def markdown_table(records: list[dict[str, Any]], shape: str = "aligned") -> str:
    """Resource table for one shape: a row per kernel, variants, input width and config; sm_80 and sm_90 columns.

    A cell reads ``shared KB / registers / spill bytes / resident blocks per SM``; bf16 and fp16 share
    a row (their config is the same), with a range where they differ.

    Example:
        >>> rec = dict(kernel="_k", variant="v", dtype="float32", shape="aligned", arch=90, error=None,
        ...            shared_bytes=2048, regs=40, local_bytes=0, stack_bytes=0, config=dict(BLOCK_M=64, num_warps=4))
        >>> print(markdown_table([rec]).splitlines()[2])
        | `_k` | v | fp32 | 64/4 | – | 2 / 40 / 0 / 12 |
    """
    width = {"float32": "fp32", "bfloat16": "bf16/fp16", "float16": "bf16/fp16"}
    rows: dict[tuple, dict[int, list]] = {}
    for r in records:
        if r["shape"] != shape:
            continue
        cfg = "/".join(str(r["config"][k]) for k in _CONFIG_KEYS if k in r["config"] and k != "maxnreg")
        key = (r["kernel"], r["variant"], width[r["dtype"]], cfg)
        rows.setdefault(key, {}).setdefault(r["arch"], []).append(r)

    def span(values: list[int]) -> str:
        lo, hi = min(values), max(values)
        return f"{lo}" if lo == hi else f"{lo}–{hi}"

    def cell(rs: list | None) -> str:
        if not rs:
            return "–"
        if any(r.get("error") for r in rs):
            return "**compile error**"
        return " / ".join([span([r["shared_bytes"] // 1024 for r in rs]), span([r["regs"] for r in rs]),
                           span([r["local_bytes"] + r["stack_bytes"] for r in rs]), span([blocks_per_sm(r) for r in rs])])

    lines = ["| kernel | variants | inputs | BLOCK_M/N/D/warps/stages | sm_80 | sm_90 |", "|---|---|---|---|---|---|"]
    for (kernel, variant, w, cfg), by_arch in sorted(rows.items()):
        lines.append(f"| `{kernel}` | {variant} | {w} | {cfg} | {cell(by_arch.get(80))} | {cell(by_arch.get(90))} |")
    return "\n".join(lines)


def _dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per distinct compiled kernel (same hash), variants that share it joined by '+'."""
    out: dict[Any, dict[str, Any]] = {}
    for r in records:
        key = r.get("hash") or (r["kernel"], r["variant"], r["dtype"], r["shape"], r["arch"])
        if key in out:
            if r["variant"] not in out[key]["variant"].split(", "):
                out[key]["variant"] += ", " + r["variant"]
        else:
            out[key] = dict(r)
    return list(out.values())


#: (N, D) compiled. Triton specialises integer arguments on divisibility by 16, so "aligned" (N = 256, D = 768)
#: and "odd" (a last batch of 37 rows, D = 768) are different compiles of the same kernel
SHAPES: dict[str, tuple[int, int]] = {"aligned": (256, 768), "odd": (37, 768)}


def main(argv: list[str] | None = None) -> int:
    """CLI: compile every launch for the chosen archs/dtypes/shapes, print problems; exit 1 if any.

    Example:
        >>> main(["--help"])  # doctest: +SKIP
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, nargs="+", default=sorted(ARCHS), choices=sorted(ARCHS))
    p.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--shape", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--json", help="write the compile records here")
    p.add_argument("--markdown", action="store_true", help="print the resource table (aligned shape)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("aot_check: unset TRITON_INTERPRET (the interpreter never compiles)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    records = []
    for shape in args.shape:
        n, d = SHAPES[shape]
        for dtype in args.dtype:
            launches = record_launches(dtype, n=n, d=d, shape=shape)
            for arch in args.arch:
                records += [compile_launch(x, arch) for x in launches]
    records = _dedupe(records)
    problems = [msg for r in records for msg in check_resources(r)]
    try:  # informational: which ptxas made the cubins (the helper is Triton-version specific)
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = {arch: get_ptxas(arch).version for arch in args.arch}
    except (ImportError, AttributeError, TypeError):
        ptxas = None
    summary = dict(triton=triton.__version__, torch=torch.__version__, ptxas=ptxas,
                   seconds=round(time.perf_counter() - t0, 1),
                   kernels=kernel_names(), records=records, problems=problems)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1, default=str)
    if args.markdown:
        print(markdown_table(records, "aligned" if "aligned" in args.shape else args.shape[0]))
    print(f"aot_check: {len(records)} distinct compiles in {summary['seconds']} s, {len(problems)} problems")
    for msg in problems:
        print("  " + msg.splitlines()[0])
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
