"""The one place that decides which backend runs an op.

Each op (``"contrastive_lse"``, ``"hard_negatives"``, ...) has backends
registered here with a priority, a ``not_supported_reasons(device, dtype)``
function and a lazy loader, so optional modules (Triton kernels) are imported
only when they are chosen. ``backend=None`` picks the highest-priority
backend with no reasons against it; forcing one that cannot run raises
:class:`BackendUnavailableError` listing every reason.

The pure-PyTorch backends always work; ``python -m unimlip_kit.info`` prints
what runs on this machine and why the others do not.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "BackendSpec",
    "BackendUnavailableError",
    "backend_names",
    "get_backend",
    "is_triton_available",
    "register_backend",
    "resolve_backend",
    "triton_interpret_enabled",
    "triton_reasons",
]


class BackendUnavailableError(RuntimeError):
    """A backend was requested explicitly but cannot run; the message lists why.

    Example:
        >>> try:
        ...     resolve_backend("contrastive_lse", "triton", torch.device("cpu"), torch.float64)
        ... except BackendUnavailableError as err:
        ...     print(str(err).splitlines()[0])
        backend 'triton' cannot run contrastive_lse on cpu with torch.float64:
    """


@dataclass(frozen=True)
class BackendSpec:
    """A registered implementation of one op.

    Attributes:
        op: the op's name, e.g. ``"contrastive_lse"``.
        name: the backend's name, e.g. ``"tiled"``.
        priority: higher wins when ``backend=None``.
        reasons: ``reasons(device, dtype) -> list[str]``; empty means it can run.
        loader: returns the implementation (imports lazily).
        auto_devices: device types on which ``backend=None`` may pick it; ``()`` makes it
            explicit-only (the float64 oracle; the Triton interpreter on CPU).

    Example:
        >>> spec = get_backend("contrastive_lse", "reference")
        >>> spec.auto_devices, spec.reasons(torch.device("cpu"), torch.float64)
        ((), [])
    """

    op: str
    name: str
    priority: int
    reasons: Callable[[torch.device, torch.dtype], list[str]]
    loader: Callable[[], Callable]
    auto_devices: tuple[str, ...] = ("cpu", "cuda")

    def load(self) -> Callable:
        return self.loader()


_REGISTRY: dict[str, dict[str, BackendSpec]] = {}


def register_backend(
    op: str,
    name: str,
    *,
    priority: int,
    reasons: Callable[[torch.device, torch.dtype], list[str]],
    loader: Callable[[], Callable],
    auto_devices: tuple[str, ...] = ("cpu", "cuda"),
) -> None:
    """Register (or replace) backend ``name`` for ``op``.

    Example:
        >>> register_backend("demo_op", "plain", priority=0, reasons=lambda d, t: [], loader=lambda: abs)
        >>> resolve_backend("demo_op", None, torch.device("cpu"), torch.float32)[0]
        'plain'
    """
    _REGISTRY.setdefault(op, {})[name] = BackendSpec(op, name, priority, reasons, _cache(loader), tuple(auto_devices))


def _cache(loader: Callable[[], Callable]) -> Callable[[], Callable]:
    return functools.lru_cache(maxsize=None)(loader)


def backend_names(op: str) -> list[str]:
    """The backends registered for ``op``, best first.

    Example:
        >>> backend_names("contrastive_lse")[-1]
        'reference'
    """
    _ensure_builtin()
    specs = _REGISTRY.get(op)
    if not specs:
        raise KeyError(f"no backends registered for op {op!r}; known ops: {sorted(_REGISTRY)}")
    return [s.name for s in sorted(specs.values(), key=lambda s: -s.priority)]


def get_backend(op: str, name: str) -> BackendSpec:
    """The spec of backend ``name`` for ``op`` (``ValueError`` naming the choices otherwise).

    Example:
        >>> get_backend("contrastive_lse", "tiled").name
        'tiled'
    """
    _ensure_builtin()
    specs = _REGISTRY.get(op, {})
    if name not in specs:
        raise ValueError(f"unknown backend {name!r} for {op}; choose one of {backend_names(op)} or None")
    return specs[name]


def resolve_backend(
    op: str, requested: str | None, device: torch.device, dtype: torch.dtype
) -> tuple[str, Callable]:
    """Choose the backend for ``op`` on ``device``/``dtype``: ``(name, implementation)``.

    ``requested=None`` returns the best automatic backend that can run;
    a named backend that cannot run raises :class:`BackendUnavailableError`.

    Example:
        >>> resolve_backend("contrastive_lse", None, torch.device("cpu"), torch.float32)[0]
        'tiled'
        >>> resolve_backend("contrastive_lse", "reference", torch.device("cpu"), torch.float64)[0]
        'reference'
    """
    _ensure_builtin()
    if requested is not None:
        spec = get_backend(op, requested)
        why = spec.reasons(device, dtype)
        if why:
            raise BackendUnavailableError(
                f"backend {requested!r} cannot run {op} on {device.type} with {dtype}:\n  - " + "\n  - ".join(why)
            )
        return spec.name, spec.load()
    for name in backend_names(op):
        spec = _REGISTRY[op][name]
        if device.type in spec.auto_devices and not spec.reasons(device, dtype):
            return spec.name, spec.load()
    raise BackendUnavailableError(f"no backend can run {op} on {device.type} with {dtype}")


# --------------------------------------------------------------------------- Triton


@functools.lru_cache(maxsize=None)
def is_triton_available() -> bool:
    """Whether the ``triton`` package can be found (cached; never imports it).

    Example:
        >>> isinstance(is_triton_available(), bool)
        True
    """
    from unimlip_kit.utils.optional import is_available

    return is_available("triton")


def triton_interpret_enabled() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set, which lets Triton kernels run on CPU tensors.

    Example:
        >>> isinstance(triton_interpret_enabled(), bool)
        True
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Why a Triton kernel cannot run on ``device``/``dtype`` (empty if it can).

    Example:
        >>> "float64" in " ".join(triton_reasons(torch.device("cpu"), torch.float64))
        True
    """
    why = []
    if not is_triton_available():
        why.append("triton is not installed (pip install 'unimlip_kit[triton]')")
    if device.type == "cpu" and not triton_interpret_enabled():
        why.append("tensors are on the CPU and TRITON_INTERPRET=1 is not set")
    elif device.type not in ("cpu", "cuda"):
        why.append(f"device type {device.type!r} is not supported (cuda, or cpu with TRITON_INTERPRET=1)")
    if dtype not in TRITON_DTYPES:
        why.append(f"dtype {dtype} is not supported (float32, float16, bfloat16)")
    return why


