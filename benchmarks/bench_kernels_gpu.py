"""Triton InfoNCE kernels on one CUDA GPU: speed against the measured matmul rate, memory at N = 2^20.

    python benchmarks/bench_kernels_gpu.py                  # what benchmarks/gpu_check.sh runs
    python benchmarks/bench_kernels_gpu.py --sizes 4096 16384 --big 0   # quick, no N = 1,048,576 run

Measures, for bf16 embeddings with D = 768 (``--dim``) and the symmetric loss
(row and column log-sum-exp, random upstream gradients):

* the bf16 matmul rate of this GPU (``torch.mm``, (N, D) @ (D, N)) in the same run;
* a short sweep of launch configurations at N = 16384 (the fastest is kept);
* forward and forward+backward time of the one-pass kernel and of the two-pass
  variant (a row kernel over A Bᵀ plus a second over B Aᵀ), at each N; the rate
  is counted over 8·N²·D FLOPs (2 forward + 6 backward) and reported as a
  fraction of the matmul rate;
* at N = 1,048,576 (``--big``): fwd+bwd time and peak allocated memory against
  inputs plus gradients (4·N·D·2 bytes);
* the hard-negative sampler against one forward at N = 65536 (``--sampler-n``);
* registers, spills and shared memory of every kernel specialisation the run compiled, as the CUDA
  driver reports them (compare with the ahead-of-time table in docs/ARCHITECTURE.md).

Writes ``benchmarks/results/kernels_gpu.json`` (with ``run_metadata()``) and prints a table.
Issue targets (H200): ≥ 60 % of the matmul rate at N = 65536; peak ≤ 1.2× inputs+grads at
N = 2^20; one pass faster than two; sampler ≤ 1.2× one forward at N = 65536.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from common import RESULTS, print_table  # noqa: E402


def cuda_seconds(fn, repeats: int, warmup: int) -> float:
    """Median seconds of ``fn()`` by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def matmul_tflops(n: int, d: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, d, device="cuda", dtype=dtype)
    b = torch.randn(n, d, device="cuda", dtype=dtype)
    t = cuda_seconds(lambda: torch.mm(a, b.T), repeats=10, warmup=3)
    return 2.0 * n * n * d / t / 1e12


def _inputs(n: int, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = F.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1).to(dtype).requires_grad_()
    b = F.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1).to(dtype).requires_grad_()
    s = torch.tensor(100.0, device="cuda", requires_grad=True)  # CLIP's clamp value: the hard case
    gr = torch.randn(n, device="cuda", generator=g) / n
    gc = torch.randn(n, device="cuda", generator=g) / n
    return a, b, s, gr, gc


def time_variant(fn, n: int, d: int, dtype: torch.dtype, repeats: int) -> dict:
    a, b, s, gr, gc = _inputs(n, d, dtype)

    def fwd():
        with torch.no_grad():
            fn(a, b, s, False, True)

    def fwd_bwd():
        a.grad = b.grad = s.grad = None
        rows, cols = fn(a, b, s, False, True)
        torch.autograd.backward([rows, cols], [gr, gc])

    t_f = cuda_seconds(fwd, repeats, warmup=1)
    t_fb = cuda_seconds(fwd_bwd, repeats, warmup=1)
    return {"fwd_s": t_f, "fwd_bwd_s": t_fb, "tflops_8n2d": 8.0 * n * n * d / t_fb / 1e12}


def time_sampler(n: int, d: int, dtype: torch.dtype, repeats: int) -> float:
    from unimlip_kit.kernels import hard_negatives

    a, b, s, _, _ = _inputs(n, d, dtype)
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        return cuda_seconds(lambda: hard_negatives.sample_hard_negatives_triton(a, b, s, generator=g), repeats, warmup=1)


