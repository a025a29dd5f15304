"""Benchmark mode: training steps on random data of a given shape, timed, with peak memory.

Random latents, image features, text context (and SDXL's size vector) replace the encoders, so the
numbers are the step itself (UNet forward and backward through the patch, projection, AdamW), which is
what sizes a run and what compares with the reference recipe's step.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["BenchResult", "SavedBytes", "measure", "random_inputs", "trainer_step"]


@dataclass(frozen=True)
class BenchResult:
    median_s: float
    steps: int
    peak_bytes: int  # CUDA: peak allocated during the steps; CPU: bytes autograd saved for one backward
    peak_kind: str

    def describe(self) -> str:
        return (f"median step {self.median_s * 1000:.1f} ms over {self.steps} steps; "
                f"peak memory {self.peak_bytes / 2**20:.1f} MiB ({self.peak_kind})")


class SavedBytes:
    """Counts the bytes autograd keeps for the backward pass (the activation memory of a training step)."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: set[int] = set()

    def pack(self, t: Tensor):
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if key not in self._seen:
            self._seen.add(key)
            self.total += t.untyped_storage().nbytes()
        return t

    @contextmanager
    def counting(self) -> Iterator["SavedBytes"]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield self


def random_inputs(trainer, batch: int, resolution: int, seed: int = 0):
    """(latents, features, context, y) of the shapes a real batch has, on the trainer's device."""
    g = torch.Generator().manual_seed(seed)
    latent = resolution // 8
    x0 = torch.randn(batch, 4, latent, latent, generator=g)
    cv = trainer.clip_vision
    from ..encode import encoder_widths

    widths = encoder_widths(cv)
    width = widths[trainer.output]
    if trainer.output == "image_embeds":
        features = torch.randn(batch, width, generator=g)
    else:
        tokens = (widths["image_size"] // 14) ** 2 + 1
        features = torch.randn(batch, tokens, width, generator=g)
    context_dim = trainer.adapter.layers.weight.shape[1]
    context = torch.randn(batch, 77, context_dim, generator=g)
    y = None
    if trainer.arch == "sdxl":
        y = torch.randn(batch, trainer.model.model.adm_channels if hasattr(trainer.model.model, "adm_channels") else 2816,
                        generator=g)
    return x0, features, context, y


def trainer_step(trainer, inputs) -> Callable[[], None]:
    """One optimiser step of ``trainer`` on fixed ``inputs``."""
    def step() -> None:
        loss = trainer.loss(*inputs)
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return step


def measure(step: Callable[[], None], steps: int, device: torch.device, warmup: int = 2,
            saved_bytes: Callable[[], int] | None = None) -> BenchResult:
    """Median wall time of ``steps`` calls of ``step`` after ``warmup``; peak memory as described above."""
    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(device), "CUDA max allocated"
    else:
        peak, kind = (saved_bytes() if saved_bytes else 0), "saved for backward"
    return BenchResult(statistics.median(times), steps, peak, kind)
