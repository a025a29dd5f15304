"""A trained adapter is an ordinary adapter file: our loader, diffusers' loader and a sampling workflow read it,
and it predicts its training sample's noise better than the untrained start did."""
from __future__ import annotations

import types

import pytest
import torch

import folder_paths
import nodes

from harness import executor, tiny_models
from harness.widths import TINY_WIDTHS
from ipadapter_next.ipadapter import encoders
from ipadapter_next.ipadapter.adapter import load_adapter
from ipadapter_next.ipadapter.files import read_checkpoint
from ipadapter_next.ipadapter.training import run, save, trainer
from ipadapter_next.node_defs.loaders import IPAdapterModelLoader
from training_support import DETECTED, TINY_RESAMPLER, dataset, ipadapter_dir, pipeline
import parity_support as ps


@pytest.fixture(scope="module", autouse=True)
def tiny_world(models_dir, torch_single_thread):
    with encoders.widths_registered(TINY_WIDTHS):
        yield


@pytest.fixture(scope="module", params=[("sd15", "basic"), ("sdxl", "plus")], ids=lambda p: "-".join(p))
def trained(request):
    """(arch, family, file name, trained sections, untrained sections) for a 40-step run saved to models/ipadapter."""
    arch, family = request.param
    model, clip, vae, clip_vision = pipeline(arch)
    name = f"trained_{arch}_{family}.safetensors"
    untrained = trainer.new_adapter(model, clip_vision, family, TINY_RESAMPLER[arch])[0].sections()
    settings = trainer.TrainSettings(steps=40, batch_size=2, learning_rate=3e-3, resolution=64, cache_encodings=True)
    result = run.train(model, clip, vae, clip_vision, dataset(), settings, family=family,
                       resampler=TINY_RESAMPLER[arch], output=ipadapter_dir() / name)
    folder_paths.filename_list_cache.pop("ipadapter", None)
    return arch, family, name, result.sections, untrained


def test_the_file_has_the_two_reference_sections_in_fp16(trained):
    arch, _, name, sections, _ = trained
    on_disk = read_checkpoint(ipadapter_dir() / name)
    assert set(on_disk) == {"image_proj", "ip_adapter"}
    for section, tensors in sections.items():
        assert on_disk[section].keys() == tensors.keys()
        for key, value in tensors.items():
            assert on_disk[section][key].dtype == torch.float16
            assert torch.equal(on_disk[section][key], value.half()), key
    numbers = sorted(int(k.split(".")[0]) for k in on_disk["ip_adapter"] if k.endswith("to_k_ip.weight"))
    assert numbers == list(range(1, 2 * len(numbers), 2))  # N = 1, 3, 5, ... as the reference numbers them
    assert not any(".to_k_ip.0." in k for k in on_disk["ip_adapter"])  # never diffusers' naming
    assert not list(ipadapter_dir().glob(".*.tmp"))


def test_ipadapter_model_loader_detects_the_family_from_the_tensors(trained):
    arch, family, name, _, _ = trained
    (adapter,) = IPAdapterModelLoader().load_ipadapter_model(name)
    assert adapter.spec.family == DETECTED[(arch, family)]
    assert adapter.spec.arch == arch


def test_diffusers_load_ip_adapter_reads_it_with_the_same_layer_order(trained, tmp_path):
    arch, _, name, sections, _ = trained
    model = pipeline(arch)[0]
    base = ps.build_diffusers_unet(model.model.diffusion_model, arch)
    from diffusers.loaders.ip_adapter import IPAdapterMixin

    pipe = types.SimpleNamespace(unet=base)  # a pipeline's unet is all load_ip_adapter needs without encoders
    IPAdapterMixin.load_ip_adapter(pipe, str(ipadapter_dir()), subfolder="", weight_name=name,
                                   image_encoder_folder=None, low_cpu_mem_usage=False)
    cross = [p for n, p in base.attn_processors.items() if n.endswith("attn2.processor")]
    assert len(cross) == len(sections["ip_adapter"]) // 2
    for i, proc in enumerate(cross):  # diffusers' processor order = the checkpoint's N = 2 i + 1
        assert torch.equal(proc.to_k_ip[0].weight.float(), sections["ip_adapter"][f"{2 * i + 1}.to_k_ip.weight"].half().float())
        assert torch.equal(proc.to_v_ip[0].weight.float(), sections["ip_adapter"][f"{2 * i + 1}.to_v_ip.weight"].half().float())


