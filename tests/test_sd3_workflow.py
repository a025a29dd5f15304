"""InstantX SD3.5 IP-Adapter in headless workflows: Load Diffusion Model (a tiny SD3 MMDiT file), IPAdapter
Model Loader (a synthetic ip-adapter.bin, weights_only), IPAdapter Load Embeds (SigLIP-shaped features and a
zero negative, as diffusers' pipeline uses) -> IPAdapter Embeds -> KSampler with CFG -> SaveLatent.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import folder_paths

from harness import executor, tiny_dit, tiny_sd3


@pytest.fixture(scope="module", autouse=True)
def sd3_files(models_dir, torch_single_thread):
    tiny_sd3.install_sd3_fixtures(models_dir, folder_paths.get_input_directory())


def sd3_graph(prefix: str, weight: float | None = 0.8, **apply) -> dict:
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": tiny_sd3.TINY_SD3_FILE, "weight_dtype": "default"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["2", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["2", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 4, "steps": 3, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"sd3/{prefix}"}},
    }
    if weight is not None:
        tiny_dit.add_embeds_adapter(prompt, tiny_sd3.TINY_SD3_ADAPTER, *tiny_sd3.TINY_SD3_EMBEDS[:2], weight, **apply)
    return prompt


def latent_of(result) -> torch.Tensor:
    return result.latent("7")


def test_loads_applies_and_samples():
    plain = latent_of(executor.run_prompt(sd3_graph("plain", weight=None)))
    assert plain.shape == (1, 16, 6, 8)
    with_adapter = latent_of(executor.run_prompt(sd3_graph("ip", 0.8)))
    assert (with_adapter - plain).abs().mean() > 1e-3
    assert torch.equal(latent_of(executor.run_prompt(sd3_graph("zero", 0.0))), plain)
    late = latent_of(executor.run_prompt(sd3_graph("late", 0.8, start_at=0.5)))
    assert (late - with_adapter).abs().mean() > 1e-4 and (late - plain).abs().mean() > 1e-4


def test_unet_only_options_fail_clearly():
    result = executor.run_prompt(sd3_graph("kv", 0.8, embeds_scaling="K+V"))
    assert not result.success and "embeds_scaling 'K+V'" in result.error["exception_message"]


def test_the_example_workflow_runs_on_the_fixtures_and_its_adapter_acts(models_dir):
    import nodes

    from harness import workflow

    tiny_sd3.install_sd3_example_fixtures(models_dir, folder_paths.get_input_directory())
    path = Path(__file__).resolve().parent.parent / "example_workflows" / "ipadapter_sd35_instantx.json"
    prompt = tiny_sd3.tiny_sd3_prompt(workflow.use_tiny_models(workflow.to_api(workflow.load(path),
                                                                               nodes.NODE_CLASS_MAPPINGS)))
    (apply_id,) = [i for i, n in prompt.items() if n["class_type"] == "IPAdapterEmbeds"]
    (save_id,) = [i for i, n in prompt.items() if n["class_type"] == "SaveLatent"]

    def run() -> torch.Tensor:
        result = executor.run_prompt(prompt).raise_for_error()
        (saved,) = result.outputs[save_id]["latents"]
        return load_file(str(Path(folder_paths.get_output_directory()) / saved["subfolder"] / saved["filename"]))["latent_tensor"]

    with_adapter = run()
    prompt[apply_id]["inputs"]["weight"] = 0.0
    assert with_adapter.shape == (1, 16, 8, 8) and (with_adapter - run()).abs().mean() > 1e-3
