"""What clusters do to a run: preemption signals, a second run in the same folder, a run folder in a bad state.

* :class:`Preemption`: SLURM and Kubernetes send SIGTERM before they kill a job; Ctrl-C sends SIGINT. The first
  one asks the training loop to stop after the current step; every rank learns of it at the same step
  boundary (:meth:`Preemption.agreed` takes the maximum over ranks), rank 0 writes a checkpoint and the run
  exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT), so ``--resume`` loses nothing. A second
  signal stops at once. The same collective also carries rank 0's clock for ``train.ckpt_every_minutes``.
* :class:`RunLock`: one run per ``--output-dir``. ``<run>/.lock`` is held with an exclusive ``flock`` for
  the life of the process, so the kernel frees it when the holder dies, however it dies: a stale lock is
  taken over, a live one stops the second run at once with the holder's pid and host.
* :func:`check_run_layout`: the run folder's entries are of the kind the run writes (``checkpoints`` a
  folder, ``config.yaml`` a file, ...), checked before the first step rather than at the first checkpoint.

docs/ARCHITECTURE.md ("Faults") says what each guarantees beside what PyTorch Lightning, open_clip and
torch.distributed.checkpoint do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from unimlip_kit.train.run import BACKBONES, CHECKPOINTS, CONFIG, TOKENIZER

__all__ = ["Preemption", "RunFolderLockedError", "RunLock", "check_run_layout", "exit_code_for"]

LOCK_NAME = ".lock"
#: Entries of a run folder and the kind each must be ("dir" or "file"), as the recipe writes them.
RUN_LAYOUT = {CHECKPOINTS: "dir", TOKENIZER: "dir", "model": "dir", "tensorboard": "dir", CONFIG: "file",
              BACKBONES: "file", "metrics.json": "file", "log.csv": "file", "loss_curves.png": "file",
              "summary.md": "file"}


def exit_code_for(signum: int) -> int:
    """The shell's code for a process stopped by ``signum``: ``128 + signum`` (SIGTERM 143, SIGINT 130).

    Example:
        >>> exit_code_for(signal.SIGTERM), exit_code_for(signal.SIGINT)
        (143, 130)
    """
    return 128 + int(signum)


class Preemption:
    """SIGTERM / SIGINT as a request to stop after the current step (installed for a ``with`` block).

    ``received`` is the first signal's number (``None`` before one). In ``phase="eval"`` (after training,
    when the last checkpoint is written) a signal stops at once with ``SystemExit(128 + signal)``. Handlers
    are installed only in the main thread; elsewhere the object is inert.

    Example:
        >>> with Preemption() as stop:
        ...     os.kill(os.getpid(), signal.SIGTERM)
        ...     time.sleep(0.01)  # the handler runs between bytecodes
        ...     stop.received == signal.SIGTERM, stop.agreed(torch.device("cpu"))
        (True, (15, False))
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.phase = "train"
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.phase == "eval":
            print(f"[signal] {name} during evaluation: stopping now; the training is complete in the last "
                  f"checkpoint, and --resume evaluates it again", file=sys.stderr, flush=True)
            raise SystemExit(exit_code_for(signum))
        if self.received is not None:  # the second signal: stop at once, as without a handler
            self.__exit__()
            print(f"[signal] second {name}: stopping at once, without a checkpoint", file=sys.stderr, flush=True)
            raise SystemExit(exit_code_for(signum))
        self.received = signum
        print(f"[signal] {name}: stopping after this step with a checkpoint (send it again to stop at once)",
              file=sys.stderr, flush=True)

    def agreed(self, device: torch.device, checkpoint_due: bool = False) -> tuple[int | None, bool]:
        """``(signal any rank received or None, whether rank 0 says a timed checkpoint is due)``, equal on every rank.

        One all-reduce (MAX) of two numbers under DDP; no communication in a single process.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self.received, bool(checkpoint_due)
        due = bool(checkpoint_due) and dist.get_rank() == 0
        t = torch.tensor([self.received or 0, int(due)], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        signum = int(t[0])
        return (signum or None), bool(t[1])


class RunFolderLockedError(RuntimeError):
    """Another live process holds the run folder's lock; the message names its pid and host.

    Example:
        >>> str(RunFolderLockedError("runs/x is in use by pid 12 on node3"))
        'runs/x is in use by pid 12 on node3'
    """


class RunLock:
    """An exclusive lock on a run folder: ``<run>/.lock`` under ``flock``, naming its holder (pid, host, start).

    The kernel drops a ``flock`` when its process ends, SIGKILL included, so a lock left by a killed run is
    simply taken over (and said so in ``took_over``). Where ``fcntl`` is missing (Windows) the lock is a
    no-op. ``flock`` holds across hosts on local disks and on NFSv4; on other network file systems it may
    not, which the ``.lock`` file's host field at least makes visible.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with RunLock(d) as lock:
        ...     try:
        ...         RunLock(d).acquire()
        ...     except RunFolderLockedError as err:
        ...         print(str(err).split(":")[0] == f"{d} is in use by another run")
        True
        >>> RunLock(d).acquire().release()  # free again
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.took_over: dict[str, Any] | None = None
        self._fd: int | None = None

    def _holder(self, fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        try:
            return json.loads(raw.decode()) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            return {"unreadable": raw[:80].decode(errors="replace")}

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunFolderLockedError` at once (never waits)."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run unlocked
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
                   if "pid" in holder else "a process that has not written its name yet")
            raise RunFolderLockedError(
                f"{self.run_dir} is in use by another run: {who} ({self.path}). Two runs in one folder would "
                f"overwrite each other's checkpoints and config; wait for it to finish, stop it, or use another "
                f"--output-dir") from None
        previous = self._holder(fd)
        if previous.get("pid") is not None:
            self.took_over = previous
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[:8]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file (no holder) and drop the lock; idempotent."""
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_run_layout(run_dir: str | Path) -> None:
    """Raise ``NotADirectoryError`` / ``IsADirectoryError`` naming any entry of ``run_dir`` of the wrong kind.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); (d / "checkpoints").write_text("oops")
        4
        >>> check_run_layout(d)
        Traceback (most recent call last):
        ...
        NotADirectoryError: .../checkpoints is a file, but the run keeps its checkpoints folder there: ...
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--output-dir {run_dir} is a file, not a folder")
    for name, kind in RUN_LAYOUT.items():
        path = run_dir / name
        if kind == "dir" and path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{path} is a file, but the run keeps its {name} folder there: move it away "
                                     f"or use another --output-dir")
        if kind == "file" and path.is_dir():
            raise IsADirectoryError(f"{path} is a folder, but the run writes its {name} file there: move it away "
                                    f"or use another --output-dir")
