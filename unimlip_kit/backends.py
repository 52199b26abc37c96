"""The one place that decides which backend runs an op.

Each op (``"contrastive_lse"``, ``"hard_negatives"``, ...) has backends
registered here with a priority, a ``not_supported_reasons(device, dtype)``
function and a lazy loader, so optional modules (Triton kernels) are imported
only when they are chosen. ``backend=None`` picks the highest-priority
backend with no reasons against it; forcing one that cannot run raises
:class:`BackendUnavailableError` listing every reason.

The pure-PyTorch backends always work; ``python -m unimlip_kit.info`` prints
what runs on this machine and why the others do not.

Self-check on first use: a backend registered with ``selfcheck=`` (the Triton kernels) is verified the
first time the automatic choice would pick it for a (device, dtype) in a process. The check
(:mod:`unimlip_kit.ops.selfcheck`) runs a small problem through it and through the pure-PyTorch path; on
a mismatch or an exception it warns once (:class:`SelfCheckWarning`, naming the op, the kernel, the device
and the error) and the automatic choice skips that backend for that key from then on. An explicit
``backend="triton"`` is never checked or replaced: that is how the kernel tests and benchmarks reach the
kernel itself. ``UNIMLIP_TRITON_SELFCHECK=0`` turns the check off; :func:`self_check_states` and
``python -m unimlip_kit.info`` report each key's state.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "BackendSpec",
    "BackendUnavailableError",
    "SELFCHECK_ENV",
    "SelfCheck",
    "SelfCheckWarning",
    "backend_names",
    "get_backend",
    "is_triton_available",
    "register_backend",
    "resolve_backend",
    "run_self_check",
    "self_check_enabled",
    "self_check_states",
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
        selfcheck: ``None``, or a loader returning ``check(impl, device, dtype)`` that raises when ``impl``
            disagrees with the pure-PyTorch path (run before the automatic choice first uses it).

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
    selfcheck: Callable[[], Callable] | None = None

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
    selfcheck: Callable[[], Callable] | None = None,
) -> None:
    """Register (or replace) backend ``name`` for ``op``; replacing one forgets its self-check results.

    Example:
        >>> register_backend("demo_op", "plain", priority=0, reasons=lambda d, t: [], loader=lambda: abs)
        >>> resolve_backend("demo_op", None, torch.device("cpu"), torch.float32)[0]
        'plain'
    """
    _REGISTRY.setdefault(op, {})[name] = BackendSpec(
        op, name, priority, reasons, _cache(loader), tuple(auto_devices),
        _cache(selfcheck) if selfcheck is not None else None,
    )
    for key in [k for k in _SELF_CHECKS if k[:2] == (op, name)]:
        del _SELF_CHECKS[key]


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
            if spec.selfcheck is not None and self_check_enabled():
                if run_self_check(op, name, device, dtype).state != "passed":
                    continue  # warned once when it failed; the next backend serves this key
            return spec.name, spec.load()
    raise BackendUnavailableError(f"no backend can run {op} on {device.type} with {dtype}")


# --------------------------------------------------------------------------- self-check on first use

SELFCHECK_ENV = "UNIMLIP_TRITON_SELFCHECK"


class SelfCheckWarning(RuntimeWarning):
    """A fused backend failed its first-use self-check; the automatic choice uses the next backend.

    Example:
        >>> issubclass(SelfCheckWarning, RuntimeWarning)
        True
    """


@dataclass(frozen=True)
class SelfCheck:
    """The outcome of one backend's self-check for one (device, dtype) in this process.

    Attributes:
        op, backend, device (``"cuda:0"``, ``"cpu"``), dtype (``"bfloat16"``): the key.
        state: ``"passed"`` or ``"failed"``.
        seconds: wall time of the check (first-call compilation included).
        detail: the check's figures (``max_error=..., tolerance=...``) or the error.

    Example:
        >>> SelfCheck("contrastive_lse", "triton", "cuda:0", "bfloat16", "passed", 0.4, "max_error=0.003").state
        'passed'
    """

    op: str
    backend: str
    device: str
    dtype: str
    state: str
    seconds: float
    detail: str


_SELF_CHECKS: dict[tuple[str, str, str, torch.dtype], SelfCheck] = {}


def self_check_enabled() -> bool:
    """False when ``UNIMLIP_TRITON_SELFCHECK=0`` is set (read at every automatic choice).

    Example:
        >>> isinstance(self_check_enabled(), bool)
        True
    """
    return os.environ.get(SELFCHECK_ENV, "1").strip() != "0"


def _device_name(device: torch.device) -> str:
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    return device.type if index is None else f"{device.type}:{index}"


def _fallback(op: str, failed: str, device: torch.device, dtype: torch.dtype) -> str:
    for name in backend_names(op):
        spec = _REGISTRY[op][name]
        if name != failed and device.type in spec.auto_devices and not spec.reasons(device, dtype):
            return name
    return "none"


def run_self_check(op: str, name: str, device: torch.device | str, dtype: torch.dtype) -> SelfCheck:
    """Run backend ``name``'s self-check for ``op`` on ``device``/``dtype`` once per process; later calls return it.

    A failure (a mismatch, or any exception from the kernel) warns once with :class:`SelfCheckWarning`.
    Global random streams are left untouched.

    Example:
        >>> register_backend("demo_sq", "fast", priority=1, reasons=lambda d, t: [], loader=lambda: lambda x: x * x,
        ...                  selfcheck=lambda: lambda impl, d, t: {"max_error": float(impl(torch.tensor(3.0)) - 9)})
        >>> run_self_check("demo_sq", "fast", "cpu", torch.float32).state
        'passed'
        >>> del _REGISTRY["demo_sq"]
    """
    device = torch.device(device)
    spec = get_backend(op, name)
    if spec.selfcheck is None:
        raise ValueError(f"backend {name!r} of {op} has no self-check")
    key = (op, name, _device_name(device), dtype)
    if key in _SELF_CHECKS:
        return _SELF_CHECKS[key]
    t0 = time.perf_counter()
    try:
        with torch.inference_mode(False):
            figures = spec.selfcheck()(spec.load(), device, dtype) or {}
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        state, detail = "passed", ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in figures.items())
    except Exception as err:  # noqa: BLE001 - a kernel that raises fails its check like a wrong one
        state, detail = "failed", f"{type(err).__name__}: {err}"
    result = SelfCheck(op, name, key[2], str(dtype).removeprefix("torch."), state, time.perf_counter() - t0, detail)
    _SELF_CHECKS[key] = result
    if state == "failed":
        fallback = _fallback(op, name, device, dtype)
        instead = (f"Using the {fallback} backend for this device and dtype from now on" if fallback != "none"
                   else "No other backend can run it there")
        warnings.warn(
            f"the {name} backend of {op} failed its self-check on {result.device} with {result.dtype}: {detail}. "
            f"{instead} ({SELFCHECK_ENV}=0 turns the check off; backend={name!r} still forces it).",
            SelfCheckWarning, stacklevel=3,
        )
    return result


def self_check_states() -> list[SelfCheck]:
    """Every self-check run in this process so far, in the order they ran.

    Example:
        >>> all(isinstance(c, SelfCheck) for c in self_check_states())
        True
    """
    return list(_SELF_CHECKS.values())


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
        loader=_lazy("unimlip_kit.kernels.infonce", "contrastive_lse_triton"),
        selfcheck=_lazy("unimlip_kit.ops.selfcheck", "check_contrastive_lse"))

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
        loader=_lazy("unimlip_kit.kernels.hard_negatives", "sample_hard_negatives_triton"),
        selfcheck=_lazy("unimlip_kit.ops.selfcheck", "check_hard_negatives"))

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
