"""Cluster faults, as a user meets them: the recipe in a subprocess on the tiny config, real signals, a second run.

Each test starts ``recipes/uni_mlip_roco.py``, waits for a complete checkpoint (so steps are running), does
what a cluster does, and checks the observable outcome: the exit code, the message, the checkpoint on disk
and the resumed run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unimlip_kit.train.faults import RunLock

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "uni_mlip_roco.py"
TINY = ["--config", str(ROOT / "recipes" / "configs" / "tiny.yaml")]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and flock")


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", UNIMLIP_CACHE=str(tmp_path / "cache"))


def _start(tmp_path: Path, out: Path, *extra: str, torchrun: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, str(RECIPE), *TINY, "--output-dir", str(out), "--max-steps", "400",
           "train.ckpt_every=2", "train.keep_checkpoints=0", "eval.tasks=[retrieval]", *extra]
    if torchrun:
        cmd[1:2] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(RECIPE)]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, step: int = 2, timeout: float = 240) -> None:
    target = out / "checkpoints" / f"step_{step:07d}" / "state.pt"
    t0 = time.time()
    while not target.is_file():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before step {step}:\n{proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"no checkpoint at step {step} after {timeout} s")
        time.sleep(0.05)


def _steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*") if (p / "state.pt").is_file())


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_the_current_step_and_resume_loses_nothing(tmp_path, sig, code):
    out = tmp_path / "run"
    proc = _start(tmp_path, out)
    _wait_for_checkpoint(proc, out)
    os.kill(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stdout[-2000:] + stderr[-2000:]
    name = signal.Signals(sig).name
    assert f"[signal] {name}: stopping after this step" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    line = next(x for x in stdout.splitlines() if x.startswith("[preempted]"))
    stopped = int(line.split("stopped after step ")[1].split(" ")[0])
    assert f"[preempted] {name}" in line and "--resume" in line
    assert _steps(out)[-1] == stopped >= 2  # the step it stopped at is on disk: nothing to lose
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
    if sig == signal.SIGINT:
        return
    # --resume continues from that step; the log is continuous and every step was trained once
    resumed = subprocess.run([sys.executable, str(RECIPE), "--resume", "--output-dir", str(out),
                              f"train.max_steps={stopped + 2}"], cwd=ROOT, env=_env(tmp_path),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"from {out / 'checkpoints' / f'step_{stopped:07d}'} at step {stopped}" in resumed.stdout
    with open(out / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, stopped + 3))
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == stopped + 2


def test_a_second_run_in_the_same_folder_stops_at_once_naming_the_first(tmp_path):
    out = tmp_path / "run"
    first = _start(tmp_path, out, "--seed", "1")
    try:
        _wait_for_checkpoint(first, out)
        t0 = time.time()
        second = subprocess.run([sys.executable, str(RECIPE), *TINY, "--output-dir", str(out), "--max-steps", "3",
                                 "--seed", "2"], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                                timeout=300)
        took = time.time() - t0
        assert second.returncode == 1
        assert f"is in use by another run: pid {first.pid} on {socket.gethostname()}" in second.stderr
        assert took < 60  # before any data or model is built (imports dominate)
        assert "seed: 1" in (out / "config.yaml").read_text()  # the first run's config is untouched
    finally:
        os.kill(first.pid, signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    first = _start(tmp_path, out)
    _wait_for_checkpoint(first, out)
    os.killpg(first.pid, signal.SIGKILL)  # no handler runs: the lock file keeps the dead run's name
    first.communicate(timeout=60)
    holder = json.loads((out / ".lock").read_text())
    assert holder["pid"] == first.pid
    resumed = subprocess.run([sys.executable, str(RECIPE), "--resume", "--output-dir", str(out), "train.max_steps=3"],
                             cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"locked by pid {first.pid} on {socket.gethostname()}, which is gone: taken over" in resumed.stdout
    assert (out / ".lock").read_text() == ""  # released at the end
    with RunLock(out):  # and free
        pass


def test_checkpoints_as_a_file_fails_before_the_first_step(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("not a folder")
    proc = subprocess.run([sys.executable, str(RECIPE), *TINY, "--output-dir", str(out), "--max-steps", "3"],
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert f"NotADirectoryError: {out / 'checkpoints'} is a file, but the run keeps its checkpoints folder" in proc.stderr
    assert not (out / "config.yaml").exists()


def test_timed_checkpoints_come_on_the_clock_as_well_as_by_steps(tmp_path, monkeypatch):
    from recipes import uni_mlip_roco

    monkeypatch.setenv("UNIMLIP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    uni_mlip_roco.main(TINY + ["--output-dir", str(out), "--max-steps", "4", "train.ckpt_every=1000",
                               "train.keep_checkpoints=0", "train.ckpt_every_minutes=1e-9", "eval.tasks=[retrieval]"])
    assert _steps(out) == [1, 2, 3, 4]  # every step is past the (tiny) interval; ckpt_every alone gives [4]


def _rank_pid(parent: int, rank: int, timeout: float = 120) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and f"RANK={rank}".encode() in env:
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} under pid {parent}")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the rank's process through /proc")
def test_under_ddp_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    out = tmp_path / "ddp"
    proc = _start(tmp_path, out, torchrun=True)
    _wait_for_checkpoint(proc, out)
    os.kill(_rank_pid(proc.pid, 1), signal.SIGTERM)  # rank 1 only; rank 0 writes the checkpoint
    stdout, stderr = proc.communicate(timeout=180)
    assert "[signal] SIGTERM: stopping after this step" in stderr
    line = next(x for x in stdout.splitlines() if x.startswith("[preempted]"))  # printed by rank 0
    stopped = int(line.split("stopped after step ")[1].split(" ")[0])
    assert _steps(out)[-1] == stopped
    # torchrun exits 1 when a worker stops with 143, naming it (the first to exit; it then stops the other)
    assert proc.returncode == 1 and "exitcode  : 143" in stderr
    assert "Timeout" not in stderr and "timed out" not in stderr  # no rank was left waiting in a collective
