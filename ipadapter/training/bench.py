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

__all__ = ["BenchResult", "SavedBytes", "feature_shape", "measure", "random_inputs", "trainer_step"]


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


def feature_shape(clip_vision, output: str) -> tuple[int, ...]:
    """One sample's encoder output shape: [width] for image_embeds, [tokens, width] for hidden states."""
    from ..encode import encoder_widths

    widths = encoder_widths(clip_vision)
    if output == "image_embeds":
        return (widths[output],)
    return ((widths["image_size"] // 14) ** 2 + 1, widths[output])


def random_inputs(trainer, batch: int, resolution: int, features: tuple[int, ...], seed: int = 0):
    """(latents, features, context, y) of the shapes a real batch has (``features``: one sample's shape)."""
    g = torch.Generator().manual_seed(seed)
    latent = resolution // 8
    x0 = torch.randn(batch, 4, latent, latent, generator=g)
    context = torch.randn(batch, 77, trainer.adapter.layers.weight.shape[1], generator=g)
    y = torch.randn(batch, 2816, generator=g) if trainer.arch == "sdxl" else None  # SDXL: pooled 1280 + 6 x 256
    return x0, torch.randn(batch, *features, generator=g), context, y


def trainer_step(trainer, inputs) -> Callable[[], None]:
    """One optimiser step of ``trainer`` on fixed ``inputs``."""
    def step() -> None:
        loss = trainer.loss(*inputs)
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return step


def measure(step: Callable[[], None], steps: int, device: torch.device, warmup: int = 2) -> BenchResult:
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
    else:  # no allocator statistics on CPU: count what one step keeps for its backward pass
        with SavedBytes().counting() as counter:
            step()
        peak, kind = counter.total, "saved for backward"
    return BenchResult(statistics.median(times), steps, peak, kind)
