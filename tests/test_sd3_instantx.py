"""InstantX SD3.5-Large IP-Adapter on ComfyUI's own MMDiT, checked against diffusers 0.42.1.

A tiny SD3 MMDiT (ComfyUI's classes: 4 joint blocks of 256, RMS qk-norm) runs patched by ``apply_adapter``
through the joint-block patch point; the same weights run in diffusers' ``SD3Transformer2DModel`` (ComfyUI's
``mmdit_to_diffusers`` key map) with the same synthetic ip-adapter.bin loaded by diffusers' own SD3 loader
(``_load_ip_adapter_weights``: TimeResampler + ``SD3IPAdapterJointAttnProcessor2_0``). Outputs agree within
1e-4 (fp32) at two weights and two timesteps (the image tokens depend on the timestep).
"""
from __future__ import annotations

import copy

import pytest
import torch

from harness import adapter_factory, tiny_sd3
from harness.dims import FULL_SD35_LARGE, TINY_SD35
from ipadapter_next.ipadapter import adapter as adapter_mod
from ipadapter_next.ipadapter import apply, checkpoint, errors, sd3, sd3_patch

ATOL = 1e-4
MIN_EFFECT = 100 * ATOL

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def instantx(seed: int = 0) -> adapter_mod.Adapter:
    sections = adapter_factory.instantx_sd35_state_dict(seed=seed)
    spec = checkpoint.detect(sections, source="ip-adapter.bin")
    return adapter_mod.build_adapter(sections, spec, source="ip-adapter.bin", dtype=torch.float32)


@pytest.fixture(scope="module")
def sd3_model():
    return tiny_sd3.build_sd3(seed=1)


@pytest.fixture(scope="module")
def oracle(sd3_model):
    return tiny_sd3.diffusers_sd3(sd3_model)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(2, 16, 8, 12, generator=g), ctx=torch.randn(2, 5, TINY_SD35.context_dim, generator=g),
                y=torch.randn(2, TINY_SD35.pooled_dim, generator=g))


def features(seed: int) -> torch.Tensor:
    return torch.randn(1, TINY_SD35.siglip_tokens, TINY_SD35.siglip_width, generator=torch.Generator().manual_seed(seed))


def embeds_of(seed: int) -> apply.Embeds:
    f = features(seed)
    return apply.Embeds(f, torch.zeros_like(f))


def comfy_forward(model, inputs, t: float) -> torch.Tensor:
    dm = model.get_model_object("diffusion_model")
    options = copy.copy(model.model_options.get("transformer_options", {}))
    options["sigmas"] = torch.tensor([t / 1000.0])
    with torch.no_grad():
        return dm(inputs["x"], torch.tensor([t, t]), context=inputs["ctx"], y=inputs["y"], transformer_options=options)


def oracle_forward(oracle, inputs, t: float, feats=None, scale=None) -> torch.Tensor:
    model = copy.deepcopy(oracle)
    kwargs = None
    if feats is not None:
        model._load_ip_adapter_weights(adapter_factory.instantx_sd35_state_dict(seed=0), low_cpu_mem_usage=False)
        for proc in model.attn_processors.values():
            proc.scale = scale
        kwargs = {"ip_adapter_image_embeds": feats.expand(inputs["x"].shape[0], -1, -1)}
    with torch.no_grad():
        return model(hidden_states=inputs["x"], encoder_hidden_states=inputs["ctx"], pooled_projections=inputs["y"],
                     timestep=torch.tensor([t, t]), joint_attention_kwargs=kwargs).sample


def test_full_size_layout_on_meta():
    sections = adapter_factory.instantx_sd35_state_dict(scale="full", device="meta")
    spec = checkpoint.detect(sections, source="ip-adapter.bin")
    assert (spec.arch, spec.layer_count, spec.tokens, spec.token_dim) == ("sd3", 38, 64, 2432)
    assert (spec.encoder.model, spec.encoder.output, spec.encoder.width, spec.encoder.image_size) == (
        "SigLIP so400m-patch14-384", "penultimate_hidden_states", 1152, 384)
    resampler = sd3.build_resampler(sections["image_proj"])
    assert tuple(resampler.latents.shape) == (1, 64, 1280) and len(resampler.layers) == 4
    assert resampler.layers[0].heads == 20 and resampler.t_dim == 320
    layers = sd3.build_layers(sections["ip_adapter"], lambda t: t)
    assert len(layers) == 38 and tuple(layers["37"].norm_ip["linear"].weight.shape) == (2 * 2432, 1280)


