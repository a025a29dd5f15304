"""Several processes (torchrun / accelerate launch): joining the group and averaging the adapter's gradients.

Pure torch, so it can run (and be tested) without ComfyUI.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["average_gradients", "join_process_group"]


def join_process_group() -> tuple[int, int]:
    """(rank, world size); joins the process group when a launcher started several processes (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def average_gradients(module: nn.Module) -> None:
    """Average the gradients of ``module`` over the processes, each having computed them on its own samples.
    The adapter is a handful of tensors (its IP layers are one), so this is a few all-reduce calls per step.
    Nothing happens in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)
