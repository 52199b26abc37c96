"""Two torchrun "nodes" of one process each on this machine (c10d rendezvous on 127.0.0.1) end with the weights
of one process trained on the same global batch.

The command is the multi-node one from /work/notes/readme_scaling.md (``--nnodes 2 --nproc_per_node 1
--rdzv_backend c10d --rdzv_endpoint HOST:PORT``), each node launched as its own subprocess; the reference is
the same script without torchrun (``WORLD_SIZE`` unset: one process, the whole global batch). Two scripts:
``tests/ddp_tiny_train.py`` (two linear towers) and the real recipe, ``recipes/uni_mlip_roco.py`` on the tiny
config with gradient-cached accumulation (2 nodes x batch 4 x grad_accum 2 == one process x batch 16).
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


def _two_nodes(script: Path, args: list[str], env: dict[str, str]) -> None:
    """Run ``script args`` as two torchrun nodes of one process each (c10d rendezvous on 127.0.0.1)."""
    port = _free_port()
    nodes = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "unimlip-test",
               "--rdzv_conf", f"is_host={int(node_rank == 0)}", "--local_addr", "127.0.0.1", "--node_rank", str(node_rank),
               "--max_restarts", "0", str(script), *args]
        nodes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO))
    try:
        logs = [p.communicate(timeout=300)[0] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in nodes] == [0, 0], "\n\n".join(log[-4000:] for log in logs)


def test_two_nodes_equal_one_process(tmp_path):
    _two_nodes(SCRIPT, ["--out", str(tmp_path / "ddp")], _env())
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
    from ddp_tiny_train import TinyTwoTower  # tests/ is on sys.path (pytest's prepend import mode)
    init = TinyTwoTower().state_dict()
    assert all((ref[k] - init[k]).abs().max() > 1e-3 for k in ref)


RECIPE = REPO / "recipes" / "uni_mlip_roco.py"
# nothing a rank draws differently from one process (per-rank streams): no dropout, token keeping,
# augmentation, ITM/MLM draws; LayerNorm towers (BatchNorm would see 4 rows, not 16); the contrastive terms stay on
RECIPE_ARGS = ["--config", str(REPO / "recipes" / "configs" / "tiny.yaml"), "--max-steps", "2", "model.image_tower=vit",
               "model.dropout=0", "model.image_keep_ratio=1", "augment.enabled=false", "loss.weights.itm=0",
               "loss.weights.mlm=0", "eval.tasks=[]"]


def test_recipe_on_two_nodes_with_grad_cache_equals_one_process(tmp_path):
    """The recipe itself: 2 nodes x batch 4 x grad_accum 2 (gradient caching, DDP) == 1 process x batch 16, 2 steps."""
    from safetensors.torch import load_file

    env = dict(_env(), UNIMLIP_CACHE=str(tmp_path / "cache"))
    _two_nodes(RECIPE, RECIPE_ARGS + ["--batch-size", "4", "--grad-accum", "2", "--output-dir", str(tmp_path / "ddp")], env)
    single = subprocess.run([sys.executable, str(RECIPE), *RECIPE_ARGS, "--batch-size", "16",
                             "--output-dir", str(tmp_path / "one")], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=300)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 2
    ckpt = Path("checkpoints") / "step_0000002" / "model.safetensors"
    got, ref = load_file(str(tmp_path / "ddp" / ckpt)), load_file(str(tmp_path / "one" / ckpt))
    assert got.keys() == ref.keys()
    scale = max(float(v.abs().max()) for v in ref.values())
    worst = max(float((got[k] - ref[k]).abs().max()) for k in ref)
    assert worst <= 2e-5 * max(scale, 1.0), f"two nodes differ from one process by {worst:.3g}"
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["train"]["final_losses"]
    two = metrics["train"]["final_losses"]
    for term in ("total", "itc", "itc_feature", "image_ssl", "text_ssl"):  # the loss of the global batch of 16
        assert two[term] == pytest.approx(one[term], rel=1e-4, abs=1e-5), term
