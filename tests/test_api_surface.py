"""Public names must not disappear silently (kornia-style API surface check).

``python tests/test_api_surface.py --update`` rewrites tests/api_surface.json
after a deliberate change; additions never fail the test.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path

import pytest

SURFACE = Path(__file__).with_name("api_surface.json")
MODULES = [
    "unimlip_kit.augment",
    "unimlip_kit.backends",
    "unimlip_kit.compat.huggingface",
    "unimlip_kit.compat.lightly",
    "unimlip_kit.compat.open_clip",
    "unimlip_kit.data",
    "unimlip_kit.distributed",
    "unimlip_kit.eval",
    "unimlip_kit.gradcache",
    "unimlip_kit.inference",
    "unimlip_kit.kernels",
    "unimlip_kit.losses",
    "unimlip_kit.models",
    "unimlip_kit.ops",
    "unimlip_kit.text",
    "unimlip_kit.train",
    "unimlip_kit.utils",
]


def current_surface() -> dict[str, list[str]]:
    out = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        out[name] = sorted(getattr(module, "__all__", []))
    return out


RECORDED = json.loads(SURFACE.read_text()) if SURFACE.exists() else {}


@pytest.mark.parametrize("module_name", sorted(RECORDED))
def test_public_names_still_exist(module_name):
    module = importlib.import_module(module_name)
    missing = [n for n in RECORDED[module_name] if not hasattr(module, n) or n not in module.__all__]
    assert not missing, f"{module_name} lost public names {missing}; if deliberate, run {__file__} --update"


@pytest.mark.parametrize("module_name", MODULES)
def test_all_is_sorted_and_importable(module_name):
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        pytest.skip(f"{module_name} not in this build")
    names = list(getattr(module, "__all__", []))
    assert names == sorted(names), f"{module_name}.__all__ is not sorted"
    for n in names:
        assert hasattr(module, n), f"{module_name}.__all__ names {n!r} but the module has no such attribute"


# Public names whose doctest cannot run on a CPU-only machine (e.g. they need a GPU), as
# "module.name" with a comment saying why. Keep it empty unless there is such a name.
EXAMPLE_ALLOWLIST: set[str] = set()


def test_every_public_callable_has_an_example():
    """Every public class or function documents a runnable ``>>>`` example (run by --doctest-modules)."""
    lacking = []
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj) or callable(obj)):
                continue
            if f"{module_name}.{name}" in EXAMPLE_ALLOWLIST:
                continue
            if ">>>" not in (inspect.getdoc(obj) or ""):
                lacking.append(f"{module_name}.{name}")
    assert not lacking, f"public names without an Example (>>>) in their docstring: {lacking}"


if __name__ == "__main__" and "--update" in sys.argv:
    SURFACE.write_text(json.dumps(current_surface(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {SURFACE}")