def sweep(infonce, n: int, d: int, dtype: torch.dtype) -> dict:
    """Try a few launch configurations per kernel at N = n; keep the fastest in ``CUDA_CONFIGS``.

    The first candidate of each list is the committed default (spill-free on sm_80 and sm_90 by the
    ahead-of-time check); the others are larger tiles that spill on sm_80 or hold more registers.
    """
    cands = {
        "fwd": [
            dict(BLOCK_M=128, BLOCK_N=128, BLOCK_D=32, num_warps=8, num_stages=3),
            dict(BLOCK_M=128, BLOCK_N=128, BLOCK_D=64, num_warps=8, num_stages=3),
            dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=64, num_warps=8, num_stages=3),
            dict(BLOCK_M=128, BLOCK_N=128, BLOCK_D=32, num_warps=8, num_stages=4),
        ],
        "bwd": [
            dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=32, num_warps=8, num_stages=2),
            dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=64, num_warps=8, num_stages=2),
            dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=32, num_warps=4, num_stages=2),
            dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=32, num_warps=8, num_stages=3),
        ],
        "sampler": [
            dict(BLOCK_M=128, BLOCK_N=32, BLOCK_D=64, num_warps=8, num_stages=3),
            dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, num_warps=8, num_stages=3),
            dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=64, num_warps=8, num_stages=3),
        ],
    }
    out: dict = {k: [] for k in cands}
    for kind, kind_cands in cands.items():
        best = None
        default = dict(infonce.CUDA_CONFIGS[(kind, "half")])
        for cfg in kind_cands:
            infonce.CUDA_CONFIGS[(kind, "half")] = cfg
            try:
                if kind == "sampler":
                    t = time_sampler(n, d, dtype, repeats=3)
                else:
                    r = time_variant(infonce.contrastive_lse_triton, n, d, dtype, repeats=3)
                    t = r["fwd_s"] if kind == "fwd" else r["fwd_bwd_s"] - r["fwd_s"]
            except Exception as exc:  # noqa: BLE001 - a config that does not compile (shared memory) is skipped
                out[kind].append({**cfg, "error": str(exc).splitlines()[0][:200]})
                continue
            out[kind].append({**cfg, "seconds": t})
            if best is None or t < best[0]:
                best = (t, cfg)
        infonce.CUDA_CONFIGS[(kind, "half")] = best[1] if best is not None else default
        out[f"best_{kind}"] = best[1] if best else None
        print(f"  sweep {kind}: best {best}", flush=True)
    return out


def sampler_vs_forward(infonce, n: int, d: int, dtype: torch.dtype, repeats: int) -> dict:
    """Sampler time against one symmetric forward (no grad) at the same N (target: ≤ 1.2×)."""
    a, b, s, _, _ = _inputs(n, d, dtype)
    with torch.no_grad():
        t_fwd = cuda_seconds(lambda: infonce.contrastive_lse_triton(a, b, s, False, True), repeats, warmup=1)
    t_s = time_sampler(n, d, dtype, repeats)
    return {"n": n, "d": d, "fwd_s": t_fwd, "sampler_s": t_s, "sampler_over_fwd": t_s / t_fwd}


def compiled_resources() -> list[dict]:
    """Registers, spills and shared memory of each kernel specialisation compiled in this process (CUDA driver)."""
    from unimlip_kit.kernels import hard_negatives, infonce

    out = []
    for kern in (infonce._lse_fwd_kernel, infonce._lse_bwd_kernel, hard_negatives._hard_negative_kernel):
        for cache in getattr(kern, "device_caches", {}).values():  # JIT internals: best effort
            for ck in cache[0].values():
                md = ck.metadata
                out.append({"kernel": kern.__name__, "arch": md.target.arch, "num_warps": md.num_warps,
                            "num_stages": md.num_stages, "shared_bytes": md.shared,
                            "n_regs": getattr(ck, "n_regs", None), "n_spills": getattr(ck, "n_spills", None)})
    return out


