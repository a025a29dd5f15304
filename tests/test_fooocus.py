"""IPAdapter Fooocus: Fooocus's joint-attention image prompt, checked against a direct float64 implementation of its
formula on the tiny SDXL UNet (all 70 cross-attention sites), and through the node in a headless workflow."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import comfy.ldm.modules.attention as comfy_attention
import folder_paths

from harness import executor, fooocus_negative, tiny_models
from harness.dims import TINY_UNET
from ipadapter_next.ipadapter import apply, attention, fooocus, layers
from ipadapter_next.ipadapter.encode import encode_images
from support import conditioning, features, sample, tiny_adapter, tiny_unet

PLUS = "ip-adapter-plus_sdxl_vit-h"
pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def clip_vision():
    return tiny_models.build_clip_vision("vit-h")


def reference_image(seed: int, h: int = 40, w: int = 64) -> torch.Tensor:
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def fooocus_model(base, clip_vision, weight, stop=0.5, seed=1, negative=None, **kw):
    return fooocus.apply_fooocus(base, tiny_adapter(PLUS), clip_vision, reference_image(seed), weight=weight,
                                 stop=stop, negative=negative, **kw)


# --- the formula, written out once here (float64) ------------------------------------------------------------
def fooocus_progress_of(model, sigma: float) -> float:
    """Fooocus: progress = 1 - t/999, t the UNet's timestep = the nearest log-sigma index of the schedule."""
    log_sigmas = model.get_model_object("model_sampling").log_sigmas.double()
    t = int((log_sigmas - math.log(sigma)).abs().argmin())
    return 1.0 - t / 999.0


def joint_attention_reference(q, k, v, heads, prompts, cond_or_uncond):
    """softmax(q [k; K_1; K_2 ...]^T / sqrt(d)) [v; V_1; V_2 ...], each prompt scaled as Fooocus scales it.

    ``prompts``: (Wk, Wv, cond tokens [1, T, ctx], negative tokens [1, T, ctx], weight) with Wk, Wv of the layer.
    """
    q, k, v = q.double(), k.double(), v.double()
    per = q.shape[0] // len(cond_or_uncond)
    ks, vs = [k], [v]
    for wk, wv, cond, negative, weight in prompts:
        rows = torch.cat([(negative if c == 1 else cond).double().expand(per, -1, -1) for c in cond_or_uncond])
        k_ip, v_ip = rows @ wk.double().T, rows @ wv.double().T
        c = wk.shape[0]  # the layer's width: to_k_ip's output
        s = weight * c / MAX_WIDTH
        mean = v_ip.mean(dim=1, keepdim=True)
        ks.append(k_ip * s)
        vs.append((v_ip - mean) + mean * s)
    kk, vv = torch.cat(ks, dim=1), torch.cat(vs, dim=1)
    b, n, width = q.shape
    d = width // heads
    qh = q.view(b, n, heads, d).transpose(1, 2)
    kh = kk.view(b, -1, heads, d).transpose(1, 2)
    vh = vv.view(b, -1, heads, d).transpose(1, 2)
    attn = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (attn @ vh).transpose(1, 2).reshape(b, n, width)


# The widest layer of the tiny SDXL (1280 on the real one): Fooocus's C / 1280.
MAX_WIDTH = max(TINY_UNET["sdxl"].block_widths)


def reference_model(base, prompts_of_site, stop: float, attention=None):
    """The plain model with the test's own attn2 patch at all 70 sites: the formula above while progress < stop."""
    model = base.clone()

    def make(site):
        def patch(q, k, v, extra):
            sigma = float(extra["sigmas"].flatten()[0])
            prompts = prompts_of_site(site) if fooocus_progress_of(base, sigma) < stop else []
            out = joint_attention_reference(q, k, v, extra["n_heads"], prompts, tuple(extra["cond_or_uncond"]))
            return out.to(q.dtype)
        return patch

    for site in layers.layer_map("sdxl"):
        model.set_model_attn2_replace(make(site), *site.key)
    return model


