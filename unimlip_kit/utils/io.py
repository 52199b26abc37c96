"""File helpers used everywhere results or checkpoints are written, and the recipe-script loader.

Writes are atomic (temporary file in the same folder, fsync, rename), so a run
killed mid-write never leaves a truncated checkpoint, JSON or chart.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

# git_commit (a helper of run_metadata)
# stay importable from this module but are not public API.
__all__ = ["CorruptFileError", "atomic_write", "load_json", "load_safetensors", "load_torch", "run_metadata",
           "save_json"]


class CorruptFileError(ValueError):
    """A file is there but cannot be read as what it should be; the message names the file and the problem.

    Example:
        >>> str(CorruptFileError("/r/config.json is not valid JSON: Expecting value (line 1)"))
        '/r/config.json is not valid JSON: Expecting value (line 1)'
    """


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (parents created); returns the path.

    Example:
        >>> import tempfile, os
        >>> p = atomic_write(os.path.join(tempfile.mkdtemp(), "a", "x.txt"), "hi")
        >>> p.read_text()
        'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON (sorted keys, trailing newline).

    Example:
        >>> import tempfile, os
        >>> p = save_json(os.path.join(tempfile.mkdtemp(), "r.json"), {"b": 1, "a": [1.5]})
        >>> load_json(p)
        {'a': [1.5], 'b': 1}
    """
    return atomic_write(path, json.dumps(obj, indent=indent, sort_keys=True, default=_default) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; :class:`CorruptFileError` naming the file if it is not valid JSON (e.g. cut in half).

    Example:
        >>> import tempfile, os
        >>> load_json(save_json(os.path.join(tempfile.mkdtemp(), "r.json"), [1]))
        [1]
        >>> load_json(atomic_write(os.path.join(tempfile.mkdtemp(), "half.json"), '{"a": [1, 2'))
        Traceback (most recent call last):
        ...
        unimlip_kit.utils.io.CorruptFileError: .../half.json is not valid JSON (11 bytes): Expecting ',' delimiter: line 1 column 12 (char 11)
    """
    raw = Path(path).read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({len(raw)} bytes): {err}") from None


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file; :class:`CorruptFileError` naming it if it is truncated or not one.

    Example:
        >>> import tempfile, os
        >>> load_safetensors(atomic_write(os.path.join(tempfile.mkdtemp(), "model.safetensors"), b"garbage!"))
        Traceback (most recent call last):
        ...
        unimlip_kit.utils.io.CorruptFileError: .../model.safetensors cannot be read as safetensors (8 bytes): ...
    """
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError, not an OSError
        raise CorruptFileError(f"{path} cannot be read as safetensors ({_size(path)}): {err}") from None


def load_torch(path: str | os.PathLike) -> Any:
    """``torch.load`` of a file we wrote (weights_only=False); :class:`CorruptFileError` naming it if unreadable.

    Example:
        >>> import tempfile, os
        >>> load_torch(atomic_write(os.path.join(tempfile.mkdtemp(), "state.pt"), b"noise" * 10))
        Traceback (most recent call last):
        ...
        unimlip_kit.utils.io.CorruptFileError: .../state.pt cannot be read by torch.load (50 bytes): ...
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - pickle and zip errors of every kind
        raise CorruptFileError(f"{path} cannot be read by torch.load ({_size(path)}): {type(err).__name__}: {err}") from None


def _size(path: str | os.PathLike) -> str:
    try:
        return f"{os.path.getsize(path)} bytes"
    except OSError:
        return "size unknown"


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The current git commit of ``cwd`` (or this file's checkout), or ``None`` outside git.

    Example:
        >>> c = git_commit()
        >>> c is None or len(c) == 40
        True
    """
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_metadata() -> dict[str, Any]:
    """Provenance for a result file: time, commit, versions, CPU and device.

    Example:
        >>> m = run_metadata()
        >>> sorted(k for k in m if k in ("torch", "python", "device"))
        ['device', 'python', 'torch']
    """
    import torch

    meta: dict[str, Any] = {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        # other work on the machine skews timings: record it with every result
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import triton  # noqa: F401

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    return meta
