"""Weight curves: a multiplier of the adapter's weight read from the sigma of each UNet call."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import folder_paths

from harness import executor
from ipadapter_next.ipadapter import apply, attention, curves, weights
from support import features, sample, tiny_adapter, tiny_unet

pytestmark = pytest.mark.usefixtures("torch_single_thread")
PLUS = "ip-adapter-plus_sd15"


def patched(weight=0.8, curve=None, family=PLUS, **kw):
    ad = tiny_adapter(family)
    embeds = apply.Embeds(features(ad, seed=1), features(ad, seed=2))
    return apply.apply_adapter(tiny_unet("sd15"), ad, embeds, weight=weight, weight_curve=curve, **kw)


def progress_of(sigma: float) -> float:
    """The test's own inverse of ComfyUI's percent_to_sigma (bisection): the progress at ``sigma``."""
    ms = tiny_unet("sd15").get_model_object("model_sampling")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(ms.percent_to_sigma(mid)) > sigma else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("scaling", ["V only", "K+mean(V) w/ C penalty"])
@pytest.mark.parametrize("mode", ["decoupled", "joint"])
def test_a_constant_one_curve_is_bit_exact_with_no_curve(scaling, mode):
    one = curves.WeightCurve(((0.0, 1.0), (0.5, 1.0), (1.0, 1.0)), "linear")
    without = sample(patched(embeds_scaling=scaling, attention_mode=mode), "sd15", steps=4)
    with_curve = sample(patched(curve=one, embeds_scaling=scaling, attention_mode=mode), "sd15", steps=4)
    assert torch.equal(with_curve, without)


def test_a_step_curve_is_the_start_end_window_it_imitates():
    window = curves.WeightCurve(((0.0, 0.0), (0.3, 1.0), (0.7, 0.0)), "step")
    by_curve = sample(patched(curve=window), "sd15", steps=10)
    by_window = sample(patched(start_at=0.3, end_at=0.7), "sd15", steps=10)
    assert torch.equal(by_curve, by_window)
    assert not torch.equal(by_curve, sample(patched(), "sd15", steps=10))  # the window really cuts steps


@pytest.mark.parametrize("interpolation", ["linear", "ease"])
def test_the_scale_applied_at_each_step_is_the_curve_at_that_steps_sigma(interpolation, monkeypatch):
    curve = curves.WeightCurve(((0.0, 1.0), (0.4, 0.7), (1.0, 0.1)), interpolation)
    applied = {}
    original = attention.AdapterEntry.kv_at

    def record(self, site, q, cond_or_uncond, frames, m):
        applied.setdefault(SIGMA[0], set()).add(m)
        return original(self, site, q, cond_or_uncond, frames, m)

    SIGMA = [None]
    original_sigma = attention._current_sigma

    def current(extra):
        SIGMA[0] = original_sigma(extra)
        return SIGMA[0]

    monkeypatch.setattr(attention.AdapterEntry, "kv_at", record)
    monkeypatch.setattr(attention, "_current_sigma", current)
    sample(patched(curve=curve), "sd15", steps=8)
    assert len(applied) == 8
    for sigma, scales in applied.items():
        assert len(scales) == 1, "one multiplier for every layer of a UNet call"
        assert scales.pop() == pytest.approx(curve.at_progress(progress_of(sigma)), abs=2e-3)


@pytest.mark.parametrize("scaling", weights.EMBEDS_SCALING)
@pytest.mark.parametrize("mode", ["decoupled", "joint"])
def test_the_curve_multiplies_the_layer_weight_in_every_scaling_mode(scaling, mode):
    curve = curves.WeightCurve(((0.0, 1.5), (1.0, 0.2)), "linear")
    w = 0.7
    with_curve = patched(weight=w, curve=curve, embeds_scaling=scaling, attention_mode=mode)
    key = ("output", 4, 0)
    patch = attention.attn2_patches(with_curve)[key]
    ms = tiny_unet("sd15").get_model_object("model_sampling")
    sigma = float(ms.percent_to_sigma(0.35))
    m = patch.entries[0].multiplier(sigma)
    assert m == pytest.approx(curve.at_progress(0.35), abs=2e-3)
    plain = attention.attn2_patches(patched(weight=w * m, embeds_scaling=scaling, attention_mode=mode))[key]
    width = patch.entries[0].layers[str(patch.site.ckpt_index)].to_k_ip.weight.shape[0]
    q = torch.randn(4, 16, width, generator=torch.Generator().manual_seed(1))
    k = torch.randn(4, 77, width, generator=torch.Generator().manual_seed(2))
    options = {"n_heads": 8, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([sigma])}
    torch.testing.assert_close(patch(q, k, k.clone(), dict(options)), plain(q, k, k.clone(), dict(options)),
                               rtol=1e-5, atol=1e-6)


def test_keyframes_text_and_presets():
    assert curves.make_curve("custom", "linear", "1:0, 0:1\n0.5:0.25").keyframes == ((0, 1), (0.5, 0.25), (1, 0))
    fade = curves.make_curve("fade out")
    assert [fade.at_progress(p) for p in (0.0, 0.25, 1.0)] == [1.0, 0.75, 0.0]
    bell = curves.make_curve("bell", "ease")
    assert bell.at_progress(0.5) == 1.0 and bell.at_progress(0.0) == 0.0 and 0 < bell.at_progress(0.2) < 0.4
    step = curves.make_curve("custom", "step", "0:0.2, 0.5:1")
    assert [step.at_progress(p) for p in (0.0, 0.49, 0.5, 0.9)] == [0.2, 0.2, 1.0, 1.0]
    with pytest.raises(curves.CurveError, match=r"keyframe '0\.5' is not progress:multiplier"):
        curves.make_curve("custom", "linear", "0:1, 0.5")
    with pytest.raises(curves.CurveError, match="between 0 and 1"):
        curves.make_curve("custom", "linear", "0:1, 1.5:0")


def test_curve_node_feeds_the_advanced_node_in_a_headless_workflow(models_dir):
    from test_nodes import REFERENCE, ipadapter_graph

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(
        Path(folder_paths.get_input_directory()) / REFERENCE)
    prompt = ipadapter_graph(prefix="curve_none")
    plain = executor.run_prompt(prompt).raise_for_error().image_tensors()[0]
    prompt = ipadapter_graph(prefix="curve_fade")
    prompt["20"] = {"class_type": "IPAdapterWeightCurve",
                    "inputs": {"preset": "custom", "interpolation": "step", "keyframes": "0:1, 0.5:0"}}
    prompt["13"]["inputs"]["weight_curve"] = ["20", 0]
    faded = executor.run_prompt(prompt).raise_for_error().image_tensors()[0]
    prompt = ipadapter_graph(prefix="curve_window")
    prompt["13"]["inputs"]["end_at"] = 0.5
    window = executor.run_prompt(prompt).raise_for_error().image_tensors()[0]
    assert torch.equal(faded, window)  # the step curve 1 -> 0 at half-way is end_at 0.5
    assert not torch.equal(faded, plain)
