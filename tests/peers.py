"""Peers used as test references, imported by package name; each loader returns None when the peer is absent.

open_clip's and lightly's packages import torchvision at the top, which does not import beside every
torch build. open_clip's ``loss.py`` needs only torch, so it is loaded from the installed package's own
file (``pip install --no-deps open_clip_torch``). lightly's NT-Xent loss needs only torch too, but its
package ``__init__`` files import torchvision, pytorch_lightning and hydra: ``lightly_ntxent_module`` loads
the four files the loss needs from the installed package (``pip install --no-deps lightly``) without
running those ``__init__`` files, and leaves ``sys.modules`` as it found it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
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


def lightly_ntxent_module() -> ModuleType | None:
    """``lightly/loss/ntx_ent_loss.py`` of the installed lightly, loaded without lightly's package imports, or None.

    Its imports (``lightly.models.modules.memory_bank``, ``lightly.utils.dist``) are loaded from their own
    files under empty parent packages. ``lightly.models.utils`` (which imports torchvision) is an empty
    module: the memory bank calls it only to gather across ranks (world size > 1), which no single-process
    test reaches. The ``lightly*`` entries of ``sys.modules`` are restored afterwards.
    """
    spec = importlib.util.find_spec("lightly")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    if not (root / "loss" / "ntx_ent_loss.py").is_file():
        return None
    saved = {k: v for k, v in sys.modules.items() if k == "lightly" or k.startswith("lightly.")}
    try:
        for pkg in ("lightly", "lightly.models", "lightly.models.modules", "lightly.utils", "lightly.loss"):
            shell = types.ModuleType(pkg)
            shell.__path__ = [str(root.joinpath(*pkg.split(".")[1:]))]
            sys.modules[pkg] = shell
        sys.modules["lightly.models.utils"] = types.ModuleType("lightly.models.utils")
        return importlib.import_module("lightly.loss.ntx_ent_loss")
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    finally:
        for k in [k for k in sys.modules if k == "lightly" or k.startswith("lightly.")]:
            del sys.modules[k]
        sys.modules.update(saved)
