"""Fused Triton kernels, installed as ``unimlip_kit.kernels`` (never as a top-level ``kernels``).

Nothing here imports Triton at package import time: each kernel module is
imported by :mod:`unimlip_kit.backends` only when its backend is chosen.

The name rule (docs/ARCHITECTURE.md, "The top-level kernels/ folder"): this folder sits at the top of the
repository, so it is importable as a plain ``kernels`` whenever the repository root is on ``sys.path``
(``python -m ...`` or ``python -c ...`` started there, pytest's ``pythonpath``). Hugging Face's ``kernels``
package has that name, and transformers imports it when it builds a model. So this file, run under any
name but ``unimlip_kit.kernels``, never becomes a module of ours: it loads the next ``kernels`` found
beyond this repository (the installed package) in its place, or raises ``ModuleNotFoundError`` as though
nothing were there. Our kernels are reached only as ``unimlip_kit.kernels.<module>``.

Example:
    >>> import unimlip_kit.kernels as k
    >>> k.__name__, k.__all__
    ('unimlip_kit.kernels', [])
"""

if __name__ != "unimlip_kit.kernels":
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    def _hand_over(name: str, here: str) -> None:
        """Put the ``name`` found outside the folder that holds ``here`` into ``sys.modules``, or raise.

        Searched: every meta-path finder; the path finder over ``sys.path`` without this repository's
        root (the current folder included when it is the root). The import statement that ran this file
        then returns whatever ``sys.modules[name]`` holds.
        """
        root = _os.path.dirname(_os.path.dirname(_os.path.abspath(here)))
        rest = [p for p in _sys.path if _os.path.abspath(p or _os.getcwd()) != root]
        spec = None
        for finder in _sys.meta_path:
            if finder is _machinery.PathFinder:
                spec = _machinery.PathFinder.find_spec(name, rest)
            elif hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, None)
            if spec is not None and spec.origin != _os.path.abspath(here):
                break
            spec = None
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(
                f"No module named {name!r}: the folder {_os.path.dirname(here)} is unimlip_kit's kernels, "
                "importable only as 'unimlip_kit.kernels' (pip install kernels for Hugging Face's package)",
                name=name,
            )
        module = _util.module_from_spec(spec)
        _sys.modules[name] = module
        spec.loader.exec_module(module)

    _hand_over(__name__, __file__)
else:
    # Importable here for older code; public (in __all__) only in their home, unimlip_kit.backends.
    from unimlip_kit.backends import is_triton_available, triton_interpret_enabled  # noqa: F401

    __all__: list[str] = []
