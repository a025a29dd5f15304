"""InstantX FLUX.1-dev IP-Adapter on ComfyUI's own Flux model, checked against a direct implementation of
its formula written here on diffusers' ``FluxTransformer2DModel`` (same weights, ComfyUI's key map).

The oracle gives each diffusers attention a processor that runs diffusers' own Flux attention and adds
InstantX's term: ``w * Attn(q, RMSNorm(to_k_ip(tokens)), to_v_ip(tokens))`` per head (RMSNorm without weights,
eps 1e-5), with ``q`` the attention's normed query before RoPE; in a double block (image stream) the term goes
through the output projection's weight (it is added before ``to_out``), in a single block it is added to the
attention output of the whole sequence (before ``proj_out``). Tokens: LayerNorm(MLP(pooled SigLIP)).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from harness import adapter_factory, tiny_dit
from harness.dims import FULL_FLUX, INSTANTX_FLUX_TINY, TINY_FLUX
from harness.widths import TINY_WIDTHS
from ipadapter_next.ipadapter import adapter as adapter_mod
from ipadapter_next.ipadapter import apply, checkpoint, errors, flux, flux_instantx, flux_instantx_patch

ATOL = 1e-4
MIN_EFFECT = 100 * ATOL
POOLED = INSTANTX_FLUX_TINY[0]
DOUBLES, SINGLES = TINY_FLUX.depth, TINY_FLUX.depth_single_blocks

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def instantx_adapter(seed: int = 0) -> adapter_mod.Adapter:
    sections = adapter_factory.instantx_flux_state_dict(seed=seed)
    spec = checkpoint.detect(sections, source=f"instantx-{seed}.bin")
    return adapter_mod.build_adapter(sections, spec, source=f"instantx-{seed}.bin", dtype=torch.float32)


@pytest.fixture(scope="module")
def flux_model():
    return tiny_dit.build_flux(seed=5)


@pytest.fixture(scope="module")
def oracle(flux_model):
    return tiny_dit.diffusers_flux(flux_model)


@pytest.fixture(scope="module")
def inputs():
    return tiny_dit.packed_inputs()


def pooled(seed: int) -> torch.Tensor:
    return torch.randn(1, POOLED, generator=torch.Generator().manual_seed(seed))


def embeds_of(seed: int) -> apply.Embeds:
    cond = pooled(seed)
    return apply.Embeds(cond, torch.zeros_like(cond))


comfy_forward = tiny_dit.comfy_forward


# --------------------------------------------------------------------------------------------------
# The oracle: InstantX's formula, written out on diffusers' Flux attention
# --------------------------------------------------------------------------------------------------
def image_tokens(sections: dict, embeds: torch.Tensor) -> torch.Tensor:
    p = sections["image_proj"]
    h = F.linear(F.gelu(F.linear(embeds, p["proj.0.weight"], p["proj.0.bias"])), p["proj.2.weight"], p["proj.2.bias"])
    c = p["norm.weight"].shape[0]
    return F.layer_norm(h.reshape(embeds.shape[0], -1, c), (c,), p["norm.weight"], p["norm.bias"], eps=1e-5)


class InstantXOracleProcessor:
    """diffusers' Flux attention plus InstantX's term; ``terms`` = [(tokens, to_k_ip, to_v_ip, scale), ...]."""

    def __init__(self, terms, single: bool):
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        self.base = FluxAttnProcessor()
        self.terms = terms
        self.single = single

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        b, heads = hidden_states.shape[0], attn.heads
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (heads, -1))).transpose(1, 2)  # [B, H, L, D]
        ip = 0
        for tokens, wk, wv, scale in self.terms:
            k = F.linear(tokens, wk).unflatten(-1, (heads, -1)).transpose(1, 2).expand(b, -1, -1, -1)
            v = F.linear(tokens, wv).unflatten(-1, (heads, -1)).transpose(1, 2).expand(b, -1, -1, -1)
            k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + 1e-5)
            ip = ip + scale * F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        if self.single:
            return out + ip
        img, txt = out
        return img + F.linear(ip, attn.to_out[0].weight), txt


def oracle_forward(oracle, inputs, adapters=()) -> torch.Tensor:
    """``adapters``: ((sections, pooled embeds, {processor index: scale} or one scale), ...)."""
    model = copy.deepcopy(oracle)
    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    for n, block in enumerate(blocks):
        terms = []
        for sections, embeds, scales in adapters:
            scale = scales.get(n, 0.0) if isinstance(scales, dict) else scales
            if scale:
                ip = sections["ip_adapter"]
                terms.append((image_tokens(sections, embeds), ip[f"{n}.to_k_ip.weight"], ip[f"{n}.to_v_ip.weight"], scale))
        if terms:
            block.attn.set_processor(InstantXOracleProcessor(terms, single=n >= DOUBLES))
    with torch.no_grad():
        return model(hidden_states=inputs["img"], encoder_hidden_states=inputs["txt"], pooled_projections=inputs["y"],
                     timestep=inputs["t"], img_ids=inputs["img_ids"], txt_ids=inputs["txt_ids"],
                     guidance=inputs["guidance"]).sample


# --------------------------------------------------------------------------------------------------
# Detection and layouts
# --------------------------------------------------------------------------------------------------
def test_full_size_layout_is_detected_on_meta():
    sections = adapter_factory.instantx_flux_state_dict(scale="full", device="meta")
    assert len(sections["ip_adapter"]) == 2 * (FULL_FLUX.depth + FULL_FLUX.depth_single_blocks) == 114
    assert tuple(sections["image_proj"]["proj.2.weight"].shape) == (128 * 4096, 2304)
    spec = checkpoint.detect(sections, source="ip-adapter.bin")
    assert (spec.family, spec.arch, spec.tokens, spec.layer_count) == (flux_instantx.FAMILY, "flux", 128, 57)
    assert (spec.context_dim, spec.token_dim, spec.projection) == (4096, 4096, "faceid")
    assert (spec.encoder.model, spec.encoder.output, spec.encoder.width, spec.encoder.image_size) == (
        "SigLIP so400m-patch14-384 (pooled output)", "siglip_pooled", 1152, 384)
    layers = flux_instantx.build_layers(sections["ip_adapter"], lambda t: t)
    assert len(layers) == 57 and layers["56"].to_k_ip.bias is None
    assert tuple(layers["56"].to_v_ip.weight.shape) == (3072, 4096)


def test_the_three_dit_formats_are_told_apart():
    families = {
        checkpoint.detect(adapter_factory.instantx_flux_state_dict(scale="full", device="meta")).family,
        checkpoint.detect(adapter_factory.instantx_sd35_state_dict(scale="full", device="meta")).family,
        checkpoint.detect(adapter_factory.xlabs_flux_state_dict("v1", scale="full", device="meta")).family,
    }
    assert families == {flux_instantx.FAMILY, "SD3.5-Large-IP-Adapter", "flux-ip-adapter"}


def test_incomplete_files_are_named():
    sections = adapter_factory.instantx_flux_state_dict(device="meta")
    del sections["ip_adapter"]["2.to_v_ip.weight"]
    with pytest.raises(errors.UnknownAdapterError, match="processor 2 lacks to_k_ip or to_v_ip"):
        checkpoint.detect(sections, source="broken.bin")
    sections = adapter_factory.instantx_flux_state_dict(device="meta")
    del sections["image_proj"]["norm.bias"]
    with pytest.raises(errors.UnknownAdapterError, match="broken.bin.*missing norm.bias"):
        checkpoint.detect(sections, source="broken.bin")


def test_the_encoder_requirement_is_explained():
    from harness import tiny_sd3

    adapter = instantx_adapter()
    with pytest.raises(errors.EncoderMismatchError, match="attention-pooling head.*IPAdapter Embeds"):
        apply.encode_for(adapter, tiny_sd3.build_tiny_siglip(), torch.rand(1, 64, 64, 3))


# --------------------------------------------------------------------------------------------------
# Numbers: the patched ComfyUI model against the formula
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight", [0.6, 1.0])
def test_matches_the_formula(flux_model, oracle, inputs, weight):
    adapter = instantx_adapter()
    patched = apply.apply_adapter(flux_model, adapter, embeds_of(1), weight=weight)
    got = comfy_forward(patched, inputs)
    want = oracle_forward(oracle, inputs, [(adapter.sections, pooled(1), weight)])
    plain = oracle_forward(oracle, inputs)
    assert (want - plain).abs().max() > MIN_EFFECT
    torch.testing.assert_close(comfy_forward(flux_model, inputs), plain, atol=ATOL, rtol=0)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_weight_zero_is_bit_exact(flux_model, inputs):
    patched = apply.apply_adapter(flux_model, instantx_adapter(), embeds_of(1), weight=0.0)
    assert torch.equal(comfy_forward(patched, inputs), comfy_forward(flux_model, inputs))


def test_per_block_weights_reach_double_and_single_blocks(flux_model, oracle, inputs):
    adapter = instantx_adapter()
    parsed = flux.parse_any_layer_weights("double_1:0.8, single_1:1.5", "flux")
    assert parsed == {1: 0.8, ("single", 1): 1.5}
    patched = apply.apply_adapter(flux_model, adapter, embeds_of(2), weight=1.0, layer_weights=parsed)
    want = oracle_forward(oracle, inputs, [(adapter.sections, pooled(2), {1: 0.8, DOUBLES + 1: 1.5})])
    torch.testing.assert_close(comfy_forward(patched, inputs), want, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="single_5 is out of range: this Flux model has single blocks 0-1"):
        apply.apply_adapter(flux_model, adapter, embeds_of(2), layer_weights={("single", 5): 1.0})


def test_stacked_adapters_add_their_terms(flux_model, oracle, inputs):
    a, b = instantx_adapter(0), instantx_adapter(1)
    patched = apply.apply_adapter(flux_model, a, embeds_of(3), weight=0.7)
    patched = apply.apply_adapter(patched, b, embeds_of(4), weight=1.2)
    want = oracle_forward(oracle, inputs, [(a.sections, pooled(3), 0.7), (b.sections, pooled(4), 1.2)])
    torch.testing.assert_close(comfy_forward(patched, inputs), want, atol=ATOL, rtol=0)


def test_every_block_is_patched_once_per_call_wrapping_foreign_patches(flux_model, inputs):
    calls = []

    def foreign(key):
        def patch(args, extra):
            calls.append(key)
            return extra["original_block"](args)
        return patch

    model = flux_model.clone()
    keys = [("double_block", i) for i in range(DOUBLES)] + [("single_block", j) for j in range(SINGLES)]
    for kind, i in keys:
        model.set_model_patch_replace(foreign((kind, i)), "dit", kind, i)
    patched = apply.apply_adapter(model, instantx_adapter(), embeds_of(1), weight=1.0)
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert all(isinstance(dit[k], flux_instantx_patch.InstantXBlockIP) for k in keys)
    comfy_forward(patched, inputs)
    assert calls == keys  # the foreign patch of every block ran once, in order
    assert not isinstance(model.model_options["transformer_options"]["patches_replace"]["dit"][keys[0]],
                          flux_instantx_patch.InstantXBlockIP)  # the input MODEL is untouched


def test_start_end_switch_the_adapter_by_sigma(flux_model, inputs):
    patched = apply.apply_adapter(flux_model, instantx_adapter(), embeds_of(1), weight=1.0, start_at=0.5, end_at=1.0)
    sampling = flux_model.get_model_object("model_sampling")
    early = float(sampling.percent_to_sigma(0.1))
    late = float(sampling.percent_to_sigma(0.8))
    plain = comfy_forward(flux_model, inputs, {"sigmas": torch.tensor([early])})
    assert torch.equal(comfy_forward(patched, inputs, {"sigmas": torch.tensor([early])}), plain)
    assert (comfy_forward(patched, inputs, {"sigmas": torch.tensor([late])}) - plain).abs().max() > MIN_EFFECT


def test_masks_limit_the_image_tokens(flux_model, inputs):
    adapter = instantx_adapter()
    doubles_only = {n: 1.0 for n in range(DOUBLES)}  # single blocks also touch text tokens, which masks keep
    plain = comfy_forward(flux_model, inputs)
    unmasked = comfy_forward(apply.apply_adapter(flux_model, adapter, embeds_of(1), layer_weights=doubles_only), inputs)
    ones = comfy_forward(apply.apply_adapter(flux_model, adapter, embeds_of(1), layer_weights=doubles_only,
                                             attn_mask=torch.ones(8, 12)), inputs)
    zeros = comfy_forward(apply.apply_adapter(flux_model, adapter, embeds_of(1), layer_weights=doubles_only,
                                              attn_mask=torch.zeros(8, 12)), inputs)
    torch.testing.assert_close(ones, unmasked, atol=1e-6, rtol=0)
    torch.testing.assert_close(zeros, plain, atol=1e-6, rtol=0)
    # With the single blocks: a left-half mask changes the image less than no mask.
    half = torch.zeros(8, 12)
    half[:, :6] = 1.0
    full = comfy_forward(apply.apply_adapter(flux_model, adapter, embeds_of(1)), inputs)
    masked = comfy_forward(apply.apply_adapter(flux_model, adapter, embeds_of(1), attn_mask=half), inputs)
    assert 0 < (masked - plain).abs().mean() < (full - plain).abs().mean()


def test_wrong_models_and_scalings_are_refused(flux_model):
    adapter = instantx_adapter()
    with pytest.raises(ValueError, match="'V only'"):
        apply.apply_adapter(flux_model, adapter, embeds_of(1), embeds_scaling="K+V")
    other = tiny_dit.build_flux(seed=1, dims=TINY_FLUX.__class__(**{**TINY_FLUX.__dict__, "depth_single_blocks": 3}))
    with pytest.raises(errors.ModelMismatchError, match="5 double and single blocks.*6 double and single blocks"):
        apply.apply_adapter(other, adapter, embeds_of(1))


def test_single_block_keys_are_refused_for_xlabs(flux_model):
    sections = adapter_factory.xlabs_flux_state_dict("v1")
    from ipadapter_next.ipadapter.files import split_sections

    spec = checkpoint.detect(split_sections(sections), source="xlabs.safetensors", widths=TINY_WIDTHS)
    xlabs = adapter_mod.build_adapter(split_sections(sections), spec, source="xlabs.safetensors")
    embeds = apply.Embeds(torch.ones(1, spec.encoder.width), torch.zeros(1, spec.encoder.width))
    with pytest.raises(ValueError, match="single_1: this adapter has no single-block layers"):
        apply.apply_adapter(flux_model, xlabs, embeds, layer_weights=flux.parse_any_layer_weights("single_1:1", "flux"))


@pytest.mark.parametrize("node", ["IPAdapterUnifiedLoader", "IPAdapterUnifiedLoaderFaceID"])
def test_unified_loaders_on_flux_and_sd3_say_what_to_load(flux_model, node):
    import nodes

    from harness import tiny_sd3

    loader = nodes.NODE_CLASS_MAPPINGS[node]()
    preset = "STANDARD (medium strength)" if node == "IPAdapterUnifiedLoader" else "FACEID"
    extra = {} if node == "IPAdapterUnifiedLoader" else {"lora_strength": 0.6, "provider": "CPU"}
    with pytest.raises(errors.PresetUnsupported, match="connected model is Flux.*IPAdapter Model Loader.*InstantX"):
        loader.load_models(flux_model, preset, **extra)
    with pytest.raises(errors.PresetUnsupported, match="connected model is SD3.5.*sigclip_vision_patch14_384"):
        loader.load_models(tiny_sd3.build_sd3(seed=0), preset, **extra)


def test_weight_curve_multiplies_the_weight_per_call(flux_model, inputs):
    from ipadapter_next.ipadapter import curves

    adapter = instantx_adapter()
    sampling = flux_model.get_model_object("model_sampling")
    fade = curves.WeightCurve(((0.0, 1.0), (1.0, 0.0)), "linear")  # 1 at the start, 0 at the end
    curved = apply.apply_adapter(flux_model, adapter, embeds_of(5), weight=1.0, weight_curve=fade)
    for percent in (0.1, 0.9):
        sigma = sampling.percent_to_sigma(percent)
        m = curves.bind_curve(fade, sampling).at(sigma)
        same = apply.apply_adapter(flux_model, adapter, embeds_of(5), weight=m)
        at = {"sigmas": torch.tensor([sigma])}
        assert 0.0 < m < 1.0
        torch.testing.assert_close(comfy_forward(curved, inputs, at), comfy_forward(same, inputs, at), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Experimental style / composition maps (ipadapter/block_maps.py) on the real patch
# --------------------------------------------------------------------------------------------------
def test_style_and_composition_maps_reach_double_and_single_blocks(flux_model, oracle, inputs):
    # tiny Flux: 3 double + 2 single blocks -> composition = doubles 0, 1; style = double 2 and single 1
    # (processor 3 + 1); strong style = double 2 and both singles
    adapter = instantx_adapter()
    for weight_type, scales in (("composition", {0: 0.7, 1: 0.7}), ("style transfer", {2: 0.7, DOUBLES + 1: 0.7}),
                                ("strong style transfer", {2: 0.7, DOUBLES: 0.7, DOUBLES + 1: 0.7})):
        patched = apply.apply_adapter(flux_model, adapter, embeds_of(2), weight=0.7, weight_type=weight_type)
        want = oracle_forward(oracle, inputs, [(adapter.sections, pooled(2), scales)])
        torch.testing.assert_close(comfy_forward(patched, inputs), want, atol=ATOL, rtol=0)


def test_style_and_composition_node_on_instantx_embeds(flux_model, oracle, inputs):
    adapter = instantx_adapter()
    patched = apply.apply_style_composition(flux_model, adapter, embeds_of(2), embeds_of(3), weight_style=0.9,
                                            weight_composition=0.5)
    want = oracle_forward(oracle, inputs, [(adapter.sections, pooled(2), {2: 0.9, DOUBLES + 1: 0.9}),
                                           (adapter.sections, pooled(3), {0: 0.5, 1: 0.5})])
    torch.testing.assert_close(comfy_forward(patched, inputs), want, atol=ATOL, rtol=0)


def test_mask_on_single_blocks_uses_the_latent_grid_with_reference_latents(flux_model):
    # latent 8x12 -> 4x6 image tokens, a Kontext reference of 16x12 -> 48 more; single blocks hold the 5 text
    # tokens first. The InstantX term enters before the block's per-token output projection, so a token
    # whose term is masked out leaves the block exactly as without the adapter.
    x = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(2))
    refs = [torch.randn(1, 16, 16, 12, generator=torch.Generator().manual_seed(3))]
    left = torch.zeros(1, 8, 12)
    left[:, :, :6] = 1
    block = ("single_block", 0)
    plain = tiny_dit.block_output(flux_model, block, x, refs)
    masked = apply.apply_adapter(flux_model, instantx_adapter(), embeds_of(1), attn_mask=left,
                                 layer_weights={("single", 0): 1.0})
    ip_term = (tiny_dit.block_output(masked, block, x, refs) - plain).abs().amax(dim=-1)
    assert ip_term.shape[0] == 5 + 24 + 48
    grid = ip_term[5:29].view(4, 6)
    assert (grid[:, :3] > 1e-4).all() and torch.equal(grid[:, 3:], torch.zeros(4, 3))
    assert torch.equal(ip_term[29:], torch.zeros(48))
