"""The tested set of versions (constraints.txt) against what a virtual environment holds.

    VENV/bin/python .ci/versions.py moved   # which packages of VENV differ from constraints.txt
    VENV/bin/python .ci/versions.py lock    # rewrite constraints.txt from VENV
    VENV/bin/python .ci/versions.py check   # exit 1 unless VENV holds exactly the lock

constraints.txt pins every package that ``make setup`` installs besides torch (the Makefile installs the CPU
wheel, TORCH_SPEC, first and pip keeps it) and unimlip_kit itself (editable). ``make test`` installs with
``-c constraints.txt``; .ci/run also builds a venv without it (the newest versions pip resolves today),
prints ``moved`` for it and runs the test suite there, so an upstream release that breaks us shows up on
the day it lands, naming what moved. Run it with the python of the venv it inspects (unimlip_kit installed):
the lock is read by ``unimlip_kit.info.tested_versions``, the one reader of that file.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

from unimlip_kit.info import normalize_name, tested_versions

LOCK = Path(__file__).resolve().parents[1] / "constraints.txt"
NOT_LOCKED = {"torch", "unimlip-kit", "pip", "setuptools", "wheel"}  # torch: TORCH_SPEC; the rest: the venv's own
HEADER = """\
# The tested set: every package `make setup` installs, at the versions `make test` passed with
# (make setup installs with -c constraints.txt). torch is not here: the Makefile installs TORCH_SPEC
# (torch==2.13.0, the CPU wheel) first. .ci/run also tests the newest versions pip resolves and names the
# packages that moved. To refresh after such a run passes: VENV/bin/python .ci/versions.py lock
"""


def installed() -> dict[str, str]:
    """``{name: version}`` of every distribution this python sees, NOT_LOCKED left out (PEP 503 names)."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = normalize_name(dist.metadata["Name"] or "")
        if name and name not in NOT_LOCKED:
            out.setdefault(name, dist.version)  # the first on sys.path wins, as for imports
    return out


def moved(lock: dict[str, str], have: dict[str, str]) -> list[str]:
    """One line per package whose version differs between ``lock`` and ``have``, sorted by name."""
    lines = []
    for name in sorted(set(lock) | set(have)):
        old, new = lock.get(name), have.get(name)
        if old == new:
            continue
        if old is None:
            lines.append(f"{name}: new, {new}")
        elif new is None:
            lines.append(f"{name}: {old}, no longer installed")
        else:
            lines.append(f"{name}: {old} -> {new}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["moved", "lock", "check"])
    ap.add_argument("--lock", type=Path, default=LOCK)
    args = ap.parse_args(argv)
    have = installed()
    if args.action == "lock":
        body = "".join(f"{name}=={version}\n" for name, version in sorted(have.items()))
        args.lock.write_text(HEADER + body, encoding="utf-8")
        print(f"wrote {len(have)} pins to {args.lock}")
        return 0
    lines = moved(tested_versions(args.lock), have)
    if args.action == "check":
        for line in lines:
            print(f"versions: differs from {args.lock.name}: {line}")
        return 1 if lines else 0
    if lines:
        print(f"versions: {len(lines)} package(s) moved from {args.lock.name} (locked -> resolved today):")
        for line in lines:
            print(f"  {line}")
    else:
        print(f"versions: the newest versions pip resolves are those of {args.lock.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
