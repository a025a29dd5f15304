"""Training: the reference recipe on the pack's engine (tiny SD1.5 / SDXL topologies, real ComfyUI loaders)."""
from __future__ import annotations

import random

import pytest
import torch

from harness.widths import TINY_WIDTHS
from ipadapter_next.ipadapter import encoders
from ipadapter_next.ipadapter.adapter import load_adapter
from ipadapter_next.ipadapter.files import read_checkpoint
from ipadapter_next.ipadapter.layers import layer_map, spatial_transformers
from ipadapter_next.ipadapter.training import recipe, trainer
from training_support import dataset, make_trainer, pipeline


@pytest.fixture(scope="module", autouse=True)
def tiny_world(models_dir, torch_single_thread):
    with encoders.widths_registered(TINY_WIDTHS):
        yield


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_at_step_0_every_ip_layer_is_a_copy_of_its_text_layer(arch):
    model, _, _, clip_vision = pipeline(arch)
    adapter, _ = trainer.new_adapter(model, clip_vision, "basic")
    ip = adapter.sections()["ip_adapter"]
    blocks = {(name, i): st for name, i, _, st in spatial_transformers(model.get_model_object("diffusion_model"))}
    sites = layer_map(arch)
    assert len(ip) == 2 * len(sites)
    for site in sites:
        attn2 = blocks[site.key[:2]].transformer_blocks[site.key[2]].attn2
        assert torch.equal(ip[f"{site.ckpt_index}.to_k_ip.weight"], attn2.to_k.weight.float()), site
        assert torch.equal(ip[f"{site.ckpt_index}.to_v_ip.weight"], attn2.to_v.weight.float()), site


# Measured on the tiny topologies (lr 3e-3, batch 2, 2 samples, fixed evaluation noise and timesteps): see README.
OVERFIT_STEPS = {"sd15": 40, "sdxl": 40}


@pytest.mark.parametrize("family", ["basic", "plus"])
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_overfitting_a_tiny_batch_lowers_the_loss(arch, family):
    t = make_trainer(arch, family)
    batch = [(s, s.load()) for s in dataset().samples]
    before = t.evaluate(batch)
    losses = t.run(dataset(), OVERFIT_STEPS[arch])
    after = t.evaluate(batch)
    print(f"{arch} {family}: evaluation loss {before:.4f} -> {after:.4f} after {len(losses)} steps")
    assert after < 0.9 * before


def test_only_the_adapter_learns_and_the_model_is_left_as_it_was():
    t = make_trainer("sd15", "basic")
    model = pipeline("sd15")[0]
    unet_before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    flags = [p.requires_grad for p in model.model.parameters()]
    proj_before = {k: v.clone() for k, v in t.adapter.state_dict().items()}
    t.run(dataset(), 2)
    assert all(torch.equal(v, unet_before[k]) for k, v in model.model.diffusion_model.state_dict().items())
    assert [p.requires_grad for p in model.model.parameters()] == flags
    assert not model.model_options.get("transformer_options", {}).get("patches_replace")
    assert any(not torch.equal(v, proj_before[k]) for k, v in t.adapter.state_dict().items())


def test_drop_draws_match_the_reference_rates():
    r = recipe.Recipe()
    rng = random.Random(0)
    n = 200_000
    draws = [r.draw(rng.random()) for _ in range(n)]
    for kind in ("image", "text", "both"):
        assert abs(draws.count(kind) / n - 0.05) < 0.003, kind
    t = make_trainer("sd15", "basic")
    drawn = t.draw_drops(20_000)
    for kind in ("image", "text", "both"):
        assert abs(drawn.count(kind) / len(drawn) - 0.05) < 0.01, kind


@pytest.mark.parametrize("family", ["basic", "plus"])
def test_a_dropped_image_is_what_the_reference_feeds(family):
    """basic: the encoded embedding is zeroed; Plus: the encoder's output for an all-zero pixel input."""
    t = make_trainer("sd15", family, recipe=recipe.Recipe(drop_image=1.0, drop_text=0.0, drop_both=0.0))
    batch = [(s, s.load()) for s in dataset().samples]
    _, features, _, _ = t._inputs(batch)
    assert t.last_drops == ["image", "image"]
    cv = pipeline("sd15")[3]
    if family == "basic":
        assert torch.count_nonzero(features) == 0
    else:
        zero = cv.model(pixel_values=torch.zeros(1, 3, cv.image_size, cv.image_size), intermediate_output=-2)[1]
        assert torch.allclose(features, zero.float().expand_as(features))
        assert torch.count_nonzero(features) > 0


def test_fine_tuning_starts_from_exactly_the_files_weights(fixture_files):
    model, clip, vae, clip_vision = pipeline("sd15")
    base = load_adapter(fixture_files.ipadapter["ip-adapter_sd15.safetensors"])
    adapter, output = trainer.adapter_from_sections(base.sections, base.spec)
    file = read_checkpoint(fixture_files.ipadapter["ip-adapter_sd15.safetensors"])
    start = adapter.sections()
    for section in ("image_proj", "ip_adapter"):
        assert start[section].keys() == file[section].keys()
        for key, value in file[section].items():
            assert torch.equal(start[section][key], value.float()), key
    assert output == "image_embeds"


def test_a_family_no_loader_knows_for_this_model_is_refused_before_training():
    model, _, _, clip_vision = pipeline("sdxl")
    with pytest.raises(ValueError, match="full-face adapter for SDXL"):
        trainer.new_adapter(model, clip_vision, "full-face")


def test_latents_are_fresh_samples_of_the_vae_posterior_as_in_the_reference():
    # the reference takes vae.encode(x).latent_dist.sample() every step; ComfyUI's encode gives the mean
    from training_support import images

    from ipadapter_next.ipadapter.training.latents import encode_posterior

    from harness import tiny_models

    vae = tiny_models.build_sd_vae(seed=3)
    pixels = images(1)
    regulariser = vae.first_stage_model.regularization
    posterior = encode_posterior(vae, pixels)
    assert vae.first_stage_model.regularization is regulariser  # put back
    torch.testing.assert_close(posterior.mean, vae.encode(pixels).float(), rtol=0, atol=1e-6)
    assert posterior.std.shape == posterior.mean.shape and (posterior.std > 0).all()
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([posterior.sample(g) for _ in range(4000)])
    torch.testing.assert_close(draws.mean(0), posterior.mean, rtol=0, atol=float(5 * posterior.std.max() / 4000 ** 0.5))
    torch.testing.assert_close(draws.std(0), posterior.std, rtol=0.1, atol=0)
    # in training the same sample (its encoding cached) gets a new latent at every step
    t = make_trainer("sd15", "basic")
    t.vae = vae
    sample = dataset(1).samples[0]
    first, second = (t._inputs([(sample, sample.load())])[0] for _ in range(2))
    assert len(t._encoded) == 1 and not torch.equal(first, second)
    scale = t.model.model.latent_format.scale_factor  # the UNet reads scale * (sample - shift)
    assert (first - second).abs().max() < 8 * scale * posterior.std.max()