def unet(model, sigma: float, cond_or_uncond, per: int = 2, seed: int = 0) -> torch.Tensor:
    """One real UNet call of ``model`` at ``sigma`` on rows laid out as ``cond_or_uncond`` x ``per`` latents."""
    g = torch.Generator().manual_seed(seed)
    rows = per * len(cond_or_uncond)
    x = torch.randn(rows, 4, 8, 8, generator=g)
    context = torch.randn(rows, 77, TINY_UNET["sdxl"].context_dim, generator=g)
    y = torch.randn(rows, 2816, generator=g)
    sigmas = torch.full((rows,), sigma)
    ms = model.get_model_object("model_sampling")
    options = dict(model.model_options.get("transformer_options", {}))
    options.update(cond_or_uncond=list(cond_or_uncond), sigmas=sigmas, uuids=[None] * len(cond_or_uncond))
    with torch.no_grad():
        return model.model.diffusion_model(x, timesteps=ms.timestep(sigmas).float(), context=context, y=y,
                                           transformer_options=options)


def sigma_at_progress(model, p: float) -> float:
    return float(model.get_model_object("model_sampling").percent_to_sigma(p))


def site_prompts(model):
    """site -> that site's (Wk, Wv, cond, negative, weight) for every Fooocus entry of ``model``."""
    def prompts(site):
        patch = attention.attn2_patches(model)[site.key]
        out = []
        for e in patch.entries:
            if e.joint:
                layer = e.layers[str(site.ckpt_index)]
                out.append((layer.to_k_ip.weight, layer.to_v_ip.weight, e.cond, e.uncond, e.weights[site.key].weight))
        return out
    return prompts