def test_plain_models_agree(sd3_model, oracle, inputs):
    mine, ref = comfy_forward(sd3_model, inputs, 600.0), oracle_forward(oracle, inputs, 600.0)
    assert torch.allclose(mine, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("weight", [0.5, 1.2])
@pytest.mark.parametrize("t", [850.0, 300.0])
def test_matches_diffusers(sd3_model, oracle, inputs, weight, t):
    patched = apply.apply_adapter(sd3_model, instantx(), embeds_of(3), weight=weight)
    mine = comfy_forward(patched, inputs, t)
    ref = oracle_forward(oracle, inputs, t, features(3), weight)
    assert (mine - comfy_forward(sd3_model, inputs, t)).abs().max() > MIN_EFFECT
    assert torch.allclose(mine, ref, atol=ATOL, rtol=0), (mine - ref).abs().max()


def test_tokens_follow_the_timestep_and_are_cached_per_step(sd3_model, inputs):
    adapter = instantx()
    patched = apply.apply_adapter(sd3_model, adapter, embeds_of(3))
    entry = sd3_patch.dit_entries(patched)[0]
    comfy_forward(patched, inputs, 850.0)
    first = entry.kv(0, 0.85, inputs["x"])
    assert entry.kv(0, 0.85, inputs["x"]) is first  # same step: cached
    comfy_forward(patched, inputs, 300.0)
    assert not torch.equal(entry.kv(0, 0.3, inputs["x"])[0], first[0])  # another step: new tokens


def test_weight_zero_and_wrapping(sd3_model, inputs):
    plain = comfy_forward(sd3_model, inputs, 500.0)
    assert torch.equal(comfy_forward(apply.apply_adapter(sd3_model, instantx(), embeds_of(3), weight=0.0), inputs,
                                     500.0), plain)
    calls: dict = {}

    class Counting:
        def __init__(self, i):
            self.i = i

        def __call__(self, args, extra):
            calls[self.i] = calls.get(self.i, 0) + 1
            return extra["original_block"](args)

        def __deepcopy__(self, memo):
            return self

    foreign = sd3_model.clone()
    for i in range(TINY_SD35.depth):
        foreign.set_model_patch_replace(Counting(i), "dit", "double_block", i)
    wrapped = comfy_forward(apply.apply_adapter(foreign, instantx(), embeds_of(3)), inputs, 500.0)
    direct = comfy_forward(apply.apply_adapter(sd3_model, instantx(), embeds_of(3)), inputs, 500.0)
    assert calls == {i: 1 for i in range(TINY_SD35.depth)} and torch.equal(wrapped, direct)


def test_per_block_weights_match_diffusers_per_block_scales(sd3_model, oracle, inputs):
    patched = apply.apply_adapter(sd3_model, instantx(), embeds_of(3), layer_weights={1: 1.0, 3: 0.5})
    model = copy.deepcopy(oracle)
    model._load_ip_adapter_weights(adapter_factory.instantx_sd35_state_dict(seed=0), low_cpu_mem_usage=False)
    for i, block in enumerate(model.transformer_blocks):
        block.attn.processor.scale = {1: 1.0, 3: 0.5}.get(i, 0.0)
    with torch.no_grad():
        ref = model(hidden_states=inputs["x"], encoder_hidden_states=inputs["ctx"], pooled_projections=inputs["y"],
                    timestep=torch.tensor([400.0, 400.0]),
                    joint_attention_kwargs={"ip_adapter_image_embeds": features(3).expand(2, -1, -1)}).sample
    assert torch.allclose(comfy_forward(patched, inputs, 400.0), ref, atol=ATOL, rtol=0)


def test_start_end_and_clear_errors(sd3_model, inputs):
    adapter = instantx()
    late = apply.apply_adapter(sd3_model, adapter, embeds_of(3), start_at=0.6)
    assert torch.equal(comfy_forward(late, inputs, 900.0), comfy_forward(sd3_model, inputs, 900.0))
    with pytest.raises(ValueError, match="embeds_scaling 'K\\+V'"):
        apply.apply_adapter(sd3_model, adapter, embeds_of(3), embeds_scaling="K+V")
    from harness import tiny_dit

    with pytest.raises(errors.ModelMismatchError, match="not an SD3 MMDiT"):
        apply.apply_adapter(tiny_dit.build_flux(), adapter, embeds_of(3))


def test_siglip_encoder_path_and_a_clip_encoder_is_refused(sd3_model, inputs):
    from harness import tiny_models

    adapter = instantx()
    siglip = tiny_sd3.build_tiny_siglip()
    image = torch.rand(1, 100, 120, 3, generator=torch.Generator().manual_seed(2))
    embeds = apply.encode_for(adapter, siglip, image)
    assert embeds.cond.shape == (1, 729, TINY_SD35.siglip_width)  # penultimate hidden states, no CLS token
    assert not torch.equal(embeds.cond, embeds.uncond)  # the negative is the encoded black image
    patched = apply.apply_adapter(sd3_model, adapter, embeds, weight=0.7)
    assert (comfy_forward(patched, inputs, 500.0) - comfy_forward(sd3_model, inputs, 500.0)).abs().max() > MIN_EFFECT
    with pytest.raises(errors.EncoderMismatchError, match="needs SigLIP .* gives 40"):
        apply.encode_for(adapter, tiny_models.build_clip_vision("vit-h"), image)


def test_weight_curve_multiplies_the_weight_per_call(sd3_model, inputs):
    from ipadapter_next.ipadapter import curves

    adapter = instantx()
    sampling = sd3_model.get_model_object("model_sampling")
    fade = curves.WeightCurve(((0.0, 1.0), (1.0, 0.0)))  # 1 at the start, 0 at the end
    curved = apply.apply_adapter(sd3_model, adapter, embeds_of(3), weight=1.0, weight_curve=fade)
    for t in (900.0, 300.0):  # comfy_forward's sigma is t / 1000
        m = curves.bind_curve(fade, sampling).at(t / 1000.0)
        same = apply.apply_adapter(sd3_model, adapter, embeds_of(3), weight=m)
        assert 0.0 < m < 1.0
        assert torch.allclose(comfy_forward(curved, inputs, t), comfy_forward(same, inputs, t), atol=1e-5, rtol=0)
    flat = apply.apply_adapter(sd3_model, adapter, embeds_of(3), weight_curve=curves.WeightCurve(((0.0, 1.0),)))
    assert torch.equal(comfy_forward(flat, inputs, 500.0),
                       comfy_forward(apply.apply_adapter(sd3_model, adapter, embeds_of(3)), inputs, 500.0))
    off = apply.apply_adapter(sd3_model, adapter, embeds_of(3), weight_curve=curves.WeightCurve(((0.0, 0.0),)))
    assert torch.equal(comfy_forward(off, inputs, 500.0), comfy_forward(sd3_model, inputs, 500.0))


def test_joint_mode_says_it_is_not_available(sd3_model):
    with pytest.raises(ValueError, match="attention_mode 'joint'.*SD3.5"):
        apply.apply_adapter(sd3_model, instantx(), embeds_of(3), attention_mode="joint")


def test_masks_act_on_the_image_tokens_and_are_resampled_once(sd3_model, inputs):
    adapter = instantx()
    plain, full = comfy_forward(sd3_model, inputs, 500.0), comfy_forward(
        apply.apply_adapter(sd3_model, adapter, embeds_of(3)), inputs, 500.0)
    ones = apply.apply_adapter(sd3_model, adapter, embeds_of(3), attn_mask=torch.ones(32, 48))
    zeros = apply.apply_adapter(sd3_model, adapter, embeds_of(3), attn_mask=torch.zeros(32, 48))
    assert torch.allclose(comfy_forward(ones, inputs, 500.0), full, atol=1e-6)
    assert torch.equal(comfy_forward(zeros, inputs, 500.0), plain)
    left = torch.zeros(32, 48)
    left[:, :24] = 1
    half = apply.apply_adapter(sd3_model, adapter, embeds_of(3), attn_mask=left)
    out = comfy_forward(half, inputs, 500.0)
    assert (out - plain).abs().max() > 1e-3 and (out - full).abs().max() > 1e-3
    comfy_forward(half, inputs, 300.0)  # a second step, every block: the same resampled mask serves
    (entry,) = {e for patch in half.model_options["transformer_options"]["patches_replace"]["dit"].values()
                for e in patch.entries}
    assert len(entry._masks) == 1


def test_style_and_composition_maps_weigh_halves_of_the_joint_blocks(sd3_model, inputs):
    # tiny SD3.5: 4 joint blocks -> composition = blocks 0, 1; style = blocks 2, 3 (per-block weights are
    # checked against diffusers above, so equality with them pins the map on the real patch)
    adapter = instantx()
    for weight_type, blocks in (("composition", {0: 1.0, 1: 1.0}), ("style transfer", {2: 1.0, 3: 1.0})):
        mapped = apply.apply_adapter(sd3_model, adapter, embeds_of(3), weight=0.7, weight_type=weight_type)
        by_index = apply.apply_adapter(sd3_model, adapter, embeds_of(3), weight=0.7, layer_weights=blocks)
        assert torch.equal(comfy_forward(mapped, inputs, 400.0), comfy_forward(by_index, inputs, 400.0))
    both = apply.apply_style_composition(sd3_model, adapter, embeds_of(3), embeds_of(4), weight_style=0.9,
                                         weight_composition=0.5)
    style = apply.apply_adapter(sd3_model, adapter, embeds_of(3), weight=0.9, layer_weights={2: 1.0, 3: 1.0})
    stacked = apply.apply_adapter(style, adapter, embeds_of(4), weight=0.5, layer_weights={0: 1.0, 1: 1.0})
    assert torch.equal(comfy_forward(both, inputs, 400.0), comfy_forward(stacked, inputs, 400.0))
    assert not torch.equal(comfy_forward(both, inputs, 400.0),
                           comfy_forward(apply.apply_adapter(sd3_model, adapter, embeds_of(3)), inputs, 400.0))


def test_batch_unfold_gives_latent_i_image_i_as_diffusers_per_sample_embeds(sd3_model, oracle, inputs):
    # diffusers reads ip_adapter_image_embeds per sample: row i of the batch sees image i
    both = torch.cat([features(3), features(4)])
    batch = apply.apply_adapter(sd3_model, instantx(), apply.Embeds(both, torch.zeros_like(both)), weight=0.8,
                                unfold=True)
    ref = oracle_forward(oracle, inputs, 400.0, feats=both, scale=0.8)
    assert torch.allclose(comfy_forward(batch, inputs, 400.0), ref, atol=ATOL, rtol=0)
    for i, seed in enumerate((3, 4)):
        single = apply.apply_adapter(sd3_model, instantx(), embeds_of(seed), weight=0.8)
        assert torch.allclose(comfy_forward(batch, inputs, 400.0)[i], comfy_forward(single, inputs, 400.0)[i],
                              atol=1e-5, rtol=0)


def test_weight_schedule_gives_latent_i_weight_i(sd3_model, inputs):
    scheduled = apply.apply_adapter(sd3_model, instantx(), embeds_of(3), weight=[0.3, 1.2], unfold=True)
    out = comfy_forward(scheduled, inputs, 400.0)
    for i, w in enumerate((0.3, 1.2)):
        single = comfy_forward(apply.apply_adapter(sd3_model, instantx(), embeds_of(3), weight=w), inputs, 400.0)
        assert torch.allclose(out[i], single[i], atol=1e-5, rtol=0)
    # without unfold a schedule gives its first value to every latent, as on the UNet
    first = apply.apply_adapter(sd3_model, instantx(), embeds_of(3), weight=[0.3, 1.2])
    plain = apply.apply_adapter(sd3_model, instantx(), embeds_of(3), weight=0.3)
    assert torch.equal(comfy_forward(first, inputs, 400.0), comfy_forward(plain, inputs, 400.0))
