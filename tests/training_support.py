"""Shared pieces of the training tests: the tiny pipeline loaded through ComfyUI's loaders, a tiny dataset."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

import folder_paths
import nodes

from harness import tiny_models
from ipadapter_next.ipadapter.training import data, recipe, trainer

CHECKPOINTS = {"sd15": "tiny_sd15.safetensors", "sdxl": "tiny_sdxl.safetensors"}
# The tiny encoders' Resampler: the reference layout (4 layers, 64-wide heads, FF x4) at test widths. SDXL keeps
# its width apart from the output width, as the real one (1280 vs 2048) does.
TINY_RESAMPLER = {"sd15": recipe.ResamplerSize(heads=2), "sdxl": recipe.ResamplerSize(dim=64, heads=2)}
# What the saved tiny files are detected as.
DETECTED = {("sd15", "basic"): "ip-adapter_sd15", ("sd15", "plus"): "ip-adapter-plus_sd15",
            ("sdxl", "basic"): "ip-adapter_sdxl_vit-h", ("sdxl", "plus"): "ip-adapter-plus_sdxl_vit-h"}


@functools.lru_cache(maxsize=None)
def pipeline(arch: str):
    """(MODEL, CLIP, VAE, CLIP_VISION) from the tiny files, through ComfyUI's own loader nodes."""
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(CHECKPOINTS[arch])[:3]
    clip_vision = nodes.CLIPVisionLoader().load_clip(tiny_models.CLIP_VISION_FILENAMES["vit-h"])[0]
    return model, clip, vae, clip_vision


def images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth, distinct pictures (colour gradients) [n, size, size, 3]."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    out = []
    for _ in range(n):
        a, b, c = torch.rand(3, 3, generator=g)
        out.append(a * ramp[:, None, None] + b * ramp[None, :, None] + c * 0.5)
    return (torch.stack(out) / 2).clamp(0, 1)


def dataset(n: int = 2) -> data.Dataset:
    return data.from_images(images(n), [f"a picture number {i}" for i in range(n)][:n])


def make_trainer(arch: str, family: str, steps: int = 20, lr: float = 3e-3, batch_size: int = 2,
                 **settings) -> trainer.Trainer:
    model, clip, vae, clip_vision = pipeline(arch)
    adapter, output = trainer.new_adapter(model, clip_vision, family, TINY_RESAMPLER[arch], settings.get("seed", 0))
    s = trainer.TrainSettings(steps=steps, batch_size=batch_size, learning_rate=lr, resolution=64,
                              cache_encodings=True, **settings)
    return trainer.Trainer(model, clip, vae, clip_vision, adapter, output, s)


def ipadapter_dir() -> Path:
    """Where IPAdapter Train saves: ComfyUI's first models/ipadapter folder."""
    return Path(folder_paths.get_folder_paths("ipadapter")[0])
