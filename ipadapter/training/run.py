"""One training run from start to file, shared by the node and the command line: build (or resume, or
fine-tune) the adapter, train with periodic checkpoints, save the adapter file atomically."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..encode import check_encoder
from ..layers import ARCH_NAMES
from .adapter import TrainableAdapter
from .data import Dataset
from .recipe import ResamplerSize
from .save import load_state, save_adapter, save_state
from .trainer import Trainer, TrainSettings, adapter_from_sections, new_adapter

__all__ = ["RunResult", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    sections: dict  # the trained adapter's image_proj / ip_adapter tensors
    losses: list[float]
    path: Path | None  # the saved adapter file
    trainer: Trainer


def _start(model, clip_vision, family: str | None, base, resampler: ResamplerSize,
           seed: int) -> tuple[TrainableAdapter, str]:
    if base is None:
        if family is None:
            raise ValueError("IPAdapter training: give a family to train or an adapter to fine-tune.")
        return new_adapter(model, clip_vision, family, resampler, seed)
    from ..layers import model_arch

    arch = model_arch(model)
    if arch != base.spec.arch:
        raise ValueError(f"IPAdapter Train: {base.name} is an {ARCH_NAMES[base.spec.arch]} adapter but the MODEL is "
                         f"{ARCH_NAMES.get(arch, 'not SD1.5/SDXL')}; fine-tune it on a model of its own architecture.")
    check_encoder(base.spec, clip_vision, base.name)
    return adapter_from_sections(base.sections, base.spec)


def train(model, clip, vae, clip_vision, dataset: Dataset, settings: TrainSettings, *, family: str | None = None,
          base=None, resampler: ResamplerSize = ResamplerSize(), output: str | os.PathLike | None = None,
          resume: str | os.PathLike | None = None, checkpoint_every: int = 0,
          on_step: Callable[[int, float], None] | None = None) -> RunResult:
    """Train ``settings.steps`` steps in total (a resumed state counts its steps) and save to ``output``.

    ``base``: an ``Adapter`` to fine-tune. ``resume``: a state file written by a previous run (its
    adapter and optimiser replace the fresh ones). ``checkpoint_every``: also write ``<output>.state.pt``
    (the resumable state) and the adapter file every that many steps. Nothing is written before the
    first checkpoint, and an interrupt between checkpoints leaves the last complete files.
    """
    with torch.inference_mode(False):  # ComfyUI runs nodes under inference mode; training builds a graph
        return _train(model, clip, vae, clip_vision, dataset, settings, family, base, resampler, output, resume,
                      checkpoint_every, on_step)


def _train(model, clip, vae, clip_vision, dataset, settings, family, base, resampler, output, resume,
           checkpoint_every, on_step) -> RunResult:
    adapter, output_kind = _start(model, clip_vision, family, base, resampler, settings.seed)
    optimizer_state, step = None, 0
    if resume is not None:
        state = load_state(resume)
        adapter.load_state_dict(state["adapter"])
        optimizer_state, step = state["optimizer"], int(state["step"])
    trainer = Trainer(model, clip, vae, clip_vision, adapter, output_kind, settings, optimizer_state, step)
    if resume is not None:
        trainer.generator.set_state(state["generator"])
        trainer.drops.setstate((state["drops_version"], tuple(state["drops"]), None))
    state_path = Path(f"{output}.state.pt") if output is not None else None

    def checkpoint(done: int, loss: float) -> None:
        if on_step is not None:
            on_step(done, loss)
        if checkpoint_every and output is not None and done % checkpoint_every == 0 and done < settings.steps:
            save_state(state_path, trainer.state())
            save_adapter(adapter.sections(), output)
            log.info("IPAdapter training: checkpoint at step %d -> %s", done, output)

    losses = trainer.run(dataset, max(0, settings.steps - step), checkpoint)
    sections = adapter.sections()
    path = None
    if output is not None:
        path = save_adapter(sections, output)
        if checkpoint_every:
            save_state(state_path, trainer.state())
    return RunResult(sections, losses, path, trainer)
