"""SigLIP's pooled vector (IPAdapter SigLIP Pooled Encoder), checked against transformers'
``SiglipVisionModel.pooler_output``: a tiny SigLIP with random weights is saved as a file (its
``vision_model.*`` keys, head included), ComfyUI's own SigLIP class loads the same weights (the head is left
out, as ComfyUI's loader leaves it), and the node adds the head read from the file.
"""
from __future__ import annotations

import pytest
import torch

import comfy.clip_vision
import folder_paths
import nodes

from harness import tiny_sd3
from harness.dims import TINY_SD35
from ipadapter_next.ipadapter import errors, siglip_pool

FILE = "tiny_siglip_with_head.safetensors"
HEADLESS = "tiny_siglip_without_head.safetensors"

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def siglip(models_dir):
    from safetensors.torch import load_file

    folder = models_dir / "clip_vision"
    hf = tiny_sd3.write_tiny_siglip_file(folder / FILE)
    tiny_sd3.write_tiny_siglip_file(folder / HEADLESS, head=False)
    folder_paths.filename_list_cache.pop("clip_vision", None)
    encoder = tiny_sd3.build_tiny_siglip()
    missing, unexpected = encoder.load_sd(load_file(str(folder / FILE)))
    assert not missing and all(".head." in k for k in unexpected)  # ComfyUI's SigLIP has no head
    return hf, encoder


def test_the_head_reproduces_transformers_pooler_output(siglip):
    hf, _ = siglip
    pixels = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        out = hf(pixel_values=pixels)
    head = siglip_pool.read_head(folder_paths.get_full_path("clip_vision", FILE))
    got = siglip_pool.pool(head, out.last_hidden_state, tiny_sd3.siglip_config()["num_attention_heads"])
    assert got.shape == (2, TINY_SD35.siglip_width)
    torch.testing.assert_close(got, out.pooler_output, atol=1e-5, rtol=0)


def test_the_node_pools_comfyuis_siglip_tokens(siglip):
    hf, encoder = siglip
    image = torch.rand(1, 400, 400, 3, generator=torch.Generator().manual_seed(2))
    node = nodes.NODE_CLASS_MAPPINGS["IPAdapterSigLIPPooledEncoder"]()
    assert FILE in node.INPUT_TYPES()["required"]["clip_name"][0]
    pos, neg = node.encode(encoder, image, FILE)
    pixels = comfy_pixels(encoder, image)
    with torch.no_grad():
        want = hf(pixel_values=pixels).pooler_output
    assert pos.shape == (1, TINY_SD35.siglip_width) and torch.equal(neg, torch.zeros_like(pos))
    # ComfyUI's SigLIP LayerNorms use eps 1e-5 where transformers' use 1e-6: close, not identical.
    torch.testing.assert_close(pos, want, atol=2e-3, rtol=0)


def comfy_pixels(clip_vision, image: torch.Tensor) -> torch.Tensor:
    import importlib

    # Newer ComfyUI moved clip_preprocess to comfy.clip_model.
    preprocess = (getattr(comfy.clip_vision, "clip_preprocess", None)
                  or importlib.import_module("comfy.clip_model").clip_preprocess)
    return preprocess(image, size=clip_vision.image_size, mean=clip_vision.image_mean, std=clip_vision.image_std,
                      crop=True).float()


def test_a_file_without_the_head_and_a_clip_encoder_are_refused(siglip):
    from harness import tiny_models

    _, encoder = siglip
    node = nodes.NODE_CLASS_MAPPINGS["IPAdapterSigLIPPooledEncoder"]()
    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(errors.EncoderMismatchError, match="tiny_siglip_without_head.safetensors has no complete SigLIP"):
        node.encode(encoder, image, HEADLESS)
    with pytest.raises(errors.EncoderMismatchError, match="not SigLIP"):
        node.encode(tiny_models.build_clip_vision("vit-h"), image, FILE)
