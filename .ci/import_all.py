"""Import every public module of unimlip_kit (the API-surface list plus the command modules); CI's floor check."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_api_surface import MODULES  # noqa: E402  (the one list of public modules)

EXTRA = ["unimlip_kit", "unimlip_kit.inference", "unimlip_kit.embed", "unimlip_kit.models.hub"]
for name in [*EXTRA, *MODULES]:
    importlib.import_module(name)
print(f"imported {len(EXTRA) + len(MODULES)} modules")
