"""Multi-process training's one collective: every process ends a step with the average of all processes'
gradients (two CPU processes, gloo, as torchrun would start them)."""
from __future__ import annotations

import os
import socket
import sys

import torch
import torch.multiprocessing as mp

from harness import REPO_ROOT


def _worker(rank: int, world: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    sys.path.insert(0, str(REPO_ROOT))  # the library's pure-torch module, without ComfyUI
    from ipadapter.training.distributed import average_gradients, join_process_group

    import torch.distributed as dist

    assert join_process_group() == (rank, world)
    layer = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    (layer(torch.full((1, 3), float(rank + 1))).sum()).backward()  # rank r's gradient: every entry r + 1
    average_gradients(layer)
    out[rank] = layer.weight.grad.clone()
    dist.destroy_process_group()


def test_gradients_are_averaged_over_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    for rank in (0, 1):
        assert torch.equal(out[rank], torch.full((2, 3), 1.5))  # (1 + 2) / 2 on both


def test_a_single_process_leaves_gradients_alone():
    from ipadapter_next.ipadapter.training.distributed import average_gradients, join_process_group

    layer = torch.nn.Linear(2, 1, bias=False)
    layer(torch.ones(1, 2)).sum().backward()
    before = layer.weight.grad.clone()
    assert join_process_group() == (0, 1)
    average_gradients(layer)
    assert torch.equal(layer.weight.grad, before)
