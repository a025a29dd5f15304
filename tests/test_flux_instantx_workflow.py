"""InstantX FLUX.1-dev IP-Adapter in headless workflows through ComfyUI's real executor and loaders: Load
Diffusion Model (the tiny Flux file), IPAdapter Model Loader (a synthetic ip-adapter.bin, weights_only),
IPAdapter Load Embeds (pooled-SigLIP-shaped vectors and a zero negative) -> IPAdapter Embeds -> KSampler with
CFG -> SaveLatent. The image nodes refuse clearly: ComfyUI's SigLIP has no attention-pooling head.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import folder_paths

from harness import executor, tiny_dit
from harness.dims import INSTANTX_FLUX_TINY
from ipadapter_next.ipadapter.embeds_file import save_embeds

ADAPTER, REFERENCE_EMBEDS = tiny_dit.INSTANTX_EXAMPLE
NEGATIVE_EMBEDS = "flux_instantx_negative.ipadpt"


@pytest.fixture(scope="module", autouse=True)
def instantx_files(models_dir, torch_single_thread):
    tiny_dit.install_instantx_flux_example(models_dir, folder_paths.get_input_directory())
    save_embeds(torch.zeros(1, INSTANTX_FLUX_TINY[0]), Path(folder_paths.get_input_directory()) / NEGATIVE_EMBEDS)


def graph(prefix: str, weight: float | None = 0.8, **apply) -> dict:
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": tiny_dit.TINY_FLUX_FILE, "weight_dtype": "default"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["2", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["2", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 5, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"flux_instantx/{prefix}"}},
    }
    if weight is not None:
        prompt["10"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ADAPTER}}
        prompt["11"] = {"class_type": "IPAdapterLoadEmbeds", "inputs": {"embeds": REFERENCE_EMBEDS}}
        prompt["12"] = {"class_type": "IPAdapterLoadEmbeds", "inputs": {"embeds": NEGATIVE_EMBEDS}}
        inputs = {"model": ["1", 0], "ipadapter": ["10", 0], "pos_embed": ["11", 0], "neg_embed": ["12", 0],
                  "weight": weight, "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}
        inputs.update(apply)
        prompt["13"] = {"class_type": "IPAdapterEmbeds", "inputs": inputs}
        prompt["6"]["inputs"]["model"] = ["13", 0]
    return prompt


def latent_of(result) -> torch.Tensor:
    result.raise_for_error()
    (saved,) = result.outputs["7"]["latents"]
    return load_file(str(Path(folder_paths.get_output_directory()) / saved["subfolder"] / saved["filename"]))["latent_tensor"]


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
