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


def _finite_weights(ckpt: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(str(ckpt / "model.safetensors")).values()
               if t.is_floating_point())


def test_a_diverging_run_stops_naming_the_step_term_and_lr_and_keeps_finite_weights(tmp_path):
    import re

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(RECIPE), *TINY, "--output-dir", str(out), "--max-steps", "30",
                           "train.lr=1e6", "train.keep_checkpoints=0"], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    m = re.match(r"unimlip_kit\.train\.step\.NonFiniteLossError: step (\d+): NaN or infinity in (.+) at learning "
                 r"rate 1e\+06; the weights were not updated$", last)
    assert m, last
    step = int(m.group(1))
    assert 1 < step <= 30
    assert f"Stopped (train.on_nonfinite=stop); the weights of step {step - 1} are in " in proc.stdout
    assert not (out / "model").exists() and not (out / "metrics.json").exists()  # no NaN weights as model/
    assert _steps(out)[-1] == step - 1  # the last good weights, checkpointed
    assert _finite_weights(out / "checkpoints" / f"step_{step - 1:07d}")


def test_on_nonfinite_skip_skips_a_bad_step_counts_it_and_trains_on(tmp_path, monkeypatch):
    from recipes import uni_mlip_roco

    from unimlip_kit.losses import UniMlipLoss

    calls = {"n": 0}

    class NaNOnce(UniMlipLoss):  # the third training step's loss is NaN, as from one bad batch
        def forward(self, outputs):
            res = super().forward(outputs)
            if self.training:
                calls["n"] += 1
                if calls["n"] == 3:
                    return type(res)(res[0] * float("nan"), res[1])
            return res

    monkeypatch.setattr(uni_mlip_roco, "UniMlipLoss", NaNOnce)
    monkeypatch.setenv("UNIMLIP_CACHE", str(tmp_path / "cache"))
    metrics = uni_mlip_roco.main(TINY + ["--output-dir", str(tmp_path / "run"), "--max-steps", "5",
                                         "train.on_nonfinite=skip", "eval.tasks=[retrieval]"])
    assert metrics["train"]["steps"] == 5 and metrics["train"]["nonfinite_skipped_steps"] == [3]
    assert _finite_weights(tmp_path / "run" / "checkpoints" / "step_0000005")
    with open(tmp_path / "run" / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 4, 5]  # the skipped step logs no losses


@pytest.mark.parametrize("where", ["term", "output", "gradient"])
def test_train_step_never_applies_a_non_finite_update_and_names_where(tmp_path, where):
    import torch

    from unimlip_kit.data import (ImageTextDataset, StepStream, SyntheticConfig, build_dataloader,
                                  load_synthetic_records)
    from unimlip_kit.losses import UniMlipLoss
    from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
    from unimlip_kit.text import train_wordpiece_tokenizer
    from unimlip_kit.train import BatchMaker, NonFiniteLossError, RecipeConfig, TrainParts, build_optimizer, train_step

    recs = load_synthetic_records(SyntheticConfig(n_train=8, n_validation=1, n_test=1, image_size=16), "train",
                                  cache_dir=tmp_path)
    tok = train_wordpiece_tokenizer([r.caption for r in recs], vocab_size=80)
    cfg = RecipeConfig()
    model = UniMlipModel(UniMlipModelConfig(
        image_size=16, vision_layers=1, text_layers=1, vision_width=16, text_width=16, vision_heads=2, text_heads=2,
        fusion_heads=2, embed_dim=8, ssl_dim=8, vocab_size=len(tok), mask_token_id=tok.mask_token_id,
        special_token_ids=sorted(tok.all_special_ids)))
    opt, sched = build_optimizer(model, cfg.train)

    class Bad(UniMlipLoss):
        def loss_itm(self, outputs):
            value = super().loss_itm(outputs)
            if where == "term":
                return value * float("nan")
            if where == "output":
                from unimlip_kit.utils.checks import check_finite
                check_finite(torch.tensor([float("inf")]), "itm_logits")
            return value

    stream = StepStream(build_dataloader(ImageTextDataset(recs, image_size=16), 4, drop_last=True))
    parts = TrainParts(model, Bad(), BatchMaker(cfg, tok, torch.device("cpu")), opt, sched, seed=0,
                       device=torch.device("cpu"))
    if where == "gradient":  # a finite loss whose gradient is infinite: scale one parameter's gradient by inf
        p0 = next(model.parameters())
        p0.register_hook(lambda g: g * float("inf"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError) as caught:
        train_step(parts, 4, stream.next)
    err = caught.value
    assert err.step == 5 and err.lr == sched.get_last_lr()[0]
    assert err.terms == {"term": ["itm"], "output": ["itm"], "gradient": ["gradient"]}[where]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no update reached the weights
    assert all(p.grad is None for p in model.parameters())  # and the gradients are gone


def _tiny_run(tmp_path: Path, out: Path, steps: int, *extra: str) -> None:
    proc = subprocess.run([sys.executable, str(RECIPE), *TINY, "--output-dir", str(out), "--max-steps", str(steps),
                           "train.ckpt_every=2", "train.keep_checkpoints=0", "eval.tasks=[retrieval]", *extra],
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _resume(tmp_path: Path, out: Path, steps: int, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RECIPE), "--resume", "--output-dir", str(out),
                           f"train.max_steps={steps}"], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300, preexec_fn=preexec)