def memory_at(infonce, n: int, d: int, dtype: torch.dtype) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    a, b, s, gr, gc = _inputs(n, d, dtype, seed=1)
    inputs_plus_grads = 2 * (a.numel() + b.numel()) * a.element_size()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    rows, cols = infonce.contrastive_lse_triton(a, b, s, False, True)
    torch.autograd.backward([rows, cols], [gr, gc])
    end.record()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    finite = bool(torch.isfinite(rows).all() and torch.isfinite(cols).all() and torch.isfinite(a.grad).all())
    return {"n": n, "d": d, "fwd_bwd_s": start.elapsed_time(end) / 1e3, "peak_bytes": peak,
            "inputs_plus_grads_bytes": inputs_plus_grads, "peak_over_inputs_plus_grads": peak / inputs_plus_grads,
            "tflops_8n2d": 8.0 * n * n * d / (start.elapsed_time(end) / 1e3) / 1e12, "all_finite": finite}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--big", type=int, default=1 << 20, help="N for the memory run (0 skips it)")
    p.add_argument("--sweep-n", type=int, default=16384, help="N for the launch-config sweep (0 skips it)")
    p.add_argument("--sampler-n", type=int, default=65536, help="N for sampler vs forward (0 skips it)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS / "kernels_gpu.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels_gpu.py needs a CUDA GPU (no numbers are written without one)")

    from unimlip_kit.kernels import infonce
    from unimlip_kit.utils.io import run_metadata, save_json

    dtype = torch.bfloat16
    d = args.dim
    mm = matmul_tflops(8192, d, dtype)
    mm_big = matmul_tflops(16384, 4096, dtype)
    print(f"bf16 matmul: {mm:.0f} TFLOP/s at (8192, {d}) @ ({d}, 8192); {mm_big:.0f} TFLOP/s at 16384x4096x16384",
          flush=True)
    mm_rate = max(mm, mm_big)
    result: dict = {"benchmark": "triton_infonce_gpu", "metadata": run_metadata(), "dtype": "bfloat16", "d": d,
                    "matmul_tflops": {"n8192_d": mm, "16384x4096": mm_big, "reference_rate": mm_rate}}
    if args.sweep_n:
        result["sweep"] = sweep(infonce, args.sweep_n, d, dtype)
    result["configs"] = {f"{k[0]}_{k[1]}": v for k, v in infonce.CUDA_CONFIGS.items()}
    rows = []
    for n in args.sizes:
        for name, fn in (("one-pass", infonce.contrastive_lse_triton), ("two-pass", infonce.contrastive_lse_two_pass)):
            r = {"variant": name, "n": n, **time_variant(fn, n, d, dtype, args.repeats)}
            r["fraction_of_matmul"] = r["tflops_8n2d"] / mm_rate
            rows.append(r)
            print(f"  {name} N={n}: fwd {r['fwd_s'] * 1e3:.2f} ms, fwd+bwd {r['fwd_bwd_s'] * 1e3:.2f} ms, "
                  f"{r['tflops_8n2d']:.0f} TFLOP/s ({100 * r['fraction_of_matmul']:.0f}% of matmul)", flush=True)
    one = {r["n"]: r for r in rows if r["variant"] == "one-pass"}
    for r in rows:
        r["fwd_bwd_vs_one_pass"] = r["fwd_bwd_s"] / one[r["n"]]["fwd_bwd_s"]
    result["speed"] = rows
    if args.big:
        big = memory_at(infonce, args.big, d, dtype)
        result["memory"] = big
        print(f"  N={args.big}: peak {big['peak_bytes'] / 2**30:.2f} GiB = "
              f"{big['peak_over_inputs_plus_grads']:.3f}x inputs+grads, fwd+bwd {big['fwd_bwd_s']:.1f} s", flush=True)
    if args.sampler_n:
        result["sampler_vs_forward"] = sv = sampler_vs_forward(infonce, args.sampler_n, d, dtype, args.repeats)
        print(f"  sampler N={sv['n']}: {sv['sampler_s'] * 1e3:.2f} ms = {sv['sampler_over_fwd']:.2f}x one forward",
              flush=True)
    result["compiled"] = compiled_resources()
    spills = [c for c in result["compiled"] if c["n_spills"]]
    print(f"  {len(result['compiled'])} compiled specialisations, {len(spills)} with spills", flush=True)
    save_json(args.out, result)
    print_table(rows, [("variant", "variant"), ("n", "N"), ("fwd_s", "fwd s"), ("fwd_bwd_s", "fwd+bwd s"),
                       ("tflops_8n2d", "TFLOP/s (8N²D)"), ("fraction_of_matmul", "of matmul"),
                       ("fwd_bwd_vs_one_pass", "time/one-pass")])
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
