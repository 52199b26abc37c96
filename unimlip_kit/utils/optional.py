"""Optional dependencies: checked once, imported lazily, and a missing one names its extra."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

__all__ = ["is_available", "require"]


@functools.lru_cache(maxsize=None)
def is_available(module: str) -> bool:
    """Whether ``module`` can be imported (cached; does not import it).

    Example:
        >>> is_available("json"), is_available("surely_not_a_module_xyz")
        (True, False)
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _declared(distribution: str) -> str:
    """The requirement unimlip_kit declares for ``distribution`` (e.g. ``transformers>=4.40``), else the bare name."""
    try:
        from importlib.metadata import requires

        for req in requires("unimlip_kit") or ():
            spec = req.split(";")[0].strip()
            name = spec.split("[")[0]
            for op in ("<", ">", "=", "!", "~", " "):
                name = name.split(op)[0]
            if name.lower().replace("_", "-") == distribution.lower().replace("_", "-") and "extra ==" not in req:
                return spec.replace(" ", "")
    except Exception:  # not installed as a distribution (a source checkout on sys.path)
        pass
    return distribution


def require(module: str, extra: str | None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise an ImportError saying how to install it.

    ``extra`` names the optional-dependency group of pyproject.toml that provides the
    module (``pip install 'unimlip_kit[extra]'``); ``None`` marks a core dependency,
    whose message names the declared requirement instead (an extra would not help).
    ``tests/test_optional_deps.py`` checks every call against pyproject.toml.

    Example:
        >>> require("json", None).__name__
        'json'
        >>> require("surely_not_a_module_xyz", "medical", "DICOM files")
        Traceback (most recent call last):
        ...
        ImportError: surely_not_a_module_xyz is needed for DICOM files: pip install 'unimlip_kit[medical]'
        >>> require("surely_not_a_module_xyz", None, "tokenizing")
        Traceback (most recent call last):
        ...
        ImportError: surely_not_a_module_xyz is needed for tokenizing: it is a core dependency of unimlip_kit, reinstall it: pip install 'surely_not_a_module_xyz'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        what = f" for {purpose}" if purpose else ""
        if extra is None:
            how = f"it is a core dependency of unimlip_kit, reinstall it: pip install '{_declared(module)}'"
        else:
            how = f"pip install 'unimlip_kit[{extra}]'"
        raise ImportError(f"{module} is needed{what}: {how}") from err
