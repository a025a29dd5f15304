"""Shared test helpers: tiny adapters from the fixture factory, real ComfyUI sampling on tiny UNets."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

import comfy.sample

from harness import adapter_factory, tiny_models
from ipadapter_next.ipadapter import adapter as adapter_mod
from ipadapter_next.ipadapter import checkpoint


@functools.lru_cache(maxsize=None)
def tiny_adapter(family: str, seed: int = 0) -> adapter_mod.Adapter:
    sections = adapter_factory.adapter_state_dict(family, scale="tiny", seed=seed)
    spec = checkpoint.detect(sections, source=f"{family}.safetensors")
    return adapter_mod.build_adapter(sections, spec, source=f"{family}.safetensors", dtype=torch.float32)


@functools.lru_cache(maxsize=None)
def tiny_unet(arch: str, seed: int = 0):
    return tiny_models.build_unet(arch, seed)


def conditioning(arch: str, seed: int, tokens: int = 77, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    width = tiny_models.tiny_unet_config(arch)["context_dim"]
    extra = {}
    if arch == "sdxl":
        extra = {"pooled_output": torch.randn(1, 1280, generator=g), "width": size, "height": size, "crop_w": 0,
                 "crop_h": 0, "target_width": size, "target_height": size}
    return [[torch.randn(1, tokens, width, generator=g), extra]]


def sample(model, arch: str, steps: int = 2, seed: int = 0, cfg: float = 5.0, latent_hw=(8, 8), batch: int = 1,
           sampler: str = "euler", positive=None) -> torch.Tensor:
    """A real KSampler run (ComfyUI's sampling code) on an empty latent; deterministic."""
    latent = torch.zeros(batch, 4, *latent_hw)
    noise = comfy.sample.prepare_noise(latent, seed)
    positive = positive if positive is not None else conditioning(arch, 1)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "normal", positive, conditioning(arch, 2),
                               latent, disable_pbar=True, seed=seed)


def features(adapter: adapter_mod.Adapter, n: int = 1, seed: int = 0) -> torch.Tensor:
    """Random pre-projection features of the width (and token count) the adapter's encoder gives."""
    g = torch.Generator().manual_seed(seed)
    enc = adapter.spec.encoder
    if enc.output == "image_embeds":
        return torch.randn(n, enc.width, generator=g)
    tokens = (enc.image_size // 14) ** 2 + 1
    return torch.randn(n, tokens, enc.width, generator=g)


# The published layouts of every released checkpoint family (key names and full-size shapes), kept in
# the repository so the conformance tests always run.
LAYOUTS_PATH = Path(__file__).resolve().parent / "data" / "ipadapter_checkpoint_layouts.json"
LAYOUTS = json.loads(LAYOUTS_PATH.read_text())


def load_dev_script(name: str):
    """A script of dev/ (``make_example_workflows``) imported as a module, for tests of what it makes."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "dev" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
