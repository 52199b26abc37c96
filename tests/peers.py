"""Peers used as test references, imported by package name; each loader returns None when the peer is absent.

open_clip's and lightly's packages import torchvision at the top, which does not import beside every
torch build. open_clip's ``loss.py`` needs only torch, so it is loaded from the installed package's own
file (``pip install --no-deps open_clip_torch``); lightly's loss needs torchvision, so it is only used when
``lightly.loss`` imports.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType


def open_clip_loss_module() -> ModuleType | None:
    """The installed ``open_clip/loss.py`` as a module (without importing the open_clip package), or None."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "loss.py"
    if not path.is_file():
        return None
    mod_spec = importlib.util.spec_from_file_location("_peer_open_clip_loss", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    return module


def lightly_loss_module() -> ModuleType | None:
    """``lightly.loss`` if it imports (it needs torchvision), else None."""
    try:
        return importlib.import_module("lightly.loss")
    except Exception:  # noqa: BLE001
        return None
