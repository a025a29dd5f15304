"""XLabs Flux IP-Adapter (v1/v2) on ComfyUI's own Flux model, checked against diffusers 0.42.1.

A tiny Flux (ComfyUI's classes: 256 wide, 2 heads of 128, 3 double + 2 single blocks, T5 width 4096) runs
patched by ``apply_adapter`` through the double-block patch point; the same weights run in diffusers'
``FluxTransformer2DModel`` (ComfyUI's ``flux_to_diffusers`` key map), with the same synthetic adapter file
loaded by diffusers' own Flux IP-Adapter loader (``_load_ip_adapter_weights``, keys converted as
``FluxIPAdapterMixin.load_ip_adapter`` converts the released file). Outputs agree within 1e-4 (fp32).
"""
from __future__ import annotations

import copy

import pytest
import torch

from harness import adapter_factory, tiny_dit
from harness.dims import FULL_FLUX, TINY_CLIP, TINY_FLUX
from harness.widths import TINY_WIDTHS
from ipadapter_next.ipadapter import adapter as adapter_mod
from ipadapter_next.ipadapter import apply, checkpoint, dit_patch, errors, flux
from ipadapter_next.ipadapter.files import split_sections

ATOL = 1e-4
MIN_EFFECT = 100 * ATOL
EMBED_WIDTH = TINY_CLIP["vit-h"].projection_dim  # the tiny stand-in of ViT-L's image_embeds (224 px)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------
def xlabs_adapter(version: str, seed: int = 0) -> adapter_mod.Adapter:
    flat = adapter_factory.xlabs_flux_state_dict(version, seed=seed)
    sections = split_sections(flat)
    spec = checkpoint.detect(sections, source=f"xlabs-{version}.safetensors", widths=TINY_WIDTHS)
    return adapter_mod.build_adapter(sections, spec, source=f"xlabs-{version}.safetensors", dtype=torch.float32)


@pytest.fixture(scope="module")
def flux_model():
    return tiny_dit.build_flux(seed=3)


@pytest.fixture(scope="module")
def oracle(flux_model):
    return tiny_dit.diffusers_flux(flux_model)


@pytest.fixture(scope="module")
def inputs():
    return tiny_dit.packed_inputs()


comfy_forward = tiny_dit.comfy_forward


def diffusers_state_dict(version: str, seed: int = 0) -> dict:
    """The released flat file converted as diffusers' FluxIPAdapterMixin.load_ip_adapter converts it."""
    out = {"image_proj": {}, "ip_adapter": {}}
    for key, t in adapter_factory.xlabs_flux_state_dict(version, seed=seed).items():
        rest = ".".join(key.split(".")[1:])
        if key.startswith("ip_adapter_proj_model."):
            out["image_proj"][rest] = t
        else:
            rest = (rest.replace("ip_adapter_double_stream_k_proj", "to_k_ip")
                    .replace("ip_adapter_double_stream_v_proj", "to_v_ip").replace("processor.", ""))
            out["ip_adapter"][rest] = t
    return out


def oracle_forward(oracle, inputs, embeds: list[torch.Tensor] | None = None, adapters=(), scales=()) -> torch.Tensor:
    """diffusers' transformer; ``adapters`` = ((version, seed), ...) loaded with its own loader, ``scales``
    one float (every double block) or one {block index: scale} per adapter."""
    model = copy.deepcopy(oracle)
    kwargs = None
    if adapters:
        model._load_ip_adapter_weights([diffusers_state_dict(v, s) for v, s in adapters], low_cpu_mem_usage=False)
        for i, block in enumerate(model.transformer_blocks):
            block.attn.processor.scale = [s.get(i, 0.0) if isinstance(s, dict) else s for s in scales]
        b = inputs["img"].shape[0]
        kwargs = {"ip_adapter_image_embeds": [e.expand(b, 1, -1) if e.dim() == 2 else e for e in embeds]}
    with torch.no_grad():
        return model(hidden_states=inputs["img"], encoder_hidden_states=inputs["txt"], pooled_projections=inputs["y"],
                     timestep=inputs["t"], img_ids=inputs["img_ids"], txt_ids=inputs["txt_ids"],
                     guidance=inputs["guidance"], joint_attention_kwargs=kwargs).sample


