"""``make info`` / ``unimlip_kit.info``: installed beside tested versions, read from constraints.txt; .ci/versions.py."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from unimlip_kit import info as info_module
from unimlip_kit.info import CONSTRAINTS, collect_info

read_lock = info_module.tested_versions  # (a module-level name starting with "test" would be collected)

REPO = Path(__file__).resolve().parents[1]


def test_the_lock_pins_the_stack_but_not_torch_or_ourselves():
    assert CONSTRAINTS == REPO / "constraints.txt"
    lock = read_lock()
    assert {"transformers", "huggingface-hub", "kornia", "kernels", "pytest", "open-clip-torch"} <= set(lock)
    assert "torch" not in lock and "unimlip-kit" not in lock
    for line in CONSTRAINTS.read_text().splitlines():  # every non-comment line is an exact pin
        assert not line.strip() or line.startswith("#") or line.count("==") == 1, line


def test_bad_lines_are_named(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("numpy==2.0\nkornia>=0.9\n")
    with pytest.raises(ValueError, match=r"c.txt:2: 'kornia>=0.9' is not 'name==version'"):
        read_lock(f)
    assert read_lock(tmp_path / "absent.txt") == {}


def test_collect_info_puts_the_tested_version_beside_the_installed_one():
    info = collect_info()
    lock = read_lock()
    assert info["tested"]["transformers"] == lock["transformers"]
    assert info["versions"]["transformers"] == importlib.metadata.version("transformers")
    assert info["tested"]["torch"] is None


def test_versions_moved_names_what_differs_from_the_lock(tmp_path):
    lock = read_lock()
    have = importlib.metadata.version("transformers")
    fake = tmp_path / "lock.txt"
    pins = {**lock, "transformers": "0.0.1", "not-a-real-package-x": "1.0"}
    fake.write_text("".join(f"{k}=={v}\n" for k, v in pins.items()))
    proc = subprocess.run([sys.executable, str(REPO / ".ci" / "versions.py"), "moved", "--lock", str(fake)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"transformers: 0.0.1 -> {have}" in proc.stdout
    assert "not-a-real-package-x: 1.0, no longer installed" in proc.stdout
    check = subprocess.run([sys.executable, str(REPO / ".ci" / "versions.py"), "check", "--lock", str(fake)],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 1 and "transformers: 0.0.1" in check.stdout
