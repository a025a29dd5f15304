"""The first node set, run as workflows through ComfyUI's own validator and executor on the fixture models."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import comfy.clip_vision
import folder_paths
import nodes

from harness import executor, workflow
from support import LAYOUTS
from ipadapter_next.ipadapter import adapter as adapter_mod
from ipadapter_next.ipadapter import apply, checkpoint, encode, paths

REPO = Path(__file__).resolve().parent.parent
REFERENCE = "reference_test.png"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
VIT_G = "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"


@pytest.fixture(scope="module", autouse=True)
def reference_image(models_dir, torch_single_thread):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(
        Path(folder_paths.get_input_directory()) / REFERENCE)


def ipadapter_graph(ipadapter_file="ip-adapter-plus_sd15.safetensors", clip_name=VIT_H, weight=0.8, seed=3,
                    node="IPAdapterAdvanced", ckpt="tiny_sd15.safetensors", prefix="ipa"):
    prompt = executor.workflow_plain_sd15(seed=seed, ckpt_name=ckpt, filename_prefix=prefix)
    prompt["10"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ipadapter_file}}
    prompt["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": clip_name}}
    prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": REFERENCE}}
    if node == "IPAdapterAdvanced":
        inputs = {"weight": weight, "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0,
                  "end_at": 1.0, "embeds_scaling": "V only"}
    else:  # the simple node
        inputs = {"weight": weight, "start_at": 0.0, "end_at": 1.0, "weight_type": "standard"}
    prompt["13"] = {"class_type": node, "inputs": {"model": ["1", 0], "ipadapter": ["10", 0], "image": ["12", 0],
                                                   "clip_vision": ["11", 0], **inputs}}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    return prompt


def image_of(result) -> torch.Tensor:
    return result.raise_for_error().image_tensors()[0]


def test_ipadapter_folder_is_registered_and_keeps_extra_model_paths(tmp_path):
    extra = str(tmp_path / "elsewhere")
    folder_paths.add_model_folder_path("ipadapter", extra)  # as extra_model_paths.yaml would, before import
    paths.register_model_folders()
    registered, extensions = folder_paths.folder_names_and_paths["ipadapter"]
    assert extra in registered and os.path.join(folder_paths.models_dir, "ipadapter") in registered
    assert ".safetensors" in extensions and ".bin" in extensions
    assert "ip-adapter-plus_sd15.safetensors" in folder_paths.get_filename_list("ipadapter")


def test_example_workflow_runs_headless_and_the_adapter_changes_the_image():
    prompt = workflow.to_api(workflow.load(REPO / "example_workflows" / "ipadapter_simple.json"), nodes.NODE_CLASS_MAPPINGS)
    workflow.use_tiny_models(prompt, "tiny_sd15.safetensors")
    prompt["4"]["inputs"]["image"] = REFERENCE
    with_adapter = image_of(executor.run_prompt(prompt))
    assert with_adapter.shape == (64, 64, 3)
    prompt["6"]["inputs"]["weight"] = 0.0
    prompt["12"]["inputs"]["filename_prefix"] = "weight0"
    assert (with_adapter - image_of(executor.run_prompt(prompt))).abs().mean() > 0.01


def test_weight_zero_through_the_whole_workflow_gives_the_plain_image():
    plain = image_of(executor.run_prompt(executor.workflow_plain_sd15(seed=3, filename_prefix="plain")))
    zero = image_of(executor.run_prompt(ipadapter_graph(weight=0.0)))
    assert torch.equal(plain, zero)


def test_encoder_and_embeds_nodes_give_the_same_image_as_the_advanced_node():
    advanced = image_of(executor.run_prompt(ipadapter_graph(weight=0.7, prefix="adv")))
    prompt = ipadapter_graph(weight=0.7, prefix="emb")
    prompt["14"] = {"class_type": "IPAdapterEncoder", "inputs": {"ipadapter": ["10", 0], "image": ["12", 0],
                                                                "weight": 1.0, "clip_vision": ["11", 0]}}
    prompt["13"] = {"class_type": "IPAdapterEmbeds", "inputs": {
        "model": ["1", 0], "ipadapter": ["10", 0], "pos_embed": ["14", 0], "neg_embed": ["14", 1], "weight": 0.7,
        "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}}
    torch.testing.assert_close(image_of(executor.run_prompt(prompt)), advanced, rtol=0, atol=1 / 255)


def test_simple_node_uses_the_connected_encoder():
    simple = image_of(executor.run_prompt(ipadapter_graph(node="IPAdapter", weight=0.8, prefix="simple")))
    advanced = image_of(executor.run_prompt(ipadapter_graph(weight=0.8, prefix="adv2")))
    torch.testing.assert_close(simple, advanced, rtol=0, atol=1 / 255)


def test_wrong_encoder_fails_before_sampling_with_both_encoders_named():
    result = executor.run_prompt(ipadapter_graph(clip_name=VIT_G, prefix="wrong_enc"))
    assert not result.success
    message = result.error["exception_message"]
    assert "ip-adapter-plus_sd15 needs" in message and "gives 52" in message and "Load CLIP Vision" in message
    assert result.error["node_type"] == "IPAdapterAdvanced"


def test_sdxl_adapter_on_an_sd15_model_is_refused_with_a_clear_message():
    result = executor.run_prompt(ipadapter_graph(ipadapter_file="ip-adapter-plus_sdxl_vit-h.safetensors",
                                                 prefix="wrong_arch"))
    assert not result.success
    message = result.error["exception_message"]
    assert "is an SDXL IP-Adapter" in message and "the connected model is SD1.5" in message


def test_encoder_message_names_the_real_encoders_at_full_size():
    """The real ViT-bigG encoder object (ComfyUI's own class, built on the meta device) against the
    full-size ip-adapter-plus_sdxl_vit-h layout."""
    config = Path(comfy.clip_vision.__file__).parent / "clip_vision_config_g.json"
    with torch.device("meta"):
        vit_g = comfy.clip_vision.ClipVisionModel(str(config))
    fam = LAYOUTS["families"]["ip-adapter-plus_sdxl_vit-h"]
    sections = {s: {k: torch.empty(v, device="meta") for k, v in fam[s].items()} for s in ("image_proj", "ip_adapter")}
    spec = checkpoint.detect(sections)
    with pytest.raises(encode.EncoderMismatchError) as err:
        encode.check_encoder(spec, vit_g, "ip-adapter-plus_sdxl_vit-h")
    assert str(err.value).startswith(
        "ip-adapter-plus_sdxl_vit-h needs CLIP ViT-H (penultimate width 1280); the connected encoder gives 1664 (ViT-bigG)")


def test_model_loader_reads_both_formats_and_reuses_a_loaded_file(fixture_files):
    loader = nodes.NODE_CLASS_MAPPINGS["IPAdapterModelLoader"]()
    (a,) = loader.load_ipadapter_model("ip-adapter_sd15.safetensors")
    (b,) = loader.load_ipadapter_model("ip-adapter_sd15.safetensors")
    (c,) = loader.load_ipadapter_model("ip-adapter_sd15.bin")
    assert a is b
    assert a.spec.tokens == 4 and a.spec.arch == "sd15"
    for key, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, c.model.state_dict()[key])


def test_a_file_that_is_not_an_ipadapter_gets_a_message_naming_it(tmp_path):
    bogus = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({"vision_model.embeddings.class_embedding": torch.zeros(4)}, str(bogus))
    with pytest.raises(checkpoint.CheckpointError) as err:
        adapter_mod.load_adapter(bogus)
    assert "model.safetensors" in str(err.value)


@pytest.mark.parametrize("position", ["center", "top", "left", "pad"])
def test_prep_image_for_clip_vision(position):
    image = torch.rand(2, 96, 160, 3)
    (out,) = nodes.NODE_CLASS_MAPPINGS["PrepImageForClipVision"]().prep_image(image, "BICUBIC", position, 0.0)
    assert out.shape == (2, 224, 224, 3)
    if position == "pad":
        assert out[:, :30].abs().max() < 0.02  # black bands above and below a wide image
    else:
        assert out[:, 100:120].mean() > 0.2
    sharp = nodes.NODE_CLASS_MAPPINGS["PrepImageForClipVision"]().prep_image(image, "BICUBIC", position, 1.0)[0]
    assert not torch.equal(sharp, out) and sharp.min() >= 0 and sharp.max() <= 1


def test_sd15_adapter_on_an_sdxl_model_is_refused_too():
    from support import tiny_adapter, tiny_unet

    with pytest.raises(apply.ModelMismatchError) as err:
        apply.check_model(tiny_adapter("ip-adapter-plus_sd15"), tiny_unet("sdxl"))
    assert "is an SD1.5 IP-Adapter (16 cross-attention layers) but the connected model is SDXL" in str(err.value)