def image_embeds(seed: int) -> torch.Tensor:
    return torch.randn(1, EMBED_WIDTH, generator=torch.Generator().manual_seed(seed))


def embeds_of(seed: int) -> apply.Embeds:
    cond = image_embeds(seed)
    return apply.Embeds(cond, torch.zeros_like(cond))


# --------------------------------------------------------------------------------------------------
# Detection and layouts
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version,tokens,family", [("v1", 4, "flux-ip-adapter"), ("v2", 16, "flux-ip-adapter-v2")])
def test_full_size_layout_is_detected_on_meta(version, tokens, family):
    flat = adapter_factory.xlabs_flux_state_dict(version, scale="full", device="meta")
    assert len([k for k in flat if k.startswith("double_blocks.")]) == 4 * FULL_FLUX.depth
    spec = checkpoint.detect(split_sections(flat), source="x.safetensors")
    assert (spec.family, spec.arch, spec.tokens, spec.layer_count) == (family, "flux", tokens, 19)
    assert (spec.context_dim, spec.token_dim) == (4096, 4096)
    assert (spec.encoder.model, spec.encoder.output, spec.encoder.width, spec.encoder.image_size) == (
        "CLIP ViT-L/14", "image_embeds", 768, 224)
    layers = flux.build_layers(split_sections(flat)["ip_adapter"], lambda t: t)
    assert len(layers) == 19 and tuple(layers["18"].to_k_ip.weight.shape) == (3072, 4096)
    assert tuple(layers["0"].to_v_ip.bias.shape) == (3072,)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_files_load_from_disk(tmp_path, suffix):
    path = adapter_factory.write_xlabs_flux(tmp_path / f"flux-ip-adapter-v2{suffix}", "v2", seed=1)
    from ipadapter_next.ipadapter.encoders import widths_registered

    with widths_registered(TINY_WIDTHS):
        adapter = adapter_mod.load_adapter(path)
    assert (adapter.spec.family, adapter.spec.tokens, adapter.spec.layer_count) == ("flux-ip-adapter-v2", 16, 3)
    want = adapter_factory.xlabs_flux_state_dict("v2", seed=1)
    assert torch.equal(adapter.model.ip_adapter["2"].to_v_ip.bias,
                       want["double_blocks.2.processor.ip_adapter_double_stream_v_proj.bias"])


def test_incomplete_file_names_the_missing_tensor():
    flat = adapter_factory.xlabs_flux_state_dict("v1")
    del flat["double_blocks.1.processor.ip_adapter_double_stream_k_proj.bias"]
    with pytest.raises(errors.UnknownAdapterError, match="double block 1 lacks .*k.bias"):
        checkpoint.detect(split_sections(flat), source="x.safetensors")


# --------------------------------------------------------------------------------------------------
# Oracle
# --------------------------------------------------------------------------------------------------
def test_plain_models_agree(flux_model, oracle, inputs):
    mine, ref = comfy_forward(flux_model, inputs), oracle_forward(oracle, inputs)
    assert torch.allclose(mine, ref, atol=1e-5, rtol=0), (mine - ref).abs().max()


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("weight", [0.6, 1.3])
def test_matches_diffusers(flux_model, oracle, inputs, version, weight):
    adapter = xlabs_adapter(version)
    patched = apply.apply_adapter(flux_model, adapter, embeds_of(5), weight=weight)
    mine = comfy_forward(patched, inputs)
    ref = oracle_forward(oracle, inputs, [image_embeds(5)], [(version, 0)], [weight])
    assert (mine - comfy_forward(flux_model, inputs)).abs().max() > MIN_EFFECT
    assert torch.allclose(mine, ref, atol=ATOL, rtol=0), (mine - ref).abs().max()


def test_weight_zero_is_bit_exact(flux_model, inputs):
    patched = apply.apply_adapter(flux_model, xlabs_adapter("v1"), embeds_of(5), weight=0.0)
    assert torch.equal(comfy_forward(patched, inputs), comfy_forward(flux_model, inputs))


