"""Encoding reference images with ComfyUI's CLIP vision: fields, sizes, negatives, chunking, combining."""
from __future__ import annotations

import pytest
import torch

from harness import dims, tiny_models
from ipadapter_next.ipadapter import apply, encode
from support import tiny_adapter


@pytest.fixture(scope="module")
def vit_h():
    return tiny_models.build_clip_vision("vit-h")


def test_features_are_the_field_the_adapter_needs(vit_h):
    images = torch.rand(3, 200, 300, 3)
    pooled = encode.encode_images(vit_h, images, "image_embeds")
    hidden = encode.encode_images(vit_h, images, "penultimate_hidden_states")
    reference = vit_h.encode_image(images)  # ComfyUI's own encode path
    assert pooled.shape == (3, dims.TINY_CLIP["vit-h"].projection_dim)
    assert hidden.shape == (3, 257, dims.TINY_CLIP["vit-h"].hidden_size)
    torch.testing.assert_close(pooled, reference["image_embeds"])
    torch.testing.assert_close(hidden, reference["penultimate_hidden_states"])
    assert not torch.allclose(hidden, reference["last_hidden_state"])  # penultimate, not the last layer


def test_chunked_encoding_equals_one_batch(vit_h):
    images = torch.rand(5, 224, 224, 3)
    whole = encode.encode_images(vit_h, images, "penultimate_hidden_states")
    chunked = encode.encode_images(vit_h, images, "penultimate_hidden_states", batch_size=2)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)


def test_input_size_comes_from_the_encoder():
    vit_l = tiny_models.build_clip_vision("vit-l-336")
    hidden = encode.encode_images(vit_l, torch.rand(1, 400, 400, 3), "penultimate_hidden_states")
    assert hidden.shape[1] == (336 // 14) ** 2 + 1  # 577 tokens: the image went in at 336 px


def test_negatives(vit_h):
    like = torch.randn(2, 32)
    assert torch.equal(encode.negative_embeds(vit_h, "image_embeds", like), torch.zeros(1, 32))
    black = encode.negative_embeds(vit_h, "penultimate_hidden_states", like, mode="black image")
    torch.testing.assert_close(black, encode.encode_images(vit_h, torch.zeros(1, 224, 224, 3), "penultimate_hidden_states"))
    zeros = encode.negative_embeds(vit_h, "penultimate_hidden_states", like, mode="normalized zeros")
    assert not torch.allclose(zeros, black)
    # The reference implementation's negative: all-zero pixels after CLIP normalisation, straight into the encoder.
    direct = vit_h.model(pixel_values=torch.zeros(1, 3, 224, 224), intermediate_output=-2)[1]
    torch.testing.assert_close(zeros, direct.float())
    user = torch.rand(1, 224, 224, 3)
    torch.testing.assert_close(encode.negative_embeds(vit_h, "penultimate_hidden_states", like, image_negative=user),
                               encode.encode_images(vit_h, user, "penultimate_hidden_states"))


def test_combine_methods():
    x = torch.tensor([[1.0, -2.0], [3.0, 4.0], [5.0, 0.0]])
    assert torch.equal(encode.combine_embeds(x, "concat"), x)
    assert torch.equal(encode.combine_embeds(x, "add"), torch.tensor([[9.0, 2.0]]))
    assert torch.equal(encode.combine_embeds(x, "subtract"), torch.tensor([[1.0 - 4.0, -2.0 - 2.0]]))
    assert torch.equal(encode.combine_embeds(x, "average"), torch.tensor([[3.0, 2.0 / 3]]))
    norm = x / x.norm(dim=0, keepdim=True)
    torch.testing.assert_close(encode.combine_embeds(x, "norm average"), norm.mean(0, keepdim=True))
    assert torch.equal(encode.combine_embeds(x, "max"), torch.tensor([[5.0, 4.0]]))
    assert torch.equal(encode.combine_embeds(x, "min"), torch.tensor([[1.0, -2.0]]))
    with pytest.raises(ValueError, match="unknown combine method"):
        encode.combine_embeds(x, "median")


def test_several_references_are_combined_before_projection(vit_h):
    ad = tiny_adapter("ip-adapter_sd15")
    images = torch.rand(2, 224, 224, 3)
    embeds = apply.encode_for(ad, vit_h, images)
    assert embeds.cond.shape[0] == 2
    averaged = apply.apply_adapter(tiny_models.build_unet("sd15"), ad, embeds, combine="average")
    entry = next(iter(averaged.model_options["transformer_options"]["patches_replace"]["attn2"].values())).entries[0]
    expect = ad.project(embeds.cond.mean(0, keepdim=True), dtype=torch.float32)
    torch.testing.assert_close(entry.cond, expect)
    concat = apply.apply_adapter(tiny_models.build_unet("sd15"), ad, embeds, combine="concat")
    entry = next(iter(concat.model_options["transformer_options"]["patches_replace"]["attn2"].values())).entries[0]
    assert entry.cond.shape == (2, 4, 64)  # both references kept; they share one softmax at attention time
