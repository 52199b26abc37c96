"""Augmentation throughput: images/s of each ``unimlip_kit.augment`` preset vs MONAI's per-sample Compose.

    python benchmarks/bench_augment.py                       # 64 x C x 224 x 224, CPU, all presets, medium
    python benchmarks/bench_augment.py --batch 32 --repeats 3 --modalities xray ct
    python benchmarks/bench_augment.py --device cuda

Ours runs on the whole batch at once (kornia batching, per-sample parameters).
The baseline is the equivalent MONAI pipeline applied per sample, as a MONAI
Dataset would (``pip install 'unimlip_kit[bench]'``; a missing MONAI becomes a
note in the JSON, not a crash). Modalities whose ops MONAI lacks (HED stain
jitter, speckle) use the closest MONAI ops and say so in ``baseline_note``.
Warm-up, then ``--repeats`` rounds that alternate ours and MONAI (so a change in
machine load hits both alike); images/s = batch / median seconds.
Writes ``benchmarks/results/augment_<device>.json`` (with ``run_metadata()``) and
``augment_<device>.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch

from common import RESULTS, print_table, sync  # noqa: E402

from unimlip_kit.augment import PRESET_MODALITIES, PRESET_RANGES, preset  # noqa: E402
from unimlip_kit.augment.samples import sample_image  # noqa: E402
from unimlip_kit.utils.io import run_metadata, save_json  # noqa: E402
from unimlip_kit.utils.optional import is_available  # noqa: E402


def monai_pipeline(modality: str, size: int):
    """The MONAI per-sample Compose equivalent to ``preset(modality, "medium")``, and a note on differences."""
    import monai
    from monai import transforms as mt

    monai.data.set_track_meta(False)
    deg = math.radians(10.0)
    geo = [
        mt.RandScaleCrop(roi_scale=math.sqrt(0.75), max_roi_scale=1.0, random_size=True),
        mt.Resize(spatial_size=(size, size), mode="bilinear"),
        mt.RandAffine(prob=0.5, rotate_range=deg, translate_range=(0.04 * size, 0.04 * size),
                      scale_range=(0.05, 0.05), padding_mode="border"),
    ]
    bc = [mt.RandScaleIntensity(factors=0.2, prob=0.8), mt.RandShiftIntensity(offsets=0.1, prob=0.8)]
    gamma = [mt.RandAdjustContrast(prob=0.5, gamma=(0.8, 1.25))]
    blur = [mt.RandGaussianSmooth(prob=0.15), mt.RandGaussianSharpen(prob=0.15)]
    noise = [mt.RandGaussianNoise(prob=0.3, std=0.02)]
    clip = [mt.ThresholdIntensity(threshold=1.0, above=False, cval=1.0), mt.ThresholdIntensity(threshold=0.0, above=True, cval=0.0)]
    note = ""
    if modality == "xray":
        ops = geo + bc + gamma + blur + noise
    elif modality == "ct":
        lo, hi = PRESET_RANGES["ct"][0]
        window = [mt.ScaleIntensityRange(a_min=40 - 200, a_max=40 + 200, b_min=0.0, b_max=1.0, clip=True)]
        ops = window + geo + gamma + noise
        note = "fixed soft-tissue window (MONAI has no random window/level)"
    elif modality == "mri":
        ops = geo + [mt.RandBiasField(coeff_range=(0.0, 0.3), prob=0.5)] + gamma + [mt.RandRicianNoise(prob=0.3, std=0.03)]
    elif modality == "ultrasound":
        ops = geo + [mt.RandGaussianNoise(prob=0.5, std=0.15)] + bc + gamma + blur
        note = "additive Gaussian noise stands in for speckle (MONAI has no speckle)"
    elif modality == "pathology":
        rot = [mt.RandAffine(prob=0.8, rotate_range=math.pi, scale_range=(0.05, 0.05), padding_mode="reflection")]
        ops = geo[:2] + rot + [mt.RandStdShiftIntensity(factors=0.05, prob=0.8)] + bc + blur + noise
        note = "per-channel intensity shift stands in for HED stain jitter (MONAI has none)"
    else:
        ops = geo + bc + gamma + noise
    return mt.Compose(ops + clip), note


def make_steps(modality: str, batch: torch.Tensor, have_monai: bool):
    """The two timed callables: our batched preset, and MONAI per sample (or None), plus MONAI's note."""
    aug = preset(modality, "medium", generator=0).to(batch.device)

    def ours() -> None:
        with torch.no_grad():
            aug(batch)

    if not have_monai:
        return ours, None, ""
    pipe, note = monai_pipeline(modality, batch.shape[-1])
    pipe.set_random_state(seed=0)
    cpu = batch.cpu()
    if modality == "ct":
        cpu = cpu.clamp(*PRESET_RANGES["ct"][0])

    def monai() -> None:
        torch.stack([torch.as_tensor(pipe(img)) for img in cpu])

    return ours, monai, note


