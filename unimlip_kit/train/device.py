"""The one device picker of the recipes, and torch.distributed set-up under ``torchrun``."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from unimlip_kit.distributed import get_rank

__all__ = ["log0", "resolve_device", "setup_distributed"]


def resolve_device(pref: str = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"`` (this process's ``LOCAL_RANK`` GPU).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("tpu")
        Traceback (most recent call last):
        ...
        ValueError: device must be auto, cpu or cuda, got 'tpu'
    """
    if pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {pref!r}")
    use_cuda = torch.cuda.is_available() if pref == "auto" else pref == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but torch sees no CUDA device (torch.cuda.is_available() is False)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def setup_distributed(pref: str = "auto") -> torch.device:
    """Initialise torch.distributed under torchrun (``WORLD_SIZE > 1``: gloo on CPU, NCCL on GPU); return the device.

    Example:
        >>> setup_distributed("cpu")  # a single process: nothing to initialise
        device(type='cpu')
    """
    device = resolve_device(pref)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def log0(*msg: Any) -> None:
    """``print`` on rank 0 only (flushed).

    Example:
        >>> log0("[data] 8 pairs")
        [data] 8 pairs
    """
    if get_rank() == 0:
        print(*msg, flush=True)
