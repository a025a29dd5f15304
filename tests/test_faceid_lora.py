"""The FaceID LoRA: from the adapter file (``N.to_*_lora``) or a separate ``*_lora.safetensors``, applied
as ComfyUI weight patches on a clone, checked numerically against ``W + strength * up @ down`` on tiny
UNets and, for one attention layer, against the reference processor's LoRA forward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import comfy.lora

from harness import adapter_factory, tiny_models
from ipadapter_next.ipadapter import adapter as adapter_mod
from ipadapter_next.ipadapter import checkpoint, lora
from ipadapter_next.ipadapter.layers import layer_map


@pytest.fixture(scope="module", autouse=True)
def _single_thread(torch_single_thread):
    yield


def tiny(family: str) -> adapter_mod.Adapter:
    sections = adapter_factory.adapter_state_dict(family)
    return adapter_mod.build_adapter(sections, checkpoint.detect(sections, source=family), source=f"{family}.bin")


def merged(model, key: str, sd=None) -> torch.Tensor:
    """The weight ComfyUI computes for ``key`` from the clone's patches (what sampling will use)."""
    original = (sd if sd is not None else model.model.state_dict())[key].float().clone()
    return comfy.lora.calculate_weight(model.patches[key], original, key)


def expected_deltas(adapter, model, strength):
    """Checkpoint LoRA, mapped independently: processor order from the factory (diffusers names) and
    ComfyUI's own diffusers -> UNet key map."""
    import comfy.utils

    arch = adapter.spec.arch
    to_unet = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    ip = adapter.sections["ip_adapter"]
    out = {}
    for n, (name, _) in enumerate(adapter_factory.processor_layout(arch)):
        module = name.removesuffix(".processor")
        for proj, target in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0")):
            key = "diffusion_model." + to_unet[f"{module}.{target}.weight"]
            out[key] = strength * ip[f"{n}.{proj}_lora.up.weight"] @ ip[f"{n}.{proj}_lora.down.weight"]
    return out


@pytest.mark.parametrize("family", ["ip-adapter-faceid_sd15", "ip-adapter-faceid-plusv2_sdxl"])
def test_checkpoint_lora_patches_every_attention_projection_with_the_delta_at_strength(family):
    adapter = tiny(family)
    model = tiny_models.build_unet(adapter.spec.arch)
    patched = lora.apply_faceid_lora(model, adapter, 0.7)
    want = expected_deltas(adapter, model, 0.7)
    assert len(want) == 4 * 2 * len(layer_map(adapter.spec.arch))  # q, k, v, out of attn1 and attn2
    assert set(patched.patches) == set(want)
    assert not model.patches  # the input model is untouched
    sd = model.model.state_dict()
    for key, delta in want.items():
        torch.testing.assert_close(merged(patched, key, sd), sd[key].float() + delta, rtol=0, atol=1e-6)


def test_patched_attention_equals_projections_plus_lora_delta():
    """One cross-attention layer run by ComfyUI with the patches merged, against the reference
    LoRAIPAttnProcessor's text path: q = to_q(h) + s * up(down(h)) (same for k, v from the context),
    out = to_out(attn) + s * to_out_lora(attn)."""
    s = 0.45
    adapter = tiny("ip-adapter-faceid_sd15")
    model = tiny_models.build_unet("sd15")
    attn = model.model.diffusion_model.input_blocks[4][1].transformer_blocks[0].attn2  # processor N = 5
    original = {k: v.detach().clone() for k, v in attn.state_dict().items()}
    ip = adapter.sections["ip_adapter"]

    def lora_of(x, proj):
        return F.linear(F.linear(x, ip[f"5.{proj}_lora.down.weight"]), ip[f"5.{proj}_lora.up.weight"])

    g = torch.Generator().manual_seed(0)
    h, context = torch.randn(2, 16, original["to_q.weight"].shape[1], generator=g), torch.randn(2, 7, 64, generator=g)
    q = F.linear(h, original["to_q.weight"]) + s * lora_of(h, "to_q")
    k = F.linear(context, original["to_k.weight"]) + s * lora_of(context, "to_k")
    v = F.linear(context, original["to_v.weight"]) + s * lora_of(context, "to_v")
    heads = attn.heads
    split = lambda t: t.reshape(2, t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    a = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(q.shape)
    want = F.linear(a, original["to_out.0.weight"], original["to_out.0.bias"]) + s * lora_of(a, "to_out")

    patched = lora.apply_faceid_lora(model, adapter, s)
    patched.patch_model()
    try:
        with torch.no_grad():
            got = attn(h, context=context)
    finally:
        patched.unpatch_model()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(attn.to_q.weight, original["to_q.weight"])  # unpatched again


@pytest.mark.parametrize("family", ["ip-adapter-faceid_sd15", "ip-adapter-faceid-plusv2_sdxl"])
def test_separate_lora_file_gives_the_same_weights_as_the_checkpoint_lora(family, tmp_path):
    adapter = tiny(family)
    model = tiny_models.build_unet(adapter.spec.arch)
    path = adapter_factory.write_lora(family, tmp_path / f"{family}_lora.safetensors")
    from_file = lora.apply_lora_file(model, path, 0.6)
    from_ckpt = lora.apply_faceid_lora(model, adapter, 0.6)
    assert set(from_file.patches) == set(from_ckpt.patches)
    sd = model.model.state_dict()
    for key in from_ckpt.patches:
        torch.testing.assert_close(merged(from_file, key, sd), merged(from_ckpt, key, sd), rtol=0, atol=1e-6)


def test_fixture_tree_has_the_published_lora_files(fixture_files):
    names = {p.name for p in fixture_files.loras_dir.iterdir()}
    assert {"ip-adapter-faceid_sd15_lora.safetensors", "ip-adapter-faceid-plusv2_sdxl_lora.safetensors"} <= names


def test_strength_zero_returns_the_model_itself():
    model = tiny_models.build_unet("sd15")
    assert lora.apply_faceid_lora(model, tiny("ip-adapter-faceid_sd15"), 0.0) is model


def test_adapter_without_lora_and_lora_of_another_base_model_are_refused_clearly(tmp_path):
    sd15 = tiny_models.build_unet("sd15")
    with pytest.raises(lora.LoraError, match="carries no FaceID LoRA"):
        lora.apply_faceid_lora(sd15, tiny("ip-adapter-faceid-portrait_sd15"), 1.0)
    with pytest.raises(lora.LoraError, match="does not exist in an sdxl UNet|no attention layer|another base model"):
        lora.apply_faceid_lora(sd15, tiny("ip-adapter-faceid_sdxl"), 1.0)
    path = adapter_factory.write_lora("ip-adapter-faceid_sdxl", tmp_path / "x_lora.safetensors")
    with pytest.raises(lora.LoraError, match="matches no weight of the connected model|do not fit the connected model"):
        lora.apply_lora_file(sd15, path, 1.0)