def _noise_error(arch: str, adapter, sample_index: int = 0) -> float:
    """MSE between the noise and the UNet's prediction for training sample ``sample_index`` (its caption, its
    image applied with IPAdapter Advanced at weight 1), at fixed noise and mid-schedule timesteps."""
    model, clip, vae, clip_vision = pipeline(arch)
    ds = dataset()
    sample = ds.samples[sample_index]
    (patched,) = nodes.NODE_CLASS_MAPPINGS["IPAdapterAdvanced"]().apply_ipadapter(
        model, adapter, image=sample.image[None], weight=1.0, weight_type="linear", combine_embeds="concat",
        start_at=0.0, end_at=1.0, embeds_scaling="V only", clip_vision=clip_vision)
    cond, pooled = clip.encode_from_tokens(clip.tokenize(sample.caption), return_pooled=True)
    x0 = model.model.process_latent_in(vae.encode(trainer._fit(sample.image, 64)))
    g = torch.Generator().manual_seed(1)
    errors = []
    for index in (200, 400, 600, 800):
        sigma = model.model.model_sampling.sigmas[index].reshape(1)
        noise = torch.randn(x0.shape, generator=g)
        x = model.model.model_sampling.calculate_input(sigma, x0 + sigma * noise)
        y = None
        if arch == "sdxl":
            y = model.model.encode_adm(pooled_output=pooled, width=64, height=64, target_width=64, target_height=64)
        out = ps.comfy_forward(patched, x, model.model.model_sampling.timestep(sigma), cond, y=y, cond_or_uncond=(0,))
        errors.append(torch.mean((out - noise) ** 2).item())
    return sum(errors) / len(errors)


def test_trained_adapter_predicts_its_training_sample_better_than_the_untrained_one(trained):
    arch, family, name, _, untrained = trained
    untrained_path = save.save_adapter(untrained, ipadapter_dir() / f"untrained_{arch}_{family}.safetensors")
    before = _noise_error(arch, load_adapter(untrained_path))
    after = _noise_error(arch, load_adapter(ipadapter_dir() / name))
    print(f"{arch} {family}: noise-prediction error {before:.4f} untrained -> {after:.4f} trained")
    assert after < before


def test_it_applies_and_samples_in_a_headless_workflow(trained, fixture_files):
    arch, _, name, _, _ = trained
    prompt = executor.workflow_plain_sd15(seed=3, steps=2, ckpt_name=f"tiny_{arch}.safetensors",
                                          filename_prefix=f"trained_{arch}")
    prompt["10"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": name}}
    prompt["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": tiny_models.CLIP_VISION_FILENAMES["vit-h"]}}
    prompt["12"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x3366CC}}
    prompt["13"] = {"class_type": "IPAdapterAdvanced", "inputs": {
        "model": ["1", 0], "ipadapter": ["10", 0], "image": ["12", 0], "weight": 1.0, "weight_type": "linear",
        "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only", "clip_vision": ["11", 0]}}
    plain = executor.run_prompt(prompt).raise_for_error().image_tensors()[0]
    prompt["5"]["inputs"]["model"] = ["13", 0]
    result = executor.run_prompt(prompt).raise_for_error()
    with_adapter = result.image_tensors()[0]
    assert with_adapter.shape == plain.shape
    assert not torch.equal(with_adapter, plain)
