"""Print the lowest declared versions of unimlip_kit's dependencies as exact pins (one per line), for CI.

Every ``name>=X`` of ``[project] dependencies`` in pyproject.toml becomes ``name==X``, and so do the
test tools (``pytest``, ``hypothesis``) of the ``dev`` extra, so the floor check always installs
what pyproject.toml declares, not a copy of it. torch is pinned to ``TORCH`` instead of its floor: the
CI machine has only that CPU wheel offline (a PyPI torch is a multi-GB CUDA build).

``--check`` instead compares the installed versions with those pins and exits 1 on a difference
(pip may not resolve every pin as written when one floor needs a newer other).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

TORCH = "2.13.0"
TEST_TOOLS = ("pytest", "hypothesis")
_REQ = re.compile(r"^([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)")


def floor_pins(pyproject: Path) -> list[str]:
    meta = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(meta["dependencies"])
    reqs += [r for r in meta["optional-dependencies"]["dev"] if r.split(">")[0].strip() in TEST_TOOLS]
    pins = []
    for req in reqs:
        m = _REQ.match(req)
        if not m:
            raise SystemExit(f"{req!r} has no '>=' floor: declare one so CI can test it")
        name, version = m.groups()
        pins.append(f"torch=={TORCH}" if name == "torch" else f"{name}=={version}")
    return pins


def _release(text: str) -> tuple[int, int, int]:
    """``"1.24"`` and ``"1.24.0"`` -> ``(1, 24, 0)``."""
    parts = [int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def main() -> int:
    pins = floor_pins(Path(__file__).resolve().parents[1] / "pyproject.toml")
    if "--check" not in sys.argv:
        print("\n".join(pins))
        return 0
    from importlib.metadata import version

    bad = []
    for pin in pins:
        name, want = pin.split("==")
        have = version(name).split("+")[0]
        if _release(have) != _release(want):
            bad.append(f"{name}: installed {have}, declared floor {want}")
    for line in bad:
        print(f"floor check: {line}", file=sys.stderr)
    print(f"floor check: {len(pins) - len(bad)}/{len(pins)} installed at their declared floor")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
