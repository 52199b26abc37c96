"""Fused Triton kernels, installed as ``unimlip_kit.kernels`` (never as a top-level ``kernels``).

Nothing here imports Triton at package import time: each kernel module is
imported by :mod:`unimlip_kit.backends` only when its backend is chosen.
"""

# Importable here for older code; public (in __all__) only in their home, unimlip_kit.backends.
from unimlip_kit.backends import is_triton_available, triton_interpret_enabled  # noqa: F401

__all__: list[str] = []
