"""The attn2 patch on real ComfyUI sampling: where it fires, what it adds, how it stacks and wraps."""
from __future__ import annotations

import collections

import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention

from ipadapter_next.ipadapter import apply, attention, layers, weights
from support import features, sample, tiny_adapter, tiny_unet

BASIC = {"sd15": "ip-adapter_sd15", "sdxl": "ip-adapter_sdxl_vit-h"}
PLUS = {"sd15": "ip-adapter-plus_sd15", "sdxl": "ip-adapter-plus_sdxl_vit-h"}


def patched(arch, family=None, weight=1.0, seed=0, **kw):
    ad = tiny_adapter(family or BASIC[arch])
    embeds = apply.Embeds(features(ad, seed=seed), features(ad, seed=seed + 100))
    return apply.apply_adapter(tiny_unet(arch), ad, embeds, weight=weight, **kw)


@pytest.mark.parametrize("arch,count", [("sd15", 16), ("sdxl", 70)])
def test_every_cross_attention_site_fires_once_per_unet_call_with_its_own_layer(arch, count, monkeypatch):
    model = patched(arch, PLUS[arch])
    calls = collections.Counter()
    used = {}
    original = attention.AdapterEntry.kv_batch

    def spy(self, site, q, cond_or_uncond):
        calls[site.key] += 1
        used[site.key] = self.layers[str(site.ckpt_index)].to_k_ip.weight
        return original(self, site, q, cond_or_uncond)

    monkeypatch.setattr(attention.AdapterEntry, "kv_batch", spy)
    steps = 2  # euler: one UNet call per step (cond and uncond batched together)
    sample(model, arch, steps=steps)
    sites = layers.layer_map(arch)
    assert len(sites) == count
    assert set(calls) == {s.key for s in sites}, "every key ComfyUI emits (middle block included) is patched"
    assert all(n == steps for n in calls.values())
    assert ("middle", 0, 0) in calls
    # Each site used the checkpoint layer N that the layer map assigns to it, and no two sites share one.
    layers_used = {key: w.data_ptr() for key, w in used.items()}
    assert len(set(layers_used.values())) == count
    ad = tiny_adapter(PLUS[arch])
    for s in sites:
        assert used[s.key] is ad.model.ip_adapter[str(s.ckpt_index)].to_k_ip.weight


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_weight_zero_everywhere_is_bit_exact_with_the_unpatched_model(arch):
    base = sample(tiny_unet(arch), arch)
    zero = sample(patched(arch, weight=0.0), arch)
    assert torch.equal(base, zero)
    assert not torch.equal(base, sample(patched(arch, weight=1.0), arch))


def test_applying_leaves_the_input_model_unchanged():
    model = tiny_unet("sd15")
    before = sample(model, "sd15")
    once = patched("sd15")
    twice = apply.apply_adapter(once, tiny_adapter("ip-adapter-plus_sd15"),
                                apply.Embeds(features(tiny_adapter("ip-adapter-plus_sd15")),
                                             features(tiny_adapter("ip-adapter-plus_sd15"), seed=5)))
    assert attention.attn2_patches(model) == {}
    assert torch.equal(before, sample(model, "sd15"))
    # The first patched model keeps its own patch objects (one entry each) after the second apply.
    for key, patch in attention.attn2_patches(once).items():
        assert len(patch.entries) == 1
        assert attention.attn2_patches(twice)[key] is not patch
        assert len(attention.attn2_patches(twice)[key].entries) == 2


def _direct_call(patch, q, cond_or_uncond=(1, 0), sigma=1.0, heads=1, extra=None):
    k = torch.randn(q.shape[0], 77, q.shape[2], generator=torch.Generator().manual_seed(3))
    opts = {"n_heads": heads, "cond_or_uncond": list(cond_or_uncond), "sigmas": torch.tensor([sigma]),
            "original_shape": [q.shape[0], 4, 8, 8]}
    opts.update(extra or {})
    return patch(q, k, k.clone(), opts)


def _site_patch(model, key):
    return attention.attn2_patches(model)[key]


