"""ComfyUI's Redux (Apply Style Model with a Flux style model) and this pack's Flux IP-Adapters in one
sampling run, through ComfyUI's own node functions and sampler (``nodes.StyleModelApply``,
``nodes.common_ksampler``): Redux appends image tokens to the text conditioning, the IP-Adapter patches the
blocks (XLabs: double blocks; InstantX: double and single blocks); each must still act with the other present.

The tiny Redux is ComfyUI's own ``ReduxImageEncoder`` wrapped in ``comfy.sd.StyleModel`` (what Load Style
Model returns), built with the tiny SigLIP's width: ``comfy.sd.load_style_model`` always builds the full-size
encoder (1152 -> 12288 -> 4096, about 64M parameters), so a tiny file cannot go through the loader.
"""
from __future__ import annotations

import pytest
import torch

import comfy.ldm.flux.redux
import comfy.sd
import nodes

from harness import adapter_factory, tiny_dit, tiny_sd3
from harness.dims import TINY_FLUX, TINY_SD35
from harness.tiny_models import init_module
from harness.widths import TINY_WIDTHS
from ipadapter_next.ipadapter import adapter as adapter_mod
from ipadapter_next.ipadapter import apply, checkpoint
from ipadapter_next.ipadapter.files import split_sections

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def parts():
    model = tiny_dit.build_flux(seed=7)
    redux = comfy.ldm.flux.redux.ReduxImageEncoder(redux_dim=TINY_SD35.siglip_width,
                                                   txt_in_features=TINY_FLUX.context_in_dim)
    init_module(redux, 11)
    style_model = comfy.sd.StyleModel(redux)
    image = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(2))
    vision_output = tiny_sd3.build_tiny_siglip().encode_image(image)
    return model, style_model, vision_output


def ip_adapter(kind: str):
    """(adapter, embeds): XLabs v1 (double blocks) or InstantX (double and single blocks)."""
    if kind == "xlabs":
        sections = split_sections(adapter_factory.xlabs_flux_state_dict("v1", seed=1))
    else:
        sections = adapter_factory.instantx_flux_state_dict(seed=1)
    spec = checkpoint.detect(sections, source=f"{kind}.bin", widths=TINY_WIDTHS)
    embeds = torch.randn(1, spec.encoder.width, generator=torch.Generator().manual_seed(3))
    return adapter_mod.build_adapter(sections, spec, source=f"{kind}.bin"), apply.Embeds(embeds, torch.zeros_like(embeds))


def conditioning(seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 5, TINY_FLUX.context_in_dim, generator=g),
             {"pooled_output": torch.randn(1, TINY_FLUX.vec_in_dim, generator=g), "guidance": 3.5}]]


def sample(model, positive) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    (out,) = nodes.common_ksampler(model, 3, 2, 1.0, "euler", "simple", positive, conditioning(9), latent)
    return out["samples"]


@pytest.mark.parametrize("kind", ["xlabs", "instantx"])
def test_redux_and_an_ip_adapter_both_act_in_one_run(parts, kind):
    model, style_model, vision_output = parts
    adapter, embeds = ip_adapter(kind)
    text = conditioning(1)
    (redux,) = nodes.StyleModelApply().apply_stylemodel(text, style_model, vision_output, 1.0, "multiply")
    assert redux[0][0].shape[1] == 5 + vision_output.last_hidden_state.shape[1]  # Redux appended its tokens
    patched = apply.apply_adapter(model, adapter, embeds, weight=1.0)

    both = sample(patched, redux)
    assert torch.isfinite(both).all()
    assert (both - sample(model, redux)).abs().mean() > 1e-3  # the IP-Adapter acts with Redux present
    assert (both - sample(patched, text)).abs().mean() > 1e-3  # Redux acts with the IP-Adapter present
    # Weight 0 leaves the Redux run exactly as it was without the adapter.
    assert torch.equal(sample(apply.apply_adapter(model, adapter, embeds, weight=0.0), redux), sample(model, redux))