def test_a_damaged_newest_checkpoint_is_skipped_naming_it_and_none_valid_names_every_file(tmp_path):
    out = tmp_path / "run"
    _tiny_run(tmp_path, out, 4)
    assert _steps(out) == [2, 4]
    weights = out / "checkpoints" / "step_0000004" / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size // 2)  # a node died while copying it, or the disk lost the tail
    resumed = _resume(tmp_path, out, 6)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"skipped 1 damaged checkpoint(s), using {out / 'checkpoints' / 'step_0000002'}" in resumed.stderr
    assert f"{weights} has {size // 2} bytes, the manifest says {size}" in resumed.stderr
    assert f"[resume] from {out / 'checkpoints' / 'step_0000002'} at step 2" in resumed.stdout
    assert _steps(out) == [2, 4, 6] and json.loads((out / "metrics.json").read_text())["train"]["steps"] == 6
    # every checkpoint damaged: the error names each file and its problem, and nothing is overwritten
    states = {step: out / "checkpoints" / f"step_{step:07d}" / "state.pt" for step in (2, 4, 6)}
    states[2].write_bytes(os.urandom(states[2].stat().st_size))  # noise of the right size: only the hash tells
    for step in (4, 6):
        states[step].write_bytes(os.urandom(4096))
    failed = _resume(tmp_path, out, 8)
    assert failed.returncode == 1
    assert f"CorruptCheckpointError: no valid checkpoint in {out / 'checkpoints'}" in failed.stderr
    assert f"{states[2]} does not match its SHA-256" in failed.stderr
    for step in (4, 6):
        assert f"{states[step]} has 4096 bytes, the manifest says" in failed.stderr
    assert _steps(out) == [2, 4, 6]


def test_a_full_disk_while_checkpointing_names_the_path_and_free_space_and_keeps_the_previous(tmp_path):
    import resource

    out = tmp_path / "run"
    _tiny_run(tmp_path, out, 2)

    def small_files():  # a real file-size limit: writes past 200 kB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    failed = _resume(tmp_path, out, 4, preexec=small_files)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    line = next(x for x in failed.stderr.splitlines() if x.startswith("unimlip_kit.train.run.CheckpointWriteError"))
    assert f"writing checkpoint {out / 'checkpoints' / 'step_0000002'}" not in line
    assert f"writing checkpoint {out / 'checkpoints' / 'step_0000004'} failed: File too large" in line
    assert "GB free on" in line and f"the previous checkpoint {out / 'checkpoints' / 'step_0000002'} is intact" in line
    assert _steps(out) == [2] and not list((out / "checkpoints").glob(".tmp-*"))  # nothing half-written left
    assert not list((out / "checkpoints").glob("step_*/.*.tmp"))
    resumed = _resume(tmp_path, out, 4)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert _steps(out) == [2, 4]


