"""The apply-node variants: every node as a workflow on the fixture models, and the math each one adds
(style/composition split, precise swaps, per-frame weights, tiles, enhancer features, regional params)
checked at the library or patch level against the old extension's rules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import comfy.clip_vision
import folder_paths
import nodes

from harness import executor
from ipadapter_next.ipadapter import apply, attention, layers, params, tiles, weights
from ipadapter_next.node_defs.apply import IPAdapterMS, IPAdapterTiled
from ipadapter_next.node_defs.weights_params import IPAdapterCombineParams, IPAdapterRegionalConditioning
from support import features, sample, tiny_adapter, tiny_unet

REF, REF2 = "variants_ref.png", "variants_ref2.png"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


@pytest.fixture(scope="module", autouse=True)
def reference_images(models_dir, torch_single_thread):
    rng = np.random.default_rng(7)
    for name, shape in ((REF, (96, 128, 3)), (REF2, (80, 80, 3))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(Path(folder_paths.get_input_directory()) / name)


def graph(node, inputs, *, ipadapter_file="ip-adapter-plus_sd15.safetensors", sdxl=False, batch=1, prefix="variant"):
    """Checkpoint -> (IPAdapter loader, CLIP vision, two LoadImage, ImageBatch of both) -> node "13" -> KSampler."""
    make = executor.workflow_plain_sdxl if sdxl else executor.workflow_plain_sd15
    prompt = make(seed=3, steps=2, filename_prefix=prefix)
    prompt["4"]["inputs"]["batch_size"] = batch
    prompt["10"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ipadapter_file}}
    prompt["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": VIT_H}}
    prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": REF}}
    prompt["14"] = {"class_type": "LoadImage", "inputs": {"image": REF2}}
    prompt["15"] = {"class_type": "ImageBatch", "inputs": {"image1": ["12", 0], "image2": ["14", 0]}}
    prompt["13"] = {"class_type": node, "inputs": {"model": ["1", 0], "ipadapter": ["10", 0], "clip_vision": ["11", 0],
                                                   **inputs}}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    return prompt


def images_of(prompt) -> torch.Tensor:
    return torch.stack(executor.run_prompt(prompt).raise_for_error().image_tensors())


@pytest.fixture(scope="module")
def plain():
    def run(sdxl=False, batch=1):
        prompt = (executor.workflow_plain_sdxl if sdxl else executor.workflow_plain_sd15)(
            seed=3, steps=2, filename_prefix="variant_plain")
        prompt["4"]["inputs"]["batch_size"] = batch
        return images_of(prompt)
    return run


COMMON = {"start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}
ONE, TWO = ["12", 0], ["15", 0]
NODE_CASES = {
    "IPAdapterBatch": ({"image": TWO, "weight": 1.0, "weight_type": "linear", "encode_batch_size": 1, **COMMON}, 2),
    "IPAdapterPreciseStyleTransfer": ({"image": ONE, "weight": 1.0, "style_boost": 2.0, "combine_embeds": "concat",
                                       **COMMON}, 1),
    "IPAdapterPreciseStyleTransferBatch": ({"image": TWO, "weight": 1.0, "style_boost": 1.0,
                                            "combine_embeds": "concat", **COMMON}, 2),
    "IPAdapterPreciseComposition": ({"image": ONE, "weight": 1.0, "composition_boost": 0.3, "combine_embeds": "concat",
                                     **COMMON}, 1),
    "IPAdapterPreciseCompositionBatch": ({"image": TWO, "weight": 1.0, "composition_boost": 0.0,
                                          "combine_embeds": "concat", **COMMON}, 2),
    "IPAdapterMS": ({"image": ONE, "weight": 1.0, "weight_faceidv2": 1.0, "weight_type": "linear",
                     "combine_embeds": "concat", "layer_weights": "input_7:1,\nmiddle:0.5,\noutput_5:1,", **COMMON}, 1),
    "IPAdapterClipVisionEnhancer": ({"image": ONE, "weight": 1.0, "weight_type": "linear", "combine_embeds": "average",
                                     "enhance_tiles": 2, "enhance_ratio": 0.5, **COMMON}, 1),
    "IPAdapterClipVisionEnhancerBatch": ({"image": TWO, "weight": 1.0, "weight_type": "linear", "enhance_tiles": 2,
                                          "enhance_ratio": 0.5, "encode_batch_size": 0, **COMMON}, 2),
    "IPAdapterTiled": ({"image": ONE, "weight": 1.0, "weight_type": "linear", "combine_embeds": "concat",
                        "sharpening": 0.2, **COMMON}, 1),
    "IPAdapterTiledBatch": ({"image": TWO, "weight": 1.0, "weight_type": "linear", "sharpening": 0.0,
                             "encode_batch_size": 1, **COMMON}, 2),
}


@pytest.mark.parametrize("node", sorted(NODE_CASES))
def test_each_image_variant_runs_as_a_workflow_and_changes_the_image(node, plain):
    inputs, batch = NODE_CASES[node]
    got = images_of(graph(node, inputs, batch=batch, prefix=node))
    assert got.shape == (batch, 64, 64, 3)
    assert (got - plain(batch=batch)).abs().mean() > 1e-3


def test_embeds_batch_runs_from_encoder_embeds(plain):
    prompt = graph("IPAdapterEmbedsBatch", {"pos_embed": ["16", 0], "weight": 1.0, "weight_type": "linear", **COMMON},
                   batch=2, prefix="embeds_batch")
    prompt["16"] = {"class_type": "IPAdapterEncoder", "inputs": {"ipadapter": ["10", 0], "image": TWO, "weight": 1.0,
                                                                 "clip_vision": ["11", 0]}}
    got = images_of(prompt)
    assert (got - plain(batch=2)).abs().mean() > 1e-3


def test_batch_node_takes_a_linked_weight_list(plain):
    if "IPAdapterCombineWeights" not in nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("IPAdapterCombineWeights (the weights utilities) is not registered")
    inputs = {"image": TWO, "weight": ["16", 0], "weight_type": "linear", "encode_batch_size": 0, **COMMON}
    prompt = graph("IPAdapterBatch", inputs, batch=2, prefix="batch_weights")
    prompt["16"] = {"class_type": "IPAdapterCombineWeights", "inputs": {"weights_1": 0.0, "weights_2": 1.0}}
    got = images_of(prompt)
    base = plain(batch=2)
    assert torch.equal(got[0], base[0])  # weight 0 for latent 0: exactly the plain image
    assert (got[1] - base[1]).abs().mean() > 1e-3


def test_style_and_composition_runs_on_sdxl(plain):
    inputs = {"image_style": ONE, "image_composition": ["14", 0], "weight_style": 1.0, "weight_composition": 1.0,
              "expand_style": True, "combine_embeds": "average", **COMMON}
    got = images_of(graph("IPAdapterStyleComposition", inputs, sdxl=True,
                          ipadapter_file="ip-adapter-plus_sdxl_vit-h.safetensors", prefix="style_comp"))
    assert (got - plain(sdxl=True)).abs().mean() > 1e-3
    inputs = {k: v for k, v in inputs.items() if k != "combine_embeds"} | {"image_style": TWO}
    batch = images_of(graph("IPAdapterStyleCompositionBatch", inputs, sdxl=True, batch=2,
                            ipadapter_file="ip-adapter-plus_sdxl_vit-h.safetensors", prefix="style_comp_batch"))
    assert batch.shape[0] == 2


def test_style_and_composition_on_sd15_raises_the_old_message():
    inputs = {"image_style": ONE, "image_composition": ONE, "weight_style": 1.0, "weight_composition": 1.0,
              "expand_style": False, "combine_embeds": "average", **COMMON}
    result = executor.run_prompt(graph("IPAdapterStyleComposition", inputs, prefix="style_comp_sd15"))
    assert not result.success
    message = result.error["exception_message"]
    assert message.startswith("Style + Composition transfer is only available for SDXL models at the moment.")
    assert "weight_type 'style and composition'" in message


def test_regional_conditioning_two_regions_through_combine_and_from_params(plain):
    prompt = graph("IPAdapterFromParams", {"ipadapter_params": ["20", 0], "combine_embeds": "concat",
                                           "embeds_scaling": "V only"}, prefix="regional")
    prompt["16"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    prompt["17"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 64, "height": 64}}
    for node_id, image, mask in (("18", ONE, "16"), ("19", ["14", 0], "17")):
        prompt[node_id] = {"class_type": "IPAdapterRegionalConditioning", "inputs": {
            "image": image, "image_weight": 1.0, "prompt_weight": 1.0, "weight_type": "linear", "start_at": 0.0,
            "end_at": 1.0, "mask": [mask, 0], "positive": ["2", 0], "negative": ["3", 0]}}
    prompt["20"] = {"class_type": "IPAdapterCombineParams", "inputs": {"params_1": ["18", 0], "params_2": ["19", 0]}}
    prompt["5"]["inputs"]["positive"] = ["18", 1]
    prompt["5"]["inputs"]["negative"] = ["18", 2]
    got = images_of(prompt)
    assert (got - plain()).abs().mean() > 1e-3


def test_regional_conditioning_sets_the_mask_on_both_conditionings():
    node = IPAdapterRegionalConditioning()
    image, mask = torch.rand(1, 32, 32, 3), torch.rand(64, 64)
    positive, negative = [[torch.zeros(1, 77, 8), {"pooled_output": None}]], [[torch.ones(1, 77, 8), {}]]
    region, pos, neg = node.conditioning(image, 0.8, 2.5, "style transfer", 0.1, 0.9, mask=mask, positive=positive,
                                         negative=negative)
    assert region == {"image": [image], "attn_mask": [mask], "weight": [0.8], "weight_type": ["style transfer"],
                      "start_at": [0.1], "end_at": [0.9]}
    for out, given in ((pos, positive), (neg, negative)):
        options = out[0][1]
        assert torch.equal(options["mask"], mask[None]) and options["mask"].shape == (1, 64, 64)
        assert options["mask_strength"] == 2.5 and options["set_area_to_bounds"] is False
        assert out[0][0] is given[0][0] and "mask" not in given[0][1]  # the input conditioning is not modified
    assert positive[0][1] == {"pooled_output": None}
    unmasked = node.conditioning(image, 1.0, 1.0, "linear", 0.0, 1.0, positive=positive)
    assert unmasked[1] is positive and unmasked[2] is None and unmasked[0]["attn_mask"] == [None]


def test_combine_params_concatenates_in_order_and_checks_its_inputs():
    regions = [params.make_params(torch.full((1, 4, 4, 3), float(i)), None, i, "linear", 0.0, 1.0) for i in range(4)]
    node = IPAdapterCombineParams()
    (combined,) = node.combine(regions[0], regions[1], params_4=regions[2], params_5=regions[3])
    assert combined["weight"] == [0, 1, 2, 3]
    assert [float(img[0, 0, 0, 0]) for img in combined["image"]] == [0.0, 1.0, 2.0, 3.0]
    assert set(combined) == set(params.FIELDS) and all(len(v) == 4 for v in combined.values())
    assert regions[0]["weight"] == [0]  # inputs unchanged
    with pytest.raises(ValueError, match="params_2 lacks end_at"):
        node.combine(regions[0], {k: v for k, v in regions[1].items() if k != "end_at"})
    broken = dict(regions[1], weight=[1, 2])
    with pytest.raises(ValueError, match="lists of different lengths"):
        params.param_entries(broken)


# --- library and patch level -------------------------------------------------------------------------
def _call(patch, q, cond_or_uncond=(1, 0), extra=None):
    opts = {"n_heads": 1, "cond_or_uncond": list(cond_or_uncond), "sigmas": torch.tensor([1.0]),
            "original_shape": [q.shape[0], 4, 8, 8], **(extra or {})}
    k = torch.randn(q.shape[0], 77, q.shape[2], generator=torch.Generator().manual_seed(3))
    return patch(q, k, k.clone(), opts)


def _ip_part(model, key, q, cond_or_uncond=(1, 0), extra=None):
    """What the image branch adds at one site: the patched output minus the bare attention."""
    patch = attention.attn2_patches(model)[key]
    return _call(patch, q, cond_or_uncond, extra) - _call(attention.IPAttention(patch.site, (), None), q,
                                                          cond_or_uncond, extra)


def _width(arch, key):
    site = next(s for s in layers.layer_map(arch) if s.key == key)
    return tiny_adapter(PLUS[arch]).layer_widths[site.ckpt_index]


PLUS = {"sd15": "ip-adapter-plus_sd15", "sdxl": "ip-adapter-plus_sdxl_vit-h"}


@pytest.mark.parametrize("expand", [False, True])
def test_style_composition_puts_each_image_on_its_own_layers(expand):
    ad = tiny_adapter(PLUS["sdxl"])
    style = apply.Embeds(features(ad, seed=1), features(ad, seed=9))
    comp = apply.Embeds(features(ad, seed=2), style.uncond)
    model = apply.apply_style_composition(tiny_unet("sdxl"), ad, style, comp, weight_style=0.8,
                                          weight_composition=1.7, expand_style=expand)
    only = lambda embeds, w, t: apply.apply_adapter(tiny_unet("sdxl"), ad, embeds, weight=w, layer_weights={t: 1.0})
    for key, embeds, w, t in ((("input", 8, 4), comp, 1.7, 3), (("output", 1, 2), style, 0.8, 6),
                              (("output", 2, 0), style, 0.8, 7)):
        q = torch.randn(2, 4, _width("sdxl", key), generator=torch.Generator().manual_seed(t))
        got = _ip_part(model, key, q)
        if t == 7 and not expand:
            assert torch.equal(got, torch.zeros_like(got))  # not a style layer without expand_style
            continue
        torch.testing.assert_close(got, _ip_part(only(embeds, w, t), key, q), rtol=1e-5, atol=1e-6)


def test_style_composition_is_sdxl_only():
    ad = tiny_adapter(PLUS["sd15"])
    embeds = apply.Embeds(features(ad), features(ad, seed=1))
    with pytest.raises(ValueError, match=r"^Style \+ Composition transfer is only available for SDXL models"):
        apply.apply_style_composition(tiny_unet("sd15"), ad, embeds, embeds)


@pytest.mark.parametrize("weight_type,swapped_key,plain_key", [
    ("style transfer precise", ("input", 8, 0), ("output", 1, 0)),
    ("composition precise", ("output", 1, 0), ("input", 8, 0)),
])
def test_precise_types_give_the_reference_to_the_uncond_pass_on_suppressed_layers(weight_type, swapped_key, plain_key):
    ad = tiny_adapter(PLUS["sdxl"])
    embeds = apply.Embeds(features(ad, seed=4), features(ad, seed=5))
    precise = apply.apply_adapter(tiny_unet("sdxl"), ad, embeds, weight=1.0, weight_type=weight_type, boost=1.0)
    reference = apply.apply_adapter(tiny_unet("sdxl"), ad, embeds, weight=1.0)
    for key in (swapped_key, plain_key):
        q = torch.randn(1, 4, _width("sdxl", key), generator=torch.Generator().manual_seed(8)).repeat(2, 1, 1)
        got, ref = _ip_part(precise, key, q), _ip_part(reference, key, q)  # rows: [uncond, cond]
        if key == swapped_key:
            assert torch.equal(got[1], torch.zeros_like(got[1]))  # cond sees zero image tokens: adds nothing
            torch.testing.assert_close(got[0], ref[1], rtol=1e-5, atol=1e-6)  # uncond sees the reference
        else:
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_per_frame_weights_change_latent_i_only_by_weight_i():
    ad = tiny_adapter("ip-adapter_sd15")
    two = features(ad, n=2, seed=11)
    neg = torch.zeros_like(two[:1])
    unet = tiny_unet("sd15")
    framed = apply.apply_adapter(unet, ad, apply.Embeds(two, neg), weight=[0.3, 1.6], unfold=True)
    first = apply.apply_adapter(unet, ad, apply.Embeds(two[:1], neg), weight=0.3)
    second = apply.apply_adapter(unet, ad, apply.Embeds(two[1:], neg), weight=1.6)
    batch = sample(framed, "sd15", batch=2)
    torch.testing.assert_close(batch[0], sample(first, "sd15", batch=2)[0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(batch[1], sample(second, "sd15", batch=2)[1], rtol=1e-5, atol=1e-3)
    # Without unfold a list means its first value, as in the old extension.
    folded = apply.apply_adapter(unet, ad, apply.Embeds(two[:1], neg), weight=[0.3, 1.6])
    assert torch.equal(sample(folded, "sd15"), sample(first, "sd15"))


@pytest.mark.parametrize("scaling", weights.EMBEDS_SCALING)
def test_per_frame_weights_follow_animatediff_context_windows(scaling):
    ad = tiny_adapter("ip-adapter_sd15")
    three, neg = features(ad, n=3, seed=12), features(ad, n=1, seed=13)
    key = ("input", 4, 0)
    framed = apply.apply_adapter(tiny_unet("sd15"), ad, apply.Embeds(three, neg), weight=[0.5, 1.0, 2.0],
                                 unfold=True, embeds_scaling=scaling)
    window = {"ad_params": {"full_length": 3, "sub_idxs": [2, 0]}}
    reordered = apply.apply_adapter(tiny_unet("sd15"), ad, apply.Embeds(three[[2, 0]], neg), weight=[2.0, 0.5],
                                    unfold=True, embeds_scaling=scaling)
    q = torch.randn(4, 16, _width("sd15", key), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_ip_part(framed, key, q, extra=window), _ip_part(reordered, key, q),
                               rtol=1e-5, atol=1e-6)


# --- tiles --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw,grid,mask_hw", [
    ((100, 100), (2, 2), (512, 512)),  # nearly square: cropped, 512 x 512, 2 x 2 tiles
    ((96, 128), (1, 2), (256, 341)),  # 3:4 is not "nearly square": short side 256, 2 overlapping tiles
    ((300, 120), (3, 1), (640, 256)),
    ((50, 400), (1, 4), (256, 1024)),  # beyond 1:4: cropped to 4 tiles
])
def test_tiles_cover_the_reference_and_each_mask_covers_its_tile(hw, grid, mask_hw):
    image = torch.rand(2, *hw, 3, generator=torch.Generator().manual_seed(0))
    tile_list, masks = tiles.tile_reference(image)
    assert len(tile_list) == grid[0] * grid[1] == len(masks)
    assert all(t.shape == (2, 256, 256, 3) for t in tile_list)
    assert all(m.shape == (1, *mask_hw) for m in masks)
    coverage = torch.stack(masks).sum(0)
    assert (coverage >= 1 - 1e-5).all()  # every pixel belongs to some tile
    for m in masks:
        inside = m[0] > 0.5
        rows, cols = inside.any(1).nonzero(), inside.any(0).nonzero()
        assert rows.numel() == 256 and cols.numel() == 256  # exactly one 256 x 256 rectangle
        assert int(rows[-1] - rows[0]) == 255 and int(cols[-1] - cols[0]) == 255


def test_tile_masks_carry_the_attention_mask_and_the_node_returns_tiles_and_masks(fixture_files):
    attn = torch.zeros(1, 64, 64)
    attn[:, :, :32] = 1.0  # left half
    clip_vision = comfy.clip_vision.load(str(fixture_files.clip_vision["vit-h"]))
    node = IPAdapterTiled()
    model, tile_batch, masks = node.apply_tiled(tiny_unet("sd15"), tiny_adapter(PLUS["sd15"]), torch.rand(1, 90, 90, 3),
                                                1.0, "linear", 0.0, 1.0, 0.0, "V only", combine_embeds="concat",
                                                attn_mask=attn, clip_vision=clip_vision)
    assert tile_batch.shape == (4, 256, 256, 3) and masks.shape == (4, 512, 512)
    assert masks[:, :, 280:].max() < 1e-3 and masks[0, 10:200, 10:200].min() > 0.99  # right half masked out
    patch = attention.attn2_patches(model)[("input", 1, 0)]
    assert len(patch.entries) == 4 and [e.mask.shape for e in patch.entries] == [(1, 512, 512)] * 4


def test_enhancer_merges_hidden_state_tiles_back_to_one_grid():
    tiles_n, g, d = 2, 2, 3
    x = torch.randn(2 * tiles_n ** 2, 1 + g * g, d, generator=torch.Generator().manual_seed(0))
    merged = tiles.merge_hidden_states(x, tiles_n)
    assert merged.shape == (2, 1 + g * g, d)
    for b in range(2):
        group = x[b * 4:(b + 1) * 4]
        torch.testing.assert_close(merged[b, 0], group[:, 0].mean(0))  # class token: mean of the tiles'
        for tile in range(4):  # with g == tiles, pooled cell (i, j) is the mean of tile (i, j)'s patches
            torch.testing.assert_close(merged[b, 1 + tile], group[tile, 1:].mean(0))


def test_enhancer_merges_1024_wide_image_embeds_as_32x32_maps():
    x = torch.randn(4, 1024, generator=torch.Generator().manual_seed(1))
    maps = x.reshape(2, 2, 32, 32)
    stitched = torch.cat([torch.cat([maps[i, j] for j in range(2)], dim=1) for i in range(2)], dim=0)
    expect = F.avg_pool2d(stitched[None, None], 2).flatten()
    torch.testing.assert_close(tiles.merge_image_embeds(x, 2)[0], expect)
    assert tiles.merge_image_embeds(torch.randn(9, 1280), 3).shape == (1, 1280)  # bigG width: 32 x 40 maps


def test_enhancer_features_one_image_gives_two_embeddings_several_mix(fixture_files):
    clip_vision = comfy.clip_vision.load(str(fixture_files.clip_vision["vit-h"]))
    ad = tiny_adapter(PLUS["sd15"])
    one = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    plain = apply.encode_for(ad, clip_vision, one)
    enhanced = apply.encode_for(ad, clip_vision, one, enhance_tiles=2, enhance_ratio=0.25)
    assert enhanced.cond.shape == (2, *plain.cond.shape[1:])
    torch.testing.assert_close(enhanced.cond[0], plain.cond[0] * 0.25)
    assert torch.equal(enhanced.uncond, plain.uncond)  # the negative is never tiled
    two = torch.cat([one, one.flip(1)])
    mixed = apply.encode_for(ad, clip_vision, two, enhance_tiles=2, enhance_ratio=0.25)
    assert mixed.cond.shape == (2, *plain.cond.shape[1:])
    assert torch.equal(apply.encode_for(ad, clip_vision, two, enhance_tiles=1).cond,
                       apply.encode_for(ad, clip_vision, two).cond)


def test_mad_scientist_rejects_bad_layer_weights_with_the_entry(fixture_files):
    clip_vision = comfy.clip_vision.load(str(fixture_files.clip_vision["vit-h"]))
    node = IPAdapterMS()
    with pytest.raises(ValueError, match=r"^layer_weights entry 'output_12:1': SD1.5 has no cross-attention"):
        node.apply_ipadapter(tiny_unet("sd15"), tiny_adapter(PLUS["sd15"]), torch.rand(1, 32, 32, 3), 1.0, 1.0,
                             "linear", "concat", 0.0, 1.0, "V only", "3:1, output_12:1", clip_vision=clip_vision)
