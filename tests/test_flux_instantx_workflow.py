"""InstantX FLUX.1-dev IP-Adapter in headless workflows through ComfyUI's real executor and loaders: Load
Diffusion Model (the tiny Flux file), IPAdapter Model Loader (a synthetic ip-adapter.bin, weights_only),
IPAdapter Load Embeds (pooled-SigLIP-shaped vectors and a zero negative) -> IPAdapter Embeds -> KSampler with
CFG -> SaveLatent. The image nodes refuse clearly: ComfyUI's SigLIP has no attention-pooling head.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import folder_paths

from harness import executor, tiny_dit
from harness.dims import INSTANTX_FLUX_TINY
from ipadapter_next.ipadapter.embeds_file import save_embeds

ADAPTER, REFERENCE_EMBEDS, SIGLIP = tiny_dit.INSTANTX_EXAMPLE
NEGATIVE_EMBEDS = "flux_instantx_negative.ipadpt"


@pytest.fixture(scope="module", autouse=True)
def instantx_files(models_dir, torch_single_thread):
    tiny_dit.install_instantx_flux_example(models_dir, folder_paths.get_input_directory())
    save_embeds(torch.zeros(1, INSTANTX_FLUX_TINY[0]), Path(folder_paths.get_input_directory()) / NEGATIVE_EMBEDS)


def graph(prefix: str, weight: float | None = 0.8, **apply) -> dict:
    prompt = tiny_dit.sampling_graph(f"flux_instantx/{prefix}")
    if weight is not None:
        tiny_dit.add_embeds_adapter(prompt, ADAPTER, REFERENCE_EMBEDS, NEGATIVE_EMBEDS, weight, **apply)
    return prompt


def latent_of(result) -> torch.Tensor:
    return result.latent("7")


def test_loads_applies_and_samples():
    plain = latent_of(executor.run_prompt(graph("plain", weight=None)))
    with_adapter = latent_of(executor.run_prompt(graph("ip", 0.8)))
    assert with_adapter.shape == plain.shape == (1, 16, 6, 8)
    assert (with_adapter - plain).abs().mean() > 1e-3
    assert torch.equal(latent_of(executor.run_prompt(graph("zero", 0.0))), plain)
    # Without neg_embed the negative is zeros (a pooled vector has no "black image" to encode).
    no_negative = graph("noneg", 0.8)
    del no_negative["13"]["inputs"]["neg_embed"]
    assert torch.equal(latent_of(executor.run_prompt(no_negative)), with_adapter)
    late = latent_of(executor.run_prompt(graph("late", 0.8, start_at=0.3)))  # the second of 2 steps only
    assert (late - with_adapter).abs().mean() > 1e-4 and (late - plain).abs().mean() > 1e-4


def test_image_nodes_explain_the_missing_pooling_head():
    prompt = graph("image", weight=None)
    prompt["10"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ADAPTER}}
    prompt["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"}}
    prompt["12"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}
    prompt["13"] = {"class_type": "IPAdapterAdvanced", "inputs": {
        "model": ["1", 0], "ipadapter": ["10", 0], "image": ["12", 0], "clip_vision": ["11", 0], "weight": 1.0,
        "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
        "embeds_scaling": "V only"}}
    prompt["6"]["inputs"]["model"] = ["13", 0]
    result = executor.run_prompt(prompt)
    assert not result.success
    assert "attention-pooling head" in result.error["exception_message"]
    assert "IPAdapter SigLIP Pooled Encoder" in result.error["exception_message"]


def test_the_pooled_encoder_node_feeds_the_adapter():
    from PIL import Image

    Image.new("RGB", (96, 80), (200, 40, 90)).save(Path(folder_paths.get_input_directory()) / "instantx_ref.png")
    prompt = graph("encoded", 0.8)
    prompt["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": SIGLIP}}
    prompt["14"] = {"class_type": "LoadImage", "inputs": {"image": "instantx_ref.png"}}
    prompt["15"] = {"class_type": "IPAdapterSigLIPPooledEncoder",
                    "inputs": {"clip_vision": ["11", 0], "image": ["14", 0], "clip_name": SIGLIP}}
    prompt["13"]["inputs"].update(pos_embed=["15", 0], neg_embed=["15", 1])
    del prompt["12"]
    encoded = latent_of(executor.run_prompt(prompt))
    plain = latent_of(executor.run_prompt(graph("plain2", weight=None)))
    loaded = latent_of(executor.run_prompt(graph("loaded", 0.8)))
    assert (encoded - plain).abs().mean() > 1e-3 and (encoded - loaded).abs().mean() > 1e-4


def test_per_block_weights_through_the_embeds_node():
    """layer_weights on IPAdapter Embeds (the node InstantX FLUX goes through): every block named at 1 is the
    plain weight; a subset acts, but differently from all blocks; a block outside the model is named."""
    every = "double_0:1, double_1:1, double_2:1, single_0:1, single_1:1"
    full = latent_of(executor.run_prompt(graph("lw_none", 0.8)))
    all_blocks = latent_of(executor.run_prompt(graph("lw_all", 0.8, layer_weights=every)))
    assert torch.allclose(all_blocks, full, atol=1e-5, rtol=0)  # the weight meets the block's 1 in another order
    plain = latent_of(executor.run_prompt(graph("lw_plain", weight=None)))
    some = latent_of(executor.run_prompt(graph("lw_some", 0.8, layer_weights="single_1:1")))
    assert (some - plain).abs().mean() > 1e-3 and (some - full).abs().mean() > 1e-3
    result = executor.run_prompt(graph("lw_bad", 0.8, layer_weights="single_9:1"))
    assert not result.success and "single_9" in result.error["exception_message"]
