"""The wheel: kernels/ ships as unimlip_kit.kernels (never a top-level ``kernels``), every subpackage is in it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_editable_install_maps_kernels_under_the_namespace(tmp_path):
    # run outside the checkout so the repo root is not on sys.path
    code = "import importlib.util, unimlip_kit.kernels as k; print(k.__file__); print(importlib.util.find_spec('kernels'))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    path, top = proc.stdout.split("\n")[:2]
    assert Path(path).resolve().parent == (REPO / "kernels").resolve()
    assert top == "None", "a top-level 'kernels' module must not be installed"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (whl,) = out.glob("unimlip_kit-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "unimlip_kit/kernels/__init__.py" in names
    assert not any(n.startswith("kernels/") for n in names), "kernels/ must not install at top level"
    # every package folder of the source tree is in the wheel (the packages list in pyproject is explicit)
    for init in list((REPO / "unimlip_kit").rglob("__init__.py")) + list((REPO / "kernels").rglob("__init__.py")):
        rel = init.relative_to(REPO).as_posix()
        if rel.startswith("kernels/"):
            rel = "unimlip_kit/" + rel
        assert rel in names, f"{rel} is missing from the wheel: add its package to pyproject.toml"


def test_wheel_imports_from_a_plain_install(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = (
        "import importlib.util, unimlip_kit, unimlip_kit.kernels, unimlip_kit.losses;"
        "print(unimlip_kit.__file__); print(unimlip_kit.kernels.__file__);"
        "print(importlib.util.find_spec('kernels'))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    pkg, kern, top = proc.stdout.split("\n")[:3]
    assert pkg.startswith(str(target)) and kern.startswith(str(target / "unimlip_kit" / "kernels"))
    assert top == "None"
