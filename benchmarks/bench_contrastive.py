"""Contrastive losses forward+backward: time and extra peak memory per backend.

    python benchmarks/bench_contrastive.py                      # CLIP InfoNCE, N = 1024 … 16384, D = 512, float32, CPU
    python benchmarks/bench_contrastive.py --sizes 1024 2048 --repeats 2
    python benchmarks/bench_contrastive.py --device cuda --dtype bfloat16   # + the Triton kernel (backend triton)
    python benchmarks/bench_contrastive.py --loss siglip        # SigLIP's sigmoid loss (tiled vs open_clip)

Each (backend, N) runs in its own process (clean peak memory), with a warm-up
call then the median of ``--repeats``. The baseline is open_clip's
``ClipLoss`` when open_clip is installed (``pip install --no-deps
open_clip_torch``: its loss module needs only torch, so it is loaded from its
file even where torchvision does not import), otherwise a faithful naive
implementation of the same computation (two N×N logit matrices, two
cross-entropies). With ``--loss siglip`` the baseline is open_clip's
``SigLipLoss`` (loaded the same way), whose single-process step materialises
the N×N logits and the ±1 label matrix (its distributed path chunks them per
rank), otherwise a faithful re-implementation of that computation; the
unimlip_kit side is :func:`unimlip_kit.losses.siglip_loss` (tiled op, no Triton
kernel). Writes ``benchmarks/results/contrastive_<device>.json`` (SigLIP:
``contrastive_siglip_<device>.json``) and a PNG chart.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from common import RESULTS, add_ratios, plot_time_and_memory, print_table, run_sweep, time_and_memory  # noqa: E402,I001


def load_open_clip_loss(name: str = "ClipLoss"):
    """open_clip's loss class ``name``, or None (loads ``open_clip/loss.py`` without importing the package)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "loss.py"
    if not path.exists():
        return None
    mod_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    return getattr(module, name, None)


def naive_clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The computation open_clip's ClipLoss performs on one process."""
    labels = torch.arange(img.shape[0], device=img.device)
    logits_per_image = scale * img @ txt.T
    logits_per_text = scale * txt @ img.T
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def naive_siglip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The computation open_clip's SigLipLoss performs on one process (N×N logits and ±1 labels)."""
    logits = scale * img @ txt.T + bias
    labels = 2 * torch.eye(img.shape[0], device=img.device, dtype=img.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / img.shape[0]


def worker(cfg: dict) -> dict:
    from unimlip_kit.losses import image_text_contrastive_loss, siglip_loss

    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"]) if cfg.get("threads") else None
    device = torch.device(cfg["device"])
    dtype = getattr(torch, cfg["dtype"])
    n, d = cfg["n"], cfg["d"]
    img = F.normalize(torch.randn(n, d, device=device), dim=1).to(dtype).requires_grad_(True)
    txt = F.normalize(torch.randn(n, d, device=device), dim=1).to(dtype).requires_grad_(True)
    scale = torch.tensor(1 / 0.07, device=device, requires_grad=True)
    bias = torch.tensor(-10.0, device=device, requires_grad=True)
    backend = cfg["backend"]
    impl = backend
    if cfg.get("loss") == "siglip":
        scale = torch.tensor(10.0, device=device, requires_grad=True)
        if backend == "baseline":
            siglip_cls = load_open_clip_loss("SigLipLoss")
            if siglip_cls is not None:
                sig_mod = siglip_cls()
                impl = "open_clip.SigLipLoss"

                def fn():
                    return sig_mod(img, txt, scale, bias)
            else:
                impl = "naive (open_clip not installed)"

                def fn():
                    return naive_siglip_loss(img, txt, scale, bias)
        else:

            def fn():
                return siglip_loss(img, txt, scale, bias, backend=backend)
    elif backend == "baseline":
        clip_loss_cls = load_open_clip_loss()
        if clip_loss_cls is not None:
            loss_mod = clip_loss_cls()
            impl = "open_clip.ClipLoss"

            def fn():
                return loss_mod(img, txt, scale)
        else:
            impl = "naive (open_clip not installed)"

            def fn():
                return naive_clip_loss(img, txt, scale)
    else:

        def fn():
            return image_text_contrastive_loss(img, txt, scale, backend=backend)

    def step():
        img.grad = txt.grad = scale.grad = bias.grad = None
        fn().backward()

    res = time_and_memory(step, device, repeats=cfg["repeats"], warmup=cfg["warmup"])
    flops = 8 * n * n * d
    return {**cfg, **res, "impl": impl, "gflops_per_s_8n2d": flops / res["seconds_median"] / 1e9}


def chart(rows: list[dict], path: Path) -> None:
    labels = {r["backend"]: r["impl"] for r in rows if r["backend"] == "baseline" and "impl" in r}
    d = rows[0]
    name = "SigLIP sigmoid loss" if d.get("loss") == "siglip" else "Symmetric InfoNCE"
    plot_time_and_memory(rows, path, labels=labels, title=f"{name}, D={d['d']}, {d['dtype']}, {d['device']}")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", choices=["clip", "siglip"], default="clip")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", nargs="+", default=None, help="default: tiled baseline (+ triton on cuda)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/contrastive_<device>.json)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return []

    from unimlip_kit.utils.io import run_metadata, save_json

    triton = ["triton"] if args.device.startswith("cuda") and args.loss == "clip" else []  # no SigLIP kernel
    backends = args.backends or triton + ["tiled", "baseline"]
    base = {"loss": args.loss, "d": args.dim, "dtype": args.dtype, "device": args.device, "repeats": args.repeats,
            "warmup": args.warmup, "threads": args.threads}
    rows = run_sweep(__file__, backends, args.sizes, base)
    add_ratios(rows, "baseline", "baseline")
    stem = "contrastive" if args.loss == "clip" else "contrastive_siglip"
    out = args.out or RESULTS / f"{stem}_{args.device}.json"
    bench = "contrastive_fwd_bwd" if args.loss == "clip" else "siglip_fwd_bwd"
    save_json(out, {"benchmark": bench, "metadata": run_metadata(), "results": rows})
    chart([r for r in rows if "error" not in r] or rows, out.with_suffix(".png"))
    print_table(rows, [("backend", "backend"), ("n", "N"), ("seconds_median", "s (median)"),
                       ("extra_peak_mib", "extra MiB"), ("time_vs_baseline", "time/base"),
                       ("memory_vs_baseline", "mem/base"), ("gflops_per_s_8n2d", "GFLOP/s (8N²D)")])
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return rows


if __name__ == "__main__":
    main()
