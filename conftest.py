"""pytest at the repository root: the top-level ``kernels/`` folder is collected as ``unimlip_kit.kernels``.

pytest would import ``kernels/infonce.py`` as a top-level ``kernels.infonce`` (and ``kernels/__init__.py``
as ``kernels``, for its package set-up). That name belongs to Hugging Face's ``kernels`` package, which
transformers imports; ``kernels/__init__.py`` hands such an import over to it (docs/ARCHITECTURE.md, "The
top-level kernels/ folder"). So here the folder is a plain directory of files, and each file's doctests
are collected from the module of the same file under its installed name, ``unimlip_kit.kernels.<name>``.
Test modules under tests/ are unaffected.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from _pytest.doctest import DoctestModule

KERNELS = Path(__file__).resolve().parent / "kernels"


def _installed_name(path: Path) -> str:
    return "unimlip_kit.kernels" if path.stem == "__init__" else f"unimlip_kit.kernels.{path.stem}"


class KernelDoctestModule(DoctestModule):
    """The doctests of one file of ``kernels/``, read from its module under the name it is installed as."""

    def _getobj(self):
        module = importlib.import_module(_installed_name(self.path))
        if Path(module.__file__).resolve() != self.path.resolve():
            raise pytest.UsageError(f"{_installed_name(self.path)} is {module.__file__}, not {self.path}")
        return module


def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """``kernels/`` as a plain directory, not a package whose ``__init__`` pytest would import as ``kernels``."""
    if path.resolve() == KERNELS:
        return pytest.Dir.from_parent(parent, path=path)
    return None


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    """Swap the doctest collector of each ``kernels/*.py`` file for one that imports it by its installed name.

    A file named on the command line (``pytest kernels/infonce.py``) is also offered to the test-module
    collector, which would import it as ``kernels.infonce``; kernels/ holds no test functions (they live in
    tests/), so that collector is dropped.
    """
    collected = yield
    if file_path.resolve().parent != KERNELS:
        return collected
    out = []
    for node in collected:
        if type(node) is DoctestModule:
            out.append(KernelDoctestModule.from_parent(parent, path=file_path))
        elif type(node) is not pytest.Module:
            out.append(node)
    return out