def test_stacked_adapters_match_diffusers_multi_adapter(flux_model, oracle, inputs):
    one = apply.apply_adapter(flux_model, xlabs_adapter("v1"), embeds_of(5), weight=0.8)
    both = apply.apply_adapter(one, xlabs_adapter("v2", seed=7), embeds_of(6), weight=0.5)
    patches = dit_patch.dit_patches(both)
    assert all(len(patches[("double_block", i)].entries) == 2 for i in range(TINY_FLUX.depth))
    ref = oracle_forward(oracle, inputs, [image_embeds(5), image_embeds(6)], [("v1", 0), ("v2", 7)], [0.8, 0.5])
    assert torch.allclose(comfy_forward(both, inputs), ref, atol=ATOL, rtol=0)
    assert len(dit_patch.dit_patches(one)[("double_block", 0)].entries) == 1  # the input model is unchanged


def test_per_block_weights_match_diffusers_per_block_scales(flux_model, oracle, inputs):
    weights = {0: 0.0, 1: 1.5, 2: 0.4}
    patched = apply.apply_adapter(flux_model, xlabs_adapter("v1"), embeds_of(5), weight=1.0,
                                  layer_weights=flux.parse_block_weights("double_1:1.5, 2:0.4", TINY_FLUX.depth))
    ref = oracle_forward(oracle, inputs, [image_embeds(5)], [("v1", 0)], [weights])
    assert torch.allclose(comfy_forward(patched, inputs), ref, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------
# Patch point behaviour: wrapping, once per call, start/end, masks
# --------------------------------------------------------------------------------------------------
class CountingPatch:
    """Another extension's pass-through block patch, counting its calls per block."""

    def __init__(self, index: int, calls: dict):
        self.index, self.calls = index, calls

    def __call__(self, args, extra):
        self.calls[self.index] = self.calls.get(self.index, 0) + 1
        return extra["original_block"](args)

    def __deepcopy__(self, memo):  # ComfyUI 0.3.75 deep-copies model_options on clone: keep one counter
        return self


def test_wraps_a_foreign_block_patch_and_every_block_runs_once(flux_model, oracle, inputs):
    calls: dict = {}
    foreign = flux_model.clone()
    for i in range(TINY_FLUX.depth):
        foreign.set_model_patch_replace(CountingPatch(i, calls), "dit", "double_block", i)
    patched = apply.apply_adapter(foreign, xlabs_adapter("v1"), embeds_of(5), weight=1.0)
    out = comfy_forward(patched, inputs)
    assert calls == {i: 1 for i in range(TINY_FLUX.depth)}
    ref = oracle_forward(oracle, inputs, [image_embeds(5)], [("v1", 0)], [1.0])
    assert torch.allclose(out, ref, atol=ATOL, rtol=0)


def test_start_end_gate_by_sigma(flux_model, inputs):
    patched = apply.apply_adapter(flux_model, xlabs_adapter("v1"), embeds_of(5), weight=1.0, start_at=0.5, end_at=1.0)
    sampling = flux_model.get_model_object("model_sampling")
    early, late = sampling.percent_to_sigma(0.2), sampling.percent_to_sigma(0.8)
    plain = comfy_forward(flux_model, inputs)
    assert torch.equal(comfy_forward(patched, inputs, {"sigmas": torch.tensor([early])}), plain)
    assert (comfy_forward(patched, inputs, {"sigmas": torch.tensor([late])}) - plain).abs().max() > MIN_EFFECT


def test_masks(flux_model, inputs):
    adapter = xlabs_adapter("v1")
    plain = comfy_forward(flux_model, inputs)
    full = comfy_forward(apply.apply_adapter(flux_model, adapter, embeds_of(5)), inputs)
    ones = comfy_forward(apply.apply_adapter(flux_model, adapter, embeds_of(5), attn_mask=torch.ones(32, 48)), inputs)
    zeros = comfy_forward(apply.apply_adapter(flux_model, adapter, embeds_of(5), attn_mask=torch.zeros(32, 48)), inputs)
    assert torch.allclose(ones, full, atol=1e-6) and torch.equal(zeros, plain)
    # The left half of a 4x6 token grid: only those tokens' first block input changes, so the right half
    # differs from the unmasked run and the masked run is neither plain nor full.
    left = torch.zeros(32, 48)
    left[:, :24] = 1
    half = comfy_forward(apply.apply_adapter(flux_model, adapter, embeds_of(5), attn_mask=left), inputs)
    assert (half - plain).abs().max() > MIN_EFFECT and (half - full).abs().max() > MIN_EFFECT


# --------------------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------------------
def test_wrong_base_models():
    from harness import tiny_models

    with pytest.raises(errors.ModelMismatchError, match="not Flux"):
        apply.apply_adapter(tiny_models.build_unet("sd15"), xlabs_adapter("v1"), embeds_of(5))
    other = tiny_dit.build_flux(dims=type(TINY_FLUX)(256, 2, 2, 1, 4096, 32))
    with pytest.raises(errors.ModelMismatchError, match="3 double blocks .* 2 double blocks"):
        apply.apply_adapter(other, xlabs_adapter("v1"), embeds_of(5))


def test_unet_only_weight_types_and_nodes_say_so(flux_model):
    adapter = xlabs_adapter("v1")
    with pytest.raises(ValueError, match="'weak input' is a UNet layer map .* linear, ease in.* composition"):
        apply.apply_adapter(flux_model, adapter, embeds_of(5), weight_type="weak input")
    with pytest.raises(ValueError, match="IPAdapter Tiled is not available .* Flux"):
        apply.check_model(adapter, flux_model, "IPAdapter Tiled")
    with pytest.raises(ValueError, match="double blocks: 0-18"):
        flux.parse_block_weights("single_3:1")


# --------------------------------------------------------------------------------------------------
# Experimental style / composition maps (ipadapter/block_maps.py) on the real patch
# --------------------------------------------------------------------------------------------------
def test_style_and_composition_weight_types_weigh_their_blocks(flux_model, oracle, inputs):
    # tiny Flux: 3 double blocks -> composition = blocks 0, 1; style = block 2
    adapter = xlabs_adapter("v1")
    for weight_type, scales in (("composition", {0: 0.7, 1: 0.7}), ("style transfer", {2: 0.7}),
                                ("style and composition", {0: 0.4, 1: 0.4, 2: 0.7})):
        patched = apply.apply_adapter(flux_model, adapter, embeds_of(5), weight=0.7, weight_type=weight_type,
                                      weight_composition=0.4)
        ref = oracle_forward(oracle, inputs, [image_embeds(5)], [("v1", 0)], [scales])
        torch.testing.assert_close(comfy_forward(patched, inputs), ref, atol=ATOL, rtol=0)
        assert set(dit_patch.dit_patches(patched)) == {("double_block", i) for i in range(TINY_FLUX.depth)}


def test_style_and_composition_node_puts_each_image_on_its_blocks(flux_model, oracle, inputs):
    adapter = xlabs_adapter("v1")
    patched = apply.apply_style_composition(flux_model, adapter, embeds_of(5), embeds_of(6), weight_style=0.9,
                                            weight_composition=0.6)
    ref = oracle_forward(oracle, inputs, [image_embeds(5), image_embeds(6)], [("v1", 0), ("v1", 0)],
                         [{2: 0.9}, {0: 0.6, 1: 0.6}])
    torch.testing.assert_close(comfy_forward(patched, inputs), ref, atol=ATOL, rtol=0)
    patches = dit_patch.dit_patches(patched)
    assert [len(patches[("double_block", i)].entries) for i in range(3)] == [2, 2, 2]  # one at weight 0 each


def test_wrong_encoder_is_named():
    from harness import tiny_models
    from ipadapter_next.ipadapter.encode import check_encoder

    adapter = xlabs_adapter("v1")
    with pytest.raises(errors.EncoderMismatchError, match="image_embeds width 32"):
        check_encoder(adapter.spec, tiny_models.build_clip_vision("vit-g"), adapter.name)


def test_batch_unfold_gives_latent_i_image_i(flux_model, inputs):
    adapter = xlabs_adapter("v1")
    both = torch.cat([image_embeds(5), image_embeds(6)])
    batch = comfy_forward(apply.apply_adapter(flux_model, adapter, apply.Embeds(both, torch.zeros_like(both)),
                                              unfold=True), inputs)
    for i, seed in enumerate((5, 6)):
        single = comfy_forward(apply.apply_adapter(flux_model, adapter, embeds_of(seed)), inputs)
        assert torch.allclose(batch[i], single[i], atol=1e-5, rtol=0)
    assert (batch[0] - batch[1]).abs().max() > MIN_EFFECT


# --------------------------------------------------------------------------------------------------
# Weight curves (IPAdapter Weight Curve) on Flux
# --------------------------------------------------------------------------------------------------
def test_weight_curve_multiplies_the_weight_per_call(flux_model, inputs):
    from ipadapter_next.ipadapter import curves

    adapter = xlabs_adapter("v1")
    sampling = flux_model.get_model_object("model_sampling")
    early, late = sampling.percent_to_sigma(0.1), sampling.percent_to_sigma(0.9)
    fade = curves.WeightCurve(((0.0, 1.0), (1.0, 0.0)), "linear")  # 1 at the start, 0 at the end
    curved = apply.apply_adapter(flux_model, adapter, embeds_of(5), weight=1.0, weight_curve=fade)
    for sigma in (early, late):
        at = {"sigmas": torch.tensor([sigma])}
        m = curves.bind_curve(fade, sampling).at(sigma)
        same = apply.apply_adapter(flux_model, adapter, embeds_of(5), weight=m)
        assert 0.0 < m < 1.0
        assert torch.allclose(comfy_forward(curved, inputs, at), comfy_forward(same, inputs, at), atol=1e-5, rtol=0)
    flat = apply.apply_adapter(flux_model, adapter, embeds_of(5), weight_curve=curves.WeightCurve(((0.0, 1.0),)))
    assert torch.equal(comfy_forward(flat, inputs), comfy_forward(apply.apply_adapter(flux_model, adapter, embeds_of(5)), inputs))
    window = curves.WeightCurve(((0.0, 0.0), (0.5, 1.0)), "step")  # off, then on from half way: start_at 0.5
    stepped = apply.apply_adapter(flux_model, adapter, embeds_of(5), weight_curve=window)
    gated = apply.apply_adapter(flux_model, adapter, embeds_of(5), start_at=0.5)
    for sigma in (early, late):
        at = {"sigmas": torch.tensor([sigma])}
        assert torch.equal(comfy_forward(stepped, inputs, at), comfy_forward(gated, inputs, at))


def test_fooocus_joint_mode_is_refused_on_flux(flux_model):
    with pytest.raises(ValueError, match="attention_mode 'joint'.*Flux.*'decoupled'"):
        apply.apply_adapter(flux_model, xlabs_adapter("v1"), embeds_of(5), attention_mode="joint")


# --------------------------------------------------------------------------------------------------
# Masks on the latent's own token grid (also with Kontext reference latents in the image stream)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_reference", [False, True], ids=["latent", "kontext"])
def test_mask_lands_on_the_latent_grid_and_never_on_reference_tokens(flux_model, with_reference):
    # latent 8x12 -> a 4x6 token grid; a reference latent of 16x12 adds 8x6 = 48 tokens after them, so the
    # stream holds 72 tokens, which no aspect-ratio guess maps back to 4x6
    x = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(2))
    refs = [torch.randn(1, 16, 16, 12, generator=torch.Generator().manual_seed(3))] if with_reference else None
    left = torch.zeros(1, 8, 12)
    left[:, :, :6] = 1  # the left half of the picture
    adapter = xlabs_adapter("v1")
    plain = tiny_dit.block_output(flux_model, ("double_block", 0), x, refs)
    masked = apply.apply_adapter(flux_model, adapter, embeds_of(5), attn_mask=left, layer_weights={0: 1.0})
    # per token, at the first block (its input is the same in both runs)
    ip_term = (tiny_dit.block_output(masked, ("double_block", 0), x, refs) - plain).abs().amax(dim=-1)
    assert ip_term.shape[0] == 24 + (48 if with_reference else 0)
    grid = ip_term[:24].view(4, 6)
    assert (grid[:, :3] > 1e-3).all() and torch.equal(grid[:, 3:], torch.zeros(4, 3))
    if with_reference:
        assert torch.equal(ip_term[24:], torch.zeros(48))  # the reference's tokens get no image prompt
