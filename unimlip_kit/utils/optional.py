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


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise an ImportError naming ``pip install unimlip_kit[extra]``.

    Example:
        >>> require("json", "dev").__name__
        'json'
        >>> require("surely_not_a_module_xyz", "medical", "DICOM files")
        Traceback (most recent call last):
        ...
        ImportError: surely_not_a_module_xyz is needed for DICOM files: pip install 'unimlip_kit[medical]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        what = f" for {purpose}" if purpose else ""
        raise ImportError(f"{module} is needed{what}: pip install 'unimlip_kit[{extra}]'") from err
