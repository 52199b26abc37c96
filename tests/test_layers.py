"""The library's layers never import upward (docs/ARCHITECTURE.md, "Layers").

``unimlip_kit.{ops,losses,augment,data,models,eval,text,utils}`` (and the kernels and backends beneath them)
must not import the training layer (``unimlip_kit.train``), a recipe or a benchmark: open_clip's rule that the
library never imports its training package. Two checks: every import statement in those files, read from the
source (so a late import inside a function counts as much as one at the top), and what importing each
package really loads, in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("ops", "losses", "augment", "data", "models", "eval", "text", "utils")
FORBIDDEN = ("unimlip_kit.train", "recipes", "benchmarks")


def _imports(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """Every module an ``import`` / ``from ... import`` in ``path`` names (relative imports resolved), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = package or ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def _is_forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_the_import_reader_sees_late_and_relative_imports(tmp_path):
    """The checker itself: a late import inside a function and a relative import are both found."""
    probe = tmp_path / "probe.py"  # read as if it were unimlip_kit/eval/probe.py
    probe.write_text("import os\ndef f():\n    from unimlip_kit.train.optim import x\n\nfrom ..train import y\n",
                     encoding="utf-8")
    found = sorted(m for _, m in _imports(probe, package="unimlip_kit.eval"))
    assert found == ["os", "unimlip_kit.train", "unimlip_kit.train.optim"]
    assert [_is_forbidden(m) for m in found] == [False, True, True]


@pytest.mark.parametrize("layer", LIBRARY)
def test_no_library_file_imports_the_training_layer_a_recipe_or_a_benchmark(layer):
    bad = []
    for path in sorted((ROOT / "unimlip_kit" / layer).rglob("*.py")):
        bad += [f"{path.relative_to(ROOT)}:{line}: {mod}" for line, mod in _imports(path) if _is_forbidden(mod)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_importing_the_library_loads_no_training_code():
    code = (
        "import importlib, json, sys\n"
        f"for layer in {list(LIBRARY)!r}:\n"
        "    importlib.import_module('unimlip_kit.' + layer)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('recipes', 'benchmarks') "
        f"or m.startswith('unimlip_kit.train'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
