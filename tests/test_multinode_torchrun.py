"""Two torchrun "nodes" of one process each on this machine (c10d rendezvous on 127.0.0.1) end with the weights
of one process trained on the same global batch.

The command is the multi-node one from /work/notes/readme_scaling.md (``--nnodes 2 --nproc_per_node 1
--rdzv_backend c10d --rdzv_endpoint HOST:PORT``), each node launched as its own subprocess; the reference is
the same script without torchrun (``WORLD_SIZE`` unset: one process, the whole global batch).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

SCRIPT = Path(__file__).with_name("ddp_tiny_train.py")
REPO = SCRIPT.parents[1]

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(REPO))
    return env


def test_two_nodes_equal_one_process(tmp_path):
    port = _free_port()
    nodes = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "unimlip-test",
               "--rdzv_conf", f"is_host={int(node_rank == 0)}", "--local_addr", "127.0.0.1", "--node_rank", str(node_rank),
               "--max_restarts", "0", str(SCRIPT), "--out", str(tmp_path / "ddp")]
        nodes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO))
    try:
        logs = [p.communicate(timeout=300)[0] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in nodes] == [0, 0], "\n\n".join(logs)
    single = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "one")], capture_output=True, text=True,
                            env=_env(), cwd=REPO, timeout=300)
    assert single.returncode == 0, single.stderr

    infos = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(i["env"]["GROUP_RANK"] for i in infos) == ["0", "1"]  # two nodes (agents), one process each
    assert {i["env"]["WORLD_SIZE"] for i in infos} == {"2"} and {i["env"]["LOCAL_RANK"] for i in infos} == {"0"}
    assert infos[0]["env"]["MASTER_ADDR"] == "127.0.0.1"
    ref = torch.load(tmp_path / "one" / "rank0.pt")
    for r in (0, 1):
        got = torch.load(tmp_path / "ddp" / f"rank{r}.pt")
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=f"rank {r} {k}")
    # every rank computed the loss of the global batch: the same losses as the single process
    ref_losses = json.loads((tmp_path / "one" / "rank0.json").read_text())["losses"]
    for i in infos:
        assert i["losses"] == pytest.approx(ref_losses, rel=1e-5)
    # and training moved the weights (the comparison is not between untouched initialisations)
    torch.manual_seed(0)
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from ddp_tiny_train import TinyTwoTower
    finally:
        sys.path.pop(0)
    init = TinyTwoTower().state_dict()
    assert all((ref[k] - init[k]).abs().max() > 1e-3 for k in ref)
