"""A few steps of a tiny two-tower model with ``ImageTextContrastiveLoss`` under DDP (gloo); saves the weights.

    torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint HOST:PORT --node_rank R \\
        tests/ddp_tiny_train.py --out DIR        # every rank trains on its slice of the same global batch
    python tests/ddp_tiny_train.py --out DIR     # one process on the whole global batch: the reference

Each step's global batch (``--global-batch`` pairs of random features, from ``--seed``) is cut into
``WORLD_SIZE`` contiguous slices by rank; the loss all-gathers the embeddings with their gradient, so every
rank computes the loss of the global batch and DDP's gradient average equals the single-process gradient
(``unimlip_kit.distributed``). Writes ``DIR/rank<R>.pt`` (state dict) and ``DIR/rank<R>.json`` (the
distributed environment torchrun gave this process). Used by ``tests/test_multinode_torchrun.py``; the
lead replaces it with the training recipe later.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from unimlip_kit.losses import ImageTextContrastiveLoss

D_IMG, D_TXT, D = 12, 10, 6


class TinyTwoTower(nn.Module):
    """Two linear towers and a learnable log logit scale (CLIP's ``log(1/0.07)`` start)."""

    def __init__(self) -> None:
        super().__init__()
        self.img = nn.Linear(D_IMG, D)
        self.txt = nn.Linear(D_TXT, D)
        self.log_scale = nn.Parameter(torch.tensor(2.6593))

    def forward(self, x_img: torch.Tensor, x_txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return F.normalize(self.img(x_img), dim=-1), F.normalize(self.txt(x_txt), dim=-1), self.log_scale.exp()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
        assert dist.get_world_size() == world and dist.get_rank() == rank
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} is not a multiple of WORLD_SIZE={world}")

    torch.manual_seed(args.seed)
    model = TinyTwoTower()
    train_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    loss_fn = ImageTextContrastiveLoss(label_smoothing=0.1)
    data = torch.Generator().manual_seed(args.seed + 1)
    per = args.global_batch // world
    losses = []
    for _ in range(args.steps):
        x_img = torch.randn(args.global_batch, D_IMG, generator=data)
        x_txt = x_img[:, :D_TXT] + 0.5 * torch.randn(args.global_batch, D_TXT, generator=data)
        mine = slice(rank * per, (rank + 1) * per)
        img, txt, scale = train_model(x_img[mine], x_txt[mine])
        loss = loss_fn(img, txt, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / f"rank{rank}.pt")
    env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR",
                                          "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    (args.out / f"rank{rank}.json").write_text(json.dumps({"env": env, "host": socket.gethostname(), "pid": os.getpid(),
                                                           "losses": losses}))
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