def test_two_adapters_add_up_and_each_keeps_its_weight():
    key = ("input", 7, 0)
    a = patched("sd15", weight=0.6)
    b_ad = tiny_adapter("ip-adapter-plus_sd15")
    b_embeds = apply.Embeds(features(b_ad, seed=7), features(b_ad, seed=8))
    ab = apply.apply_adapter(a, b_ad, b_embeds, weight=1.3)
    b = apply.apply_adapter(tiny_unet("sd15"), b_ad, b_embeds, weight=1.3)
    q = torch.randn(2, 16, 128, generator=torch.Generator().manual_seed(1))
    base = _direct_call(attention.IPAttention(_site_patch(a, key).site, (), None), q)
    only_a = _direct_call(_site_patch(a, key), q) - base
    only_b = _direct_call(_site_patch(b, key), q) - base
    both = _direct_call(_site_patch(ab, key), q) - base
    assert only_a.abs().max() > 1e-3 and only_b.abs().max() > 1e-3
    torch.testing.assert_close(both, only_a + only_b, rtol=0, atol=1e-6)


def test_a_foreign_patch_already_at_a_key_is_wrapped_and_still_called():
    calls = collections.Counter()

    def foreign(q, k, v, extra_options):
        calls[tuple(extra_options["block"]) + (extra_options["block_index"],)] += 1
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"]) * 0.5

    model = tiny_unet("sd15").clone()
    for site in layers.layer_map("sd15"):
        model.set_model_attn2_replace(foreign, site.key[0], site.key[1])  # a 2-tuple key, as many packs use
    foreign_only = sample(model, "sd15")
    calls.clear()
    ad = tiny_adapter("ip-adapter_sd15")
    stacked = apply.apply_adapter(model, ad, apply.Embeds(features(ad), features(ad, seed=4)), weight=0.0)
    assert torch.equal(sample(stacked, "sd15"), foreign_only)  # weight 0: exactly what the foreign patch gives
    assert set(calls) == {s.key for s in layers.layer_map("sd15")}


@pytest.mark.parametrize("cond_or_uncond", [(1, 0), (0,), (1, 0, 0), (0, 1, 2, 1)])
def test_cond_and_uncond_tokens_follow_cond_or_uncond_for_any_number_of_conds(cond_or_uncond):
    model = patched("sd15")
    key = ("output", 4, 0)
    patch = _site_patch(model, key)
    entry = patch.entries[0]
    per = 2
    q = torch.randn(per * len(cond_or_uncond), 16, 128, generator=torch.Generator().manual_seed(2))
    out = _direct_call(patch, q, cond_or_uncond) - _direct_call(attention.IPAttention(patch.site, (), None), q,
                                                                  cond_or_uncond)
    layer = entry.layers[str(patch.site.ckpt_index)]
    for i, c in enumerate(cond_or_uncond):
        tokens = entry.uncond if c == 1 else entry.cond
        rows = q[i * per:(i + 1) * per]
        kk = layer.to_k_ip(tokens).expand(per, -1, -1)
        vv = layer.to_v_ip(tokens).expand(per, -1, -1)
        expect = torch.nn.functional.scaled_dot_product_attention(rows[:, None], kk[:, None], vv[:, None])[:, 0]
        torch.testing.assert_close(out[i * per:(i + 1) * per], expect, rtol=1e-4, atol=1e-5)


def test_start_and_end_window_gates_by_sigma():
    model = patched("sd15", start_at=0.25, end_at=0.75)
    patch = _site_patch(model, ("input", 1, 0))
    entry = patch.entries[0]
    ms = tiny_unet("sd15").get_model_object("model_sampling")
    assert entry.sigma_start == pytest.approx(float(ms.percent_to_sigma(0.25)))
    assert entry.sigma_end == pytest.approx(float(ms.percent_to_sigma(0.75)))
    q = torch.randn(2, 64, 32)
    base = _direct_call(attention.IPAttention(patch.site, (), None), q, heads=8, sigma=1.0)
    inside = (entry.sigma_start + entry.sigma_end) / 2
    assert not torch.equal(_direct_call(patch, q, heads=8, sigma=inside), base)
    assert torch.equal(_direct_call(patch, q, heads=8, sigma=entry.sigma_start * 1.5), base)
    assert torch.equal(_direct_call(patch, q, heads=8, sigma=entry.sigma_end * 0.5), base)


