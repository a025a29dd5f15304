"""Memory stays flat when the apply nodes are called from plain Python (no ``torch.inference_mode``).

ComfyUI's executor runs nodes under ``torch.inference_mode()``; scripts, other packs and tools that call
the nodes' functions directly do not. The pack must then build no autograd graph and keep nothing of an
apply alive once its patched model is gone: a loop of apply + sample on the same model holds the same
number of live tensors, and the same resident memory, at iteration 30 as at iteration 5.
"""
from __future__ import annotations

import gc
import resource
import time

import numpy as np
import pytest
import torch

import nodes

from harness.widths import TINY_WIDTHS
from support import sample, tiny_unet
from ipadapter_next.ipadapter import encoders

ITERATIONS = 30
WARMUP = 5  # first iterations fill one-time caches (default negative, casts, allocator pools)
CLIP_VISION = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


@pytest.fixture(scope="module", autouse=True)
def _models(models_dir, torch_single_thread):
    """The loops run as a script would: grad mode on, no inference mode. The Unified Loader must
    recognise the tiny fixture encoders (as it recognises real ones by default)."""
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    encoders.register_widths(TINY_WIDTHS)
    yield
    encoders.unregister_widths(TINY_WIDTHS)


def live_tensors() -> int:
    """Torch tensors the garbage collector knows about (parameters and autograd-held ones included)."""
    gc.collect()
    count = 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor):
                count += 1
        except ReferenceError:  # a dead weak proxy
            pass
    return count


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_loop(step) -> tuple[list[int], list[float]]:
    """Live tensors after iterations 5, 10, ..., 30 (a full garbage-collector walk each: not every
    iteration), RSS after every iteration from the 5th."""
    tensors, rss = [], []
    for i in range(1, ITERATIONS + 1):
        step(i)
        if i >= WARMUP:
            rss.append(rss_mb())
            if i % WARMUP == 0:
                tensors.append(live_tensors())
    return tensors, rss


def reference_image() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.random((1, 64, 64, 3), dtype=np.float32))


def advanced_inputs():
    return dict(weight=0.8, weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0,
                embeds_scaling="V only")


def assert_flat(tensors: list[int], rss: list[float], what: str) -> None:
    print(f"{what}: live tensors {tensors[0]} -> {tensors[-1]}, RSS {rss[0]:.1f} -> {rss[-1]:.1f} MB")
    assert tensors[-1] - tensors[0] <= 0, f"{what}: live tensors grew {tensors}"
    # A little allocator noise is allowed; the fault this guards against grew ~8 MB per iteration.
    assert rss[-1] - rss[0] < 16, f"{what}: RSS grew {rss[0]:.1f} -> {rss[-1]:.1f} MB"


def test_ipadapter_advanced_loop_outside_inference_mode_keeps_memory_flat():
    model = tiny_unet("sd15")
    adapter = nodes.NODE_CLASS_MAPPINGS["IPAdapterModelLoader"]().load_ipadapter_model(
        "ip-adapter-plus_sd15.safetensors")[0]
    clip_vision = nodes.NODE_CLASS_MAPPINGS["CLIPVisionLoader"]().load_clip(CLIP_VISION)[0]
    image = reference_image()
    node = nodes.NODE_CLASS_MAPPINGS["IPAdapterAdvanced"]()
    start = time.process_time()  # CPU time: the budget should not depend on how busy a shared machine is

    def step(i):
        patched = node.apply_ipadapter(model, adapter, image, clip_vision=clip_vision, **advanced_inputs())[0]
        sample(patched, "sd15", steps=1, seed=i)

    tensors, rss = run_loop(step)
    assert_flat(tensors, rss, "IPAdapter Advanced")
    assert time.process_time() - start < 60


def test_unified_loader_loop_outside_inference_mode_keeps_memory_flat():
    model = tiny_unet("sd15")
    image = reference_image()
    loader = nodes.NODE_CLASS_MAPPINGS["IPAdapterUnifiedLoader"]()
    node = nodes.NODE_CLASS_MAPPINGS["IPAdapterAdvanced"]()

    def step(i):
        patched, pipeline = loader.load_models(model, "PLUS (high strength)")
        patched = node.apply_ipadapter(patched, pipeline, image, **advanced_inputs())[0]
        sample(patched, "sd15", steps=1, seed=i)

    tensors, rss = run_loop(step)
    assert_flat(tensors, rss, "Unified Loader + IPAdapter Advanced")
