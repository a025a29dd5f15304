"""XLabs Flux IP-Adapter in headless workflows through ComfyUI's real executor and loaders.

A tiny Flux file (ComfyUI's Flux classes, text width 64 so the tiny SD1.5 CLIP conditions it) is loaded with
Load Diffusion Model, the synthetic XLabs file with IPAdapter Model Loader, the tiny 224-px encoder with Load
CLIP Vision; KSampler samples (CFG, so the uncond rows take the negative image's tokens) and SaveLatent writes
the latent, which the tests read back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import folder_paths
import nodes

from harness import adapter_factory, executor, tiny_dit, workflow

REFERENCE = "flux_reference.png"
ADAPTER = "flux-ip-adapter-tiny.safetensors"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"  # the tiny 224-px encoder stands in for ViT-L
VIT_G = "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"


@pytest.fixture(scope="module", autouse=True)
def flux_files(models_dir, torch_single_thread):
    tiny_dit.install_flux_fixtures(models_dir)
    adapter_factory.write_xlabs_flux(models_dir / "ipadapter" / ADAPTER, "v1", seed=4, dims=tiny_dit.TINY_FLUX_WORKFLOW)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(
        Path(folder_paths.get_input_directory()) / REFERENCE)
    for folder in ("diffusion_models", "ipadapter"):  # the listings are cached per folder
        folder_paths.filename_list_cache.pop(folder, None)


def flux_graph(prefix: str, apply: dict | None = None, seed: int = 5) -> dict:
    prompt = tiny_dit.sampling_graph(f"flux/{prefix}", seed=seed)
    if apply is not None:
        prompt["10"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ADAPTER}}
        prompt["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": apply.pop("clip_name", VIT_H)}}
        prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": REFERENCE}}
        node = apply.pop("node", "IPAdapterAdvanced")
        inputs = {"model": ["1", 0], "ipadapter": ["10", 0], "image": ["12", 0], "clip_vision": ["11", 0]}
        if node == "IPAdapter":
            inputs.update(weight=0.8, start_at=0.0, end_at=1.0, weight_type="standard")
        else:
            inputs.update(weight=0.8, weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0,
                          embeds_scaling="V only")
        if node == "IPAdapterMS":
            inputs.update(weight_faceidv2=1.0, layer_weights="")
        inputs.update(apply)
        prompt["13"] = {"class_type": node, "inputs": inputs}
        prompt["6"]["inputs"]["model"] = ["13", 0]
    return prompt


def latent_of(result, node: str = "7") -> torch.Tensor:
    return result.latent(node)


def test_adapter_changes_the_sample_and_weight_zero_is_the_plain_sample():
    plain = latent_of(executor.run_prompt(flux_graph("plain")))
    assert plain.shape == (1, 16, 6, 8)
    with_adapter = latent_of(executor.run_prompt(flux_graph("adv", {"weight": 0.8})))
    zero = latent_of(executor.run_prompt(flux_graph("zero", {"weight": 0.0})))
    assert torch.equal(zero, plain)
    assert (with_adapter - plain).abs().mean() > 1e-3


def test_simple_mad_scientist_and_embeds_nodes_agree_with_advanced():
    advanced = latent_of(executor.run_prompt(flux_graph("adv2", {"weight": 0.8})))
    simple = latent_of(executor.run_prompt(flux_graph("simple", {"node": "IPAdapter"})))
    ms = latent_of(executor.run_prompt(flux_graph("ms", {"node": "IPAdapterMS", "weight": 0.8,
                                                         "layer_weights": "double_0:1, 1:1, double_2:1"})))
    torch.testing.assert_close(simple, advanced, rtol=0, atol=1e-5)
    torch.testing.assert_close(ms, advanced, rtol=0, atol=1e-5)
    prompt = flux_graph("emb", {"weight": 0.8})
    prompt["14"] = {"class_type": "IPAdapterEncoder", "inputs": {"ipadapter": ["10", 0], "image": ["12", 0],
                                                                "weight": 1.0, "clip_vision": ["11", 0]}}
    prompt["13"] = {"class_type": "IPAdapterEmbeds", "inputs": {
        "model": ["1", 0], "ipadapter": ["10", 0], "pos_embed": ["14", 0], "neg_embed": ["14", 1], "weight": 0.8,
        "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}}
    torch.testing.assert_close(latent_of(executor.run_prompt(prompt)), advanced, rtol=0, atol=1e-5)


def test_one_block_only_differs_from_all_blocks():
    advanced = latent_of(executor.run_prompt(flux_graph("adv3", {"weight": 0.8})))
    one = latent_of(executor.run_prompt(flux_graph("ms1", {"node": "IPAdapterMS", "layer_weights": "double_1:1"})))
    assert (one - advanced).abs().mean() > 1e-4


def test_wrong_encoder_and_unet_only_options_fail_clearly():
    result = executor.run_prompt(flux_graph("wrong_enc", {"clip_name": VIT_G}))
    assert not result.success and "gives 40" in result.error["exception_message"]
    result = executor.run_prompt(flux_graph("wrong_type", {"weight_type": "weak input"}))
    assert not result.success
    assert "'weak input' is a UNet layer map and has no Flux equivalent" in result.error["exception_message"]


def test_experimental_style_and_composition_maps_run_in_the_nodes():
    # 3 double blocks: composition = blocks 0 and 1, style = block 2 (ipadapter/block_maps.py)
    composition = latent_of(executor.run_prompt(flux_graph("comp", {"weight_type": "composition"})))
    by_index = latent_of(executor.run_prompt(flux_graph("comp_ms", {"node": "IPAdapterMS", "layer_weights": "0:1, 1:1"})))
    torch.testing.assert_close(composition, by_index, rtol=0, atol=1e-5)
    prompt = flux_graph("style_comp", {"weight": 0.8})
    inputs = prompt["13"]["inputs"]
    prompt["13"] = {"class_type": "IPAdapterStyleComposition", "inputs": {
        "model": inputs["model"], "ipadapter": inputs["ipadapter"], "clip_vision": inputs["clip_vision"],
        "image_style": inputs["image"], "image_composition": inputs["image"], "weight_style": 0.8,
        "weight_composition": 0.8, "expand_style": False, "combine_embeds": "average", "start_at": 0.0,
        "end_at": 1.0, "embeds_scaling": "V only"}}
    both = latent_of(executor.run_prompt(prompt))
    # the same image on both block sets at the same weight is the image on every block
    everywhere = latent_of(executor.run_prompt(flux_graph("all_blocks", {"weight": 0.8})))
    torch.testing.assert_close(both, everywhere, rtol=0, atol=1e-5)
    assert (composition - everywhere).abs().mean() > 1e-4


def test_flux_adapter_on_an_sd15_model_is_refused():
    prompt = executor.workflow_plain_sd15(seed=1, filename_prefix="flux_on_sd15")
    prompt["10"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ADAPTER}}
    prompt["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": VIT_H}}
    prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": REFERENCE}}
    prompt["13"] = {"class_type": "IPAdapterAdvanced", "inputs": {
        "model": ["1", 0], "ipadapter": ["10", 0], "image": ["12", 0], "clip_vision": ["11", 0], "weight": 1.0,
        "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
        "embeds_scaling": "V only"}}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    result = executor.run_prompt(prompt)
    assert not result.success and "is a Flux IP-Adapter" in result.error["exception_message"]


def test_the_example_workflow_runs_on_the_fixtures_and_its_adapter_acts():
    path = Path(__file__).resolve().parent.parent / "example_workflows" / "ipadapter_flux_xlabs.json"
    prompt = tiny_dit.tiny_flux_prompt(workflow.to_api(workflow.load(path), nodes.NODE_CLASS_MAPPINGS))
    for node in prompt.values():  # the example names the user's reference image
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = REFERENCE
    (apply_id,) = [i for i, n in prompt.items() if n["class_type"] == "IPAdapterAdvanced"]
    (save_id,) = [i for i, n in prompt.items() if n["class_type"] == "SaveLatent"]
    with_adapter = latent_of(executor.run_prompt(prompt), save_id)
    prompt[apply_id]["inputs"]["weight"] = 0.0
    without = latent_of(executor.run_prompt(prompt), save_id)
    assert with_adapter.shape == (1, 16, 8, 8)
    assert (with_adapter - without).abs().mean() > 1e-3


def test_layer_sweep_renders_the_halves_of_the_double_blocks():
    # 3 double blocks: halves 0-1 and 2 (the experimental map's composition and style regions)
    prompt = flux_graph("sweep", {"weight": 0.8})
    inputs = prompt["13"]["inputs"]
    prompt["13"] = {"class_type": "IPAdapterLayerSweep", "inputs": {
        "model": inputs["model"], "ipadapter": inputs["ipadapter"], "image": inputs["image"],
        "clip_vision": inputs["clip_vision"], "weight": 0.8, "grouping": "input / middle / output",
        "mode": "only this group", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
        "embeds_scaling": "V only"}}
    latents = executor.run_prompt(prompt).latents("7")
    assert len(latents) == 4  # no adapter, all blocks, double 0-1, double 2
    plain = latent_of(executor.run_prompt(flux_graph("sweep_plain")))
    everywhere = latent_of(executor.run_prompt(flux_graph("sweep_all", {"weight": 0.8})))
    composition = latent_of(executor.run_prompt(flux_graph("sweep_comp", {"weight_type": "composition"})))
    assert torch.equal(latents[0], plain)
    torch.testing.assert_close(latents[1], everywhere, rtol=0, atol=1e-5)
    torch.testing.assert_close(latents[2], composition, rtol=0, atol=1e-5)
    assert (latents[3] - latents[2]).abs().mean() > 1e-4