def interleaved_times(steps, device: torch.device, repeats: int, warmup: int):
    """Seconds per call for each step, alternating the steps in every repeat so load changes hit both alike."""
    for step in steps:
        for _ in range(warmup):
            step()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for k, step in enumerate(steps):
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modalities", nargs="+", default=list(PRESET_MODALITIES), choices=PRESET_MODALITIES)
    ap.add_argument("--no-monai", action="store_true", help="skip the MONAI baseline")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    ap.add_argument("--tag", default="", help="suffix for the result files, e.g. '_1thread'")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_start = os.getloadavg()
    have_monai = is_available("monai") and not args.no_monai
    rows = []
    for modality in args.modalities:
        img = sample_image(modality, args.size, seed=0)
        batch = img[None].repeat(args.batch, 1, 1, 1).to(device)
        ours, monai, note = make_steps(modality, batch, have_monai)
        steps = [ours] + ([monai] if monai is not None else [])
        times = interleaved_times(steps, device, args.repeats, args.warmup)
        t_ours = statistics.median(times[0])
        row = {
            "modality": modality,
            "shape": list(batch.shape),
            "ours_seconds": t_ours,
            "ours_seconds_all": times[0],
            "ours_images_per_s": args.batch / t_ours,
        }
        if monai is not None:
            t_monai = statistics.median(times[1])
            row.update(
                monai_seconds=t_monai,
                monai_seconds_all=times[1],
                monai_images_per_s=args.batch / t_monai,
                baseline_note=note,
            )
            row["speedup"] = row["ours_images_per_s"] / row["monai_images_per_s"]
        rows.append(row)
        print_table([row], [("modality", "preset"), ("ours_images_per_s", "ours img/s"),
                            ("monai_images_per_s", "MONAI img/s"), ("speedup", "speedup")])
    out = {
        "benchmark": "augment",
        "config": {**vars(args), "strength": "medium", "threads": torch.get_num_threads()},
        # other processes on the machine slow both sides; the ratio is the robust number
        "load_average_1min": {"start": load_start[0], "end": os.getloadavg()[0], "cpus": os.cpu_count()},
        "baseline": "MONAI per-sample Compose" if have_monai else None,
        "note": None if have_monai else "MONAI not installed: pip install 'unimlip_kit[bench]'",
        "results": rows,
        "metadata": run_metadata(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = save_json(RESULTS / f"augment_{device.type}{args.tag}.json", out)
    chart(rows, RESULTS / f"augment_{device.type}{args.tag}.png", args)
    print(f"wrote {path}")
    return out


def chart(rows, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["modality"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    w = 0.4
    ax.bar([i - w / 2 for i in x], [r["ours_images_per_s"] for r in rows], w, label="unimlip_kit.augment (batched)")
    if any("monai_images_per_s" in r for r in rows):
        ax.bar([i + w / 2 for i in x], [r.get("monai_images_per_s", 0) for r in rows], w, label="MONAI Compose (per sample)")
        for i, r in enumerate(rows):
            if "speedup" in r:
                ax.text(i, r["ours_images_per_s"], f"{r['speedup']:.1f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), names)
    ax.set_ylabel("images / s")
    ax.set_title(f"medium presets, {args.batch}xCx{args.size}x{args.size}, {args.device}, {torch.get_num_threads()} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