def test_kv_are_computed_once_per_layer_and_device_not_per_call(monkeypatch):
    model = patched("sd15", family="ip-adapter-plus_sd15")
    patch = _site_patch(model, ("middle", 0, 0))
    counter = collections.Counter()
    linear = attention.F.linear

    def counting(*args, **kwargs):
        counter["linear"] += 1
        return linear(*args, **kwargs)

    monkeypatch.setattr(attention.F, "linear", counting)
    q = torch.randn(2, 1, 128)
    for _ in range(5):
        _direct_call(patch, q)
    assert counter["linear"] == 4  # K and V of cond and uncond, once


@pytest.mark.parametrize("scaling", weights.EMBEDS_SCALING)
def test_embeds_scaling_modes(scaling):
    w = 0.7
    model = patched("sd15", weight=w, embeds_scaling=scaling)
    patch = _site_patch(model, ("input", 4, 0))  # a 64-channel layer: the C penalty is 64 / 128 here
    entry = patch.entries[0]
    layer = entry.layers[str(patch.site.ckpt_index)]
    q = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(9))
    got = _direct_call(patch, q, cond_or_uncond=(0, 0), heads=8) - _direct_call(
        attention.IPAttention(patch.site, (), None), q, cond_or_uncond=(0, 0), heads=8)
    k, v = layer.to_k_ip(entry.cond), layer.to_v_ip(entry.cond)
    penalty = w * 64 / 128
    if scaling == "V only":
        k2, v2, post = k, v, w
    elif scaling == "K+V":
        k2, v2, post = k * w, v * w, 1.0
    elif scaling == "K+V w/ C penalty":
        k2, v2, post = k * penalty, v * penalty, 1.0
    else:
        mu = v.mean(dim=1, keepdim=True)
        k2, v2, post = k * penalty, (v - mu) + penalty * mu, 1.0
    expect = comfy_attention.optimized_attention(q, k2.expand(2, -1, -1), v2.expand(2, -1, -1), 8) * post
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("latent_hw", [(8, 8), (9, 13), (5, 16)])
def test_mask_is_resampled_to_every_block_grid_at_any_latent_size(latent_hw):
    h, w = latent_hw
    mask = torch.zeros(1, h * 8, w * 8)
    mask[:, :, : w * 4] = 1.0  # left half
    zero_mask = patched("sd15", attn_mask=torch.zeros(1, h * 8, w * 8))
    half = patched("sd15", attn_mask=mask)
    base = sample(tiny_unet("sd15"), "sd15", latent_hw=latent_hw)
    assert torch.equal(sample(zero_mask, "sd15", latent_hw=latent_hw), base)  # black everywhere: no effect at all
    full = sample(patched("sd15"), "sd15", latent_hw=latent_hw)
    masked = sample(half, "sd15", latent_hw=latent_hw)
    assert not torch.equal(masked, base) and not torch.equal(masked, full)


def test_unfold_gives_image_i_to_latent_i():
    ad = tiny_adapter("ip-adapter_sd15")
    two = features(ad, n=2, seed=11)
    neg = torch.zeros_like(two[:1])
    unfolded = apply.apply_adapter(tiny_unet("sd15"), ad, apply.Embeds(two, neg), unfold=True)
    first = apply.apply_adapter(tiny_unet("sd15"), ad, apply.Embeds(two[:1], neg))
    second = apply.apply_adapter(tiny_unet("sd15"), ad, apply.Embeds(two[1:], neg))
    batch = sample(unfolded, "sd15", batch=2)
    with_first, with_second = sample(first, "sd15", batch=2), sample(second, "sd15", batch=2)
    # Equal up to float reordering (the tiny random UNet amplifies it to ~1e-4 on values of ~100).
    torch.testing.assert_close(batch[0], with_first[0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(batch[1], with_second[1], rtol=1e-5, atol=1e-3)
    assert (with_first[1] - with_second[1]).abs().max() > 1.0  # the two references really differ


def test_patch_objects_survive_clone_by_identity_and_expose_their_weights_to_comfy():
    model = patched("sd15")
    clone = model.clone()
    for key, patch in attention.attn2_patches(model).items():
        assert attention.attn2_patches(clone)[key] is patch  # never deep-copied with its weights
        assert patch.to(torch.device("cpu")) is patch
    ad = tiny_adapter(BASIC["sd15"])
    assert ad.patcher in clone.model_patches_models()