@pytest.mark.parametrize("weight", [0.6, 1.3, 0.0])
@pytest.mark.parametrize("cond_or_uncond", [(1, 0), (0, 1)])
def test_patched_unet_equals_the_direct_joint_formula_before_the_stop(clip_vision, weight, cond_or_uncond):
    base = tiny_unet("sdxl")
    negative = fooocus_negative.negative_tokens("tiny")
    model = fooocus_model(base, clip_vision, weight, stop=0.5, negative=negative)
    sigma = sigma_at_progress(base, 0.2)  # progress 0.2 < stop 0.5: acting
    assert fooocus_progress_of(base, sigma) < 0.5
    # Every one of the 70 sites, called directly: the patch is the formula to float32 precision.
    prompts = site_prompts(model)
    for site in layers.layer_map("sdxl"):
        width = prompts(site)[0][0].shape[0]
        g = torch.Generator().manual_seed(site.ckpt_index)
        q, k, v = (torch.randn(4, n, width, generator=g) for n in (16, 77, 77))
        options = {"n_heads": width // 64, "cond_or_uncond": list(cond_or_uncond), "sigmas": torch.tensor([sigma])}
        direct = attention.attn2_patches(model)[site.key](q, k, v, options)
        expect = joint_attention_reference(q, k, v, width // 64, prompts(site), cond_or_uncond)
        torch.testing.assert_close(direct.double(), expect, rtol=0, atol=1e-5)
    # The whole UNet: the same up to the float32 UNet's own rounding (1e-5 of the output's scale).
    got = unet(model, sigma, cond_or_uncond)
    expect = unet(reference_model(base, prompts, stop=0.5), sigma, cond_or_uncond)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5 * float(expect.abs().max()))
    # The prompt really acts (weight 0 included: its tokens dilute the text attention).
    assert (got - unet(base, sigma, cond_or_uncond)).abs().max() > 1e-3
    # The entries hold what the formula was fed: the negative file's tokens, every site at the weight.
    entry = attention.attn2_patches(model)[("middle", 0, 0)].entries[0]
    assert torch.equal(entry.uncond, negative)
    assert len(entry.weights) == 70 and {lw.weight for lw in entry.weights.values()} == {weight}


@pytest.mark.parametrize("weight", [0.6, 1.3])
def test_past_the_stop_the_model_is_bit_exact_with_the_plain_model(clip_vision, weight):
    base = tiny_unet("sdxl")
    model = fooocus_model(base, clip_vision, weight, stop=0.5, negative=fooocus_negative.negative_tokens("tiny"))
    sigma = sigma_at_progress(base, 0.8)
    assert fooocus_progress_of(base, sigma) >= 0.5
    assert torch.equal(unet(model, sigma, (1, 0)), unet(base, sigma, (1, 0)))


def test_weight_zero_does_not_depend_on_the_image_but_is_not_the_plain_model(clip_vision):
    base = tiny_unet("sdxl")
    sigma = sigma_at_progress(base, 0.1)
    one = unet(fooocus_model(base, clip_vision, 0.0, seed=1), sigma, (1, 0))
    other = unet(fooocus_model(base, clip_vision, 0.0, seed=2), sigma, (1, 0))
    torch.testing.assert_close(one, other, rtol=0, atol=1e-5)  # zero keys, centred values: the image is gone
    assert (one - unet(base, sigma, (1, 0))).abs().max() > 1e-3  # but the text attention is diluted


def test_two_chained_prompts_share_one_softmax_with_their_own_weights(clip_vision):
    base = tiny_unet("sdxl")
    first = fooocus_model(base, clip_vision, 0.6, seed=1)
    both = fooocus_model(first, clip_vision, 1.1, seed=2)
    entries = attention.attn2_patches(both)[("input", 4, 0)].entries
    assert [e.joint for e in entries] == [True, True]
    sigma = sigma_at_progress(base, 0.3)
    expect = unet(reference_model(base, site_prompts(both), stop=0.5), sigma, (1, 0))
    torch.testing.assert_close(unet(both, sigma, (1, 0)), expect, rtol=1e-5, atol=1e-5 * float(expect.abs().max()))


def test_the_negative_file_is_used_for_exactly_the_uncond_rows(clip_vision):
    base = tiny_unet("sdxl")
    model_a = fooocus_model(base, clip_vision, 0.6, negative=fooocus_negative.negative_tokens("tiny", seed=1))
    model_b = fooocus_model(base, clip_vision, 0.6, negative=fooocus_negative.negative_tokens("tiny", seed=2))
    key = ("output", 1, 3)
    q = torch.randn(6, 16, 128, generator=torch.Generator().manual_seed(4))
    k = torch.randn(6, 77, 128, generator=torch.Generator().manual_seed(5))
    options = {"n_heads": 2, "cond_or_uncond": [0, 1, 0], "sigmas": torch.tensor([sigma_at_progress(base, 0.1)])}
    a = attention.attn2_patches(model_a)[key](q, k, k.clone(), dict(options))
    b = attention.attn2_patches(model_b)[key](q, k, k.clone(), dict(options))
    uncond_rows = torch.tensor([False, False, True, True, False, False])
    assert torch.equal(a[~uncond_rows], b[~uncond_rows])
    assert (a[uncond_rows] - b[uncond_rows]).abs().min() > 0


def test_the_stop_switches_on_the_step_fooocus_switches(clip_vision, monkeypatch):
    base = tiny_unet("sdxl")
    stop = 0.45
    model = fooocus_model(base, clip_vision, 0.6, stop=stop)
    acting = {}  # sigma of each UNet call -> did the image prompt take part
    original_call, original_kv = attention.IPAttention.__call__, attention.AdapterEntry.kv_at
    current = []

    def watch(self, q, k, v, extra):
        current[:] = [float(extra["sigmas"].flatten()[0])]
        acting.setdefault(current[0], False)
        return original_call(self, q, k, v, extra)

    def spy(self, *args):
        acting[current[0]] = True
        return original_kv(self, *args)

    monkeypatch.setattr(attention.IPAttention, "__call__", watch)
    monkeypatch.setattr(attention.AdapterEntry, "kv_at", spy)
    sample(model, "sdxl", steps=12, latent_hw=(4, 4))
    assert len(acting) == 12  # euler: one UNet call per step
    expect = [fooocus_progress_of(base, s) < stop for s in acting]
    assert list(acting.values()) == expect
    assert 0 < expect.index(False) < 12  # it switches mid-way, once
    assert not any(expect[expect.index(False):])


def test_stretch_is_the_default_and_gives_fooocus_tokens(clip_vision):
    base = tiny_unet("sdxl")
    image = reference_image(3, h=30, w=90)  # 1:3: a centre crop would drop two thirds of it
    ad = tiny_adapter(PLUS)
    model = fooocus.apply_fooocus(base, ad, clip_vision, image, weight=0.6, stop=0.5)
    cropped = fooocus.apply_fooocus(base, ad, clip_vision, image, weight=0.6, stop=0.5, crop=True)
    tokens = attention.attn2_patches(model)[("input", 4, 0)].entries[0].cond
    # Fooocus: the whole image resized to 224 x 224 with LANCZOS, then CLIP's normalisation; no crop.
    pil = Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).resize((224, 224), Image.Resampling.LANCZOS)
    stretched = torch.from_numpy(np.asarray(pil).astype(np.float32) / 255)[None]
    expect = ad.project(encode_images(clip_vision, stretched, "penultimate_hidden_states"), dtype=torch.float32)
    torch.testing.assert_close(tokens, expect, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(attention.attn2_patches(cropped)[("input", 4, 0)].entries[0].cond, expect, atol=1e-3)


def test_a_negative_with_another_token_count_is_refused_naming_the_file(clip_vision, tmp_path):
    base = tiny_unet("sdxl")
    path = fooocus_negative.write_negative(tmp_path / "my_negative.safetensors", tokens=4)
    negative = fooocus.read_negative(path)
    assert negative.shape == (1, 4, TINY_UNET["sdxl"].context_dim)
    with pytest.raises(fooocus.NegativeFileError, match=r"my_negative.safetensors holds 4 tokens.*16 tokens"):
        fooocus_model(base, clip_vision, 0.6, negative=negative, negative_name="my_negative.safetensors")
    wrong_key = fooocus_negative.write_negative(tmp_path / "other.safetensors", key="tokens")
    with pytest.raises(fooocus.NegativeFileError, match=r"other.safetensors has no tensor 'data'"):
        fooocus.read_negative(wrong_key)


def test_full_size_fixture_has_the_real_key_and_shape(tmp_path):
    import safetensors.torch

    path = fooocus_negative.write_negative(tmp_path / fooocus_negative.FILENAME, scale="full")
    assert {k: tuple(v.shape) for k, v in safetensors.torch.load_file(str(path)).items()} == {"data": (1, 16, 2048)}


def test_stacks_with_a_decoupled_adapter_and_a_foreign_patch(clip_vision):
    def foreign(q, k, v, extra):
        return comfy_attention.optimized_attention(q, k, v, extra["n_heads"]) * 0.5

    base = tiny_unet("sdxl").clone()
    for site in layers.layer_map("sdxl"):
        base.set_model_attn2_replace(foreign, site.key[0], site.key[1])  # a 2-tuple key, as many packs use
    ad = tiny_adapter("ip-adapter_sdxl_vit-h")
    embeds = apply.Embeds(features(ad, seed=3), features(ad, seed=4))
    decoupled = apply.apply_adapter(base, ad, embeds, weight=0.8)
    both = fooocus_model(decoupled, clip_vision, 0.7)
    key = ("output", 0, 5)
    site = next(s for s in layers.layer_map("sdxl") if s.key == key)
    q = torch.randn(4, 16, 128, generator=torch.Generator().manual_seed(6))
    k = torch.randn(4, 77, 128, generator=torch.Generator().manual_seed(7))
    options = {"n_heads": 2, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([sigma_at_progress(base, 0.2)])}
    got = attention.attn2_patches(both)[key](q, k, k.clone(), dict(options))
    decoupled_part = attention.attn2_patches(decoupled)[key](q, k, k.clone(), dict(options)) - foreign(q, k, k, options)
    joint = 0.5 * joint_attention_reference(q, k, k, 2, site_prompts(both)(site), (1, 0))
    torch.testing.assert_close(got.double(), joint + decoupled_part.double(), rtol=0, atol=1e-5)


def fooocus_graph(negative_file="none", mode="Image Prompt", weight=0.6, stop_at=0.5, prefix="fooocus"):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(
        f"{folder_paths.get_input_directory()}/fooocus_reference.png")
    prompt = executor.workflow_plain_sdxl(seed=2, steps=3, filename_prefix=prefix)
    prompt["10"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": f"{PLUS}.safetensors"}}
    prompt["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": tiny_models.CLIP_VISION_FILENAMES["vit-h"]}}
    prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": "fooocus_reference.png"}}
    prompt["13"] = {"class_type": "IPAdapterFooocus", "inputs": {
        "model": ["1", 0], "ipadapter": ["10", 0], "image": ["12", 0], "mode": mode, "weight": weight,
        "stop_at": stop_at, "negative_file": negative_file, "clip_vision": ["11", 0]}}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    return prompt


def test_node_runs_headless_with_the_negative_file_and_changes_the_image(models_dir):
    fooocus_negative.write_negative(models_dir / "ipadapter" / fooocus_negative.FILENAME)
    plain = executor.run_prompt(executor.workflow_plain_sdxl(seed=2, steps=3, filename_prefix="fooocus_plain"))
    with_prompt = executor.run_prompt(fooocus_graph(fooocus_negative.FILENAME, prefix="fooocus_node"))
    (a,), (b,) = plain.raise_for_error().image_tensors(), with_prompt.raise_for_error().image_tensors()
    assert (a - b).abs().max() > 1e-3


def test_node_with_a_negative_of_another_token_count_fails_with_the_file_named(models_dir):
    fooocus_negative.write_negative(models_dir / "ipadapter" / "short_negative.safetensors", tokens=8)
    result = executor.run_prompt(fooocus_graph("short_negative.safetensors", prefix="fooocus_bad"))
    assert not result.success
    assert "short_negative.safetensors holds 8 tokens" in str(result.error)


def test_advanced_node_in_joint_mode_is_the_fooocus_node_without_its_stop(models_dir):
    fooocus_graph()  # writes the reference image
    node = fooocus_graph(mode="custom", weight=0.9, stop_at=1.0, prefix="fooocus_as_advanced")
    node["13"]["inputs"]["crop"] = "center crop"
    advanced = fooocus_graph(prefix="advanced_joint")
    advanced["13"] = {"class_type": "IPAdapterAdvanced", "inputs": {
        "model": ["1", 0], "ipadapter": ["10", 0], "image": ["12", 0], "weight": 0.9, "weight_type": "linear",
        "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": fooocus.FOOOCUS_SCALING,
        "clip_vision": ["11", 0], "attention_mode": "joint"}}
    (a,) = executor.run_prompt(node).raise_for_error().image_tensors()
    (b,) = executor.run_prompt(advanced).raise_for_error().image_tensors()
    # Equal up to 8-bit rounding: the default negative is projected with the first reference and reused
    # (alone) by the second run, which changes float rounding in the projection, not the formula.
    assert (a - b).abs().max() <= 1 / 255 + 1e-6
    decoupled = dict(advanced, **{"13": {**advanced["13"], "inputs": {**advanced["13"]["inputs"],
                                                                     "attention_mode": "decoupled"}}})
    decoupled["7"] = {**decoupled["7"], "inputs": {**decoupled["7"]["inputs"], "filename_prefix": "advanced_dec"}}
    (c,) = executor.run_prompt(decoupled).raise_for_error().image_tensors()
    assert (a - c).abs().mean() > 10 / 255  # joint is not the adapters' own formulation