def test_from_pretrained_names_the_file_that_is_cut_or_garbage(tmp_path):
    from unimlip_kit.models import UniMlipModel, UniMlipModelConfig
    from unimlip_kit.utils.io import CorruptFileError

    cfg = UniMlipModelConfig(image_size=32, patch_size=8, vision_width=32, text_width=32, vision_layers=1,
                             text_layers=1, vision_heads=2, text_heads=2, fusion_heads=2, embed_dim=16, ssl_dim=16,
                             vocab_size=60, mask_token_id=4, special_token_ids=[0, 1, 2, 3, 4])
    UniMlipModel(cfg).save_pretrained(tmp_path)
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    w, c = weights.read_bytes(), config.read_text()
    weights.write_bytes(w[: len(w) // 2])
    with pytest.raises(CorruptFileError, match=rf"{weights} cannot be read as safetensors \({len(w) // 2} bytes\)"):
        UniMlipModel.from_pretrained(tmp_path)
    weights.write_bytes(b"not safetensors at all")
    with pytest.raises(CorruptFileError, match=rf"{weights} cannot be read as safetensors"):
        UniMlipModel.from_pretrained(tmp_path)
    weights.write_bytes(w)
    config.write_text(c[: len(c) // 2])
    with pytest.raises(CorruptFileError, match=rf"{config} is not valid JSON"):
        UniMlipModel.from_pretrained(tmp_path)
    config.write_text(c)
    assert UniMlipModel.from_pretrained(tmp_path) is not None


def test_a_shard_cut_short_under_ddp_keeps_every_rank_in_step_and_counts_every_lost_sample(tmp_path):
    import warnings

    from unimlip_kit.data import SyntheticConfig, build_synthetic_dataset, read_roco, write_shards
    from unimlip_kit.data import shards as shards_mod
    from unimlip_kit.train import RecipeConfig
    from unimlip_kit.utils import load_config

    syn = load_config(RecipeConfig, ROOT / "recipes" / "configs" / "tiny.yaml").data.synthetic
    roco = build_synthetic_dataset(syn, tmp_path / "cache")
    shards = tmp_path / "shards"
    write_shards(read_roco(roco, "train"), shards, max_per_shard=10)  # 5 shards, 48 samples
    victim = shards / "shard-000001.tar"
    os.truncate(victim, victim.stat().st_size // 2)  # the index is left as written, as after a failed copy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lost = 10 - shards_mod._count_samples(str(victim))  # the samples no reader can get back
    assert 0 < lost < 10
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(RECIPE), *TINY,
           "--data-root", str(shards), f"data.eval_root={roco}", "--max-steps", "4", "--output-dir", str(out),
           "eval.tasks=[retrieval]"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "truncated; keeping its indexed 10 samples" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 4
    # 4 steps x 2 ranks x 8 = 64 draws from 48 samples (24 a rank an epoch): every sample met, each lost one counted
    assert metrics["data"]["skipped"] == lost
    assert metrics["data"]["train_pairs_available"] + lost == 48


def test_a_run_folder_with_a_cut_file_names_it_when_loaded(tmp_path, monkeypatch):
    from recipes import uni_mlip_roco

    from unimlip_kit.train import load_run
    from unimlip_kit.utils.io import CorruptFileError

    monkeypatch.setenv("UNIMLIP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    uni_mlip_roco.main(TINY + ["--output-dir", str(out), "--max-steps", "2", "train.ckpt_every=2",
                               "eval.tasks=[retrieval]"])
    assert load_run(out)[0] is not None
    tok = out / "tokenizer" / "tokenizer.json"
    text = tok.read_text()
    tok.write_text(text[: len(text) // 3])
    with pytest.raises(CorruptFileError, match=rf"{tok} is not valid JSON"):
        load_run(out)
    tok.write_text(text)
    weights = out / "checkpoints" / "step_0000002" / "model.safetensors"
    os.truncate(weights, 100)
    with pytest.raises(Exception, match=rf"{weights} has 100 bytes, the manifest says"):
        load_run(out)
