"""kernels/ is ``unimlip_kit.kernels`` only: the wheel ships no top-level ``kernels``, and from the repository
root ``import kernels`` is Hugging Face's package (which transformers imports), never our folder.

The repository-root tests run as a user meets them: subprocesses whose working directory is the root,
so that the root is on ``sys.path`` (``python -c``, ``python -m``, pytest).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _python(code: str, cwd: Path, env: dict | None = None, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args, "-c", code] if code else [sys.executable, *args],
                          capture_output=True, text=True, cwd=cwd, env=env or ENV, timeout=600)


def _installed_kernels(tmp_path: Path) -> str | None:
    """The file of the top-level ``kernels`` seen from outside the checkout (Hugging Face's), or None."""
    code = "import importlib.util as u; s = u.find_spec('kernels'); print(s.origin if s else None)"
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    origin = proc.stdout.strip()
    assert origin == "None" or Path(origin).resolve().parent != (REPO / "kernels").resolve(), origin
    return None if origin == "None" else origin


def test_editable_install_maps_kernels_under_the_namespace(tmp_path):
    # run outside the checkout so the repo root is not on sys.path
    code = "import unimlip_kit.kernels as k, unimlip_kit.kernels.infonce as m; print(k.__file__); print(m.__file__)"
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    init, infonce = proc.stdout.split("\n")[:2]
    assert Path(init).resolve() == (REPO / "kernels" / "__init__.py").resolve()
    assert Path(infonce).resolve() == (REPO / "kernels" / "infonce.py").resolve()
    _installed_kernels(tmp_path)  # a top-level 'kernels', if any, is not ours


def test_import_kernels_from_the_repository_root_is_the_installed_package(tmp_path):
    installed = _installed_kernels(tmp_path)
    code = ("import kernels, sys, unimlip_kit.kernels as ours; print(kernels.__file__); print(ours.__file__);"
            "print(sorted(k for k in sys.modules if k == 'kernels' or k.startswith('kernels.'))[:1])")
    proc = _python(code, REPO)
    if installed is None:
        assert proc.returncode != 0 and "ModuleNotFoundError: No module named 'kernels'" in proc.stderr, proc.stderr
        assert "unimlip_kit.kernels" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    theirs, ours = proc.stdout.split("\n")[:2]
    assert Path(theirs).resolve() == Path(installed).resolve()
    assert Path(ours).resolve() == (REPO / "kernels" / "__init__.py").resolve()


def test_without_the_installed_package_import_kernels_from_the_root_is_not_found():
    # every sys.path entry that holds a 'kernels' package is dropped, except the repository root itself
    code = (
        "import os, sys\n"
        "root = os.getcwd()\n"
        "sys.path[:] = [p for p in sys.path if os.path.abspath(p or root) == root\n"
        "               or not os.path.isdir(os.path.join(p, 'kernels'))]\n"
        "try:\n"
        "    import kernels\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e.name, 'kernels' in sys.modules, str(e))\n"
        "else:\n"
        "    print('imported', kernels.__file__)\n"
    )
    proc = _python(code, REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("kernels False No module named 'kernels'"), proc.stdout
    assert "unimlip_kit.kernels" in proc.stdout


def test_hugging_face_towers_build_from_the_repository_root():
    # transformers imports the top-level 'kernels' when it builds a model (transformers.integrations.hub_kernels)
    code = (
        "from unimlip_kit.models import UniMlipModel, UniMlipModelConfig\n"
        "cfg = UniMlipModelConfig(image_size=32, patch_size=8, vision_width=32, text_width=32, vision_layers=1,\n"
        "    text_layers=1, vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16, vocab_size=60,\n"
        "    mask_token_id=4, special_token_ids=[0, 1, 2, 3, 4], image_tower='resnet', cnn_hidden_sizes=[8, 16],\n"
        "    cnn_depths=[1, 1])\n"
        "model = UniMlipModel(cfg)\n"
        "print(type(model.image_tower.backbone).__name__, type(model.text_tower).__name__)\n"
    )
    proc = _python(code, REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ResNetModel", "BertModel"], proc.stdout


def test_embed_command_from_the_repository_root():
    proc = _python("", REPO, None, "-m", "unimlip_kit.embed", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--model" in proc.stdout


def test_a_kernel_doctest_from_the_repository_root():
    # pytest puts the root on sys.path; the root conftest.py collects kernels/ as unimlip_kit.kernels
    node = "kernels/infonce.py::unimlip_kit.kernels.infonce.flops"
    proc = _python("", REPO, None, "-m", "pytest", "-q", "-p", "no:cacheprovider", node)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout, proc.stdout


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
        "s = importlib.util.find_spec('kernels'); print(s.origin if s else None)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    pkg, kern, top = proc.stdout.split("\n")[:3]
    assert pkg.startswith(str(target)) and kern.startswith(str(target / "unimlip_kit" / "kernels"))
    assert top == "None" or not top.startswith(str(target)), "the wheel installed a top-level 'kernels'"