def _always(device: torch.device, dtype: torch.dtype) -> list[str]:
    return []


def _floating(device: torch.device, dtype: torch.dtype) -> list[str]:
    return [] if dtype.is_floating_point else [f"dtype {dtype} is not floating point"]


def _lazy(module: str, attr: str) -> Callable[[], Callable]:
    """A loader that imports ``module`` only when the backend is first chosen and returns ``attr``."""

    def load() -> Callable:
        import importlib

        return getattr(importlib.import_module(module), attr)

    return load


def _triton_kernel_reasons(module: str, what: str) -> Callable[[torch.device, torch.dtype], list[str]]:
    """:func:`triton_reasons` plus a check that the kernel module is part of this build (never imports it)."""

    def reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
        from importlib.util import find_spec

        why = triton_reasons(device, dtype)
        if find_spec(module) is None:
            why.append(f"{what} is not part of this build")
        return why

    return reasons


# --------------------------------------------------------------------------- built-ins

_BUILTIN_DONE = False


def _ensure_builtin() -> None:
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True

    reg = register_backend
    reg("contrastive_lse", "reference", priority=0, reasons=_floating,
        loader=_lazy("unimlip_kit.ops.reference", "contrastive_lse_reference"), auto_devices=())
    reg("contrastive_lse", "tiled", priority=10, reasons=_floating,
        loader=_lazy("unimlip_kit.ops.tiled", "contrastive_lse_tiled"))
    # On the CPU the Triton interpreter is a correctness tool, never the automatic choice.
    reg("contrastive_lse", "triton", priority=20, auto_devices=("cuda",),
        reasons=_triton_kernel_reasons("unimlip_kit.kernels.infonce", "the Triton InfoNCE kernel"),
        loader=_lazy("unimlip_kit.kernels.infonce", "contrastive_lse_triton"))

    # SigLIP's pairwise sigmoid loss: the oracle materialises L; the tiled Function is O(N·D). No Triton kernel
    # (the InfoNCE kernel's online-LSE/spin-lock structure does not carry over; see docs/ARCHITECTURE.md).
    reg("sigmoid_pair_loss", "reference", priority=0, reasons=_floating,
        loader=_lazy("unimlip_kit.ops.siglip", "sigmoid_pair_loss_reference"), auto_devices=())
    reg("sigmoid_pair_loss", "tiled", priority=10, reasons=_floating,
        loader=_lazy("unimlip_kit.ops.siglip", "sigmoid_pair_loss_tiled"))

    reg("hard_negatives", "reference", priority=0, reasons=_floating,
        loader=_lazy("unimlip_kit.ops.hard_negatives", "sample_hard_negatives_reference"))
    # Gumbel-max over tiles: same distribution as the reference, O(N·D) memory
    reg("hard_negatives", "tiled", priority=10, reasons=_floating,
        loader=_lazy("unimlip_kit.ops.hard_negatives_tiled", "sample_hard_negatives_tiled"))
    reg("hard_negatives", "triton", priority=20, auto_devices=("cuda",),
        reasons=_triton_kernel_reasons("unimlip_kit.kernels.hard_negatives", "the Triton hard-negative kernel"),
        loader=_lazy("unimlip_kit.kernels.hard_negatives", "sample_hard_negatives_triton"))

    # Attention in the fusion encoder: SDPA always runs; xformers is automatic on CUDA when installed.
    def _xformers_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
        from unimlip_kit.utils.optional import is_available

        why = []
        if not is_available("xformers"):
            why.append("xformers is not installed (pip install 'unimlip_kit[xformers]')")
        if device.type != "cuda":
            why.append(f"memory-efficient attention needs CUDA tensors, got {device.type}")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            why.append(f"dtype {dtype} is not supported (float16, bfloat16, float32)")
        return why

    reg("attention", "sdpa", priority=0, reasons=_floating, loader=_lazy("unimlip_kit.models.attention", "attention_sdpa"))
    reg("attention", "xformers", priority=10, reasons=_xformers_reasons, auto_devices=("cuda",),
        loader=_lazy("unimlip_kit.models.attention", "attention_xformers"))
