"""The tiny fixture models: real ComfyUI classes, real topology (attn2 keys), loadable by ComfyUI's loaders."""
import comfy.clip_vision
import comfy.sd
import comfy.supported_models
import nodes
import pytest
import torch
from comfy.ldm.modules.attention import optimized_attention

from harness import tiny_models
from harness.dims import TINY_CLIP, TINY_UNET

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# comfyui-internals.md section 2: the keys ComfyUI emits at run time, in execution order.
SD15_KEYS = [
    ("input", 1, 0), ("input", 2, 0), ("input", 4, 0), ("input", 5, 0), ("input", 7, 0), ("input", 8, 0),
    ("middle", 0, 0),
    ("output", 3, 0), ("output", 4, 0), ("output", 5, 0), ("output", 6, 0), ("output", 7, 0), ("output", 8, 0),
    ("output", 9, 0), ("output", 10, 0), ("output", 11, 0),
]
SDXL_KEYS = [
    ("input", 4, 0), ("input", 4, 1),
    ("input", 5, 0), ("input", 5, 1),
    ("input", 7, 0), ("input", 7, 1), ("input", 7, 2), ("input", 7, 3), ("input", 7, 4),
    ("input", 7, 5), ("input", 7, 6), ("input", 7, 7), ("input", 7, 8), ("input", 7, 9),
    ("input", 8, 0), ("input", 8, 1), ("input", 8, 2), ("input", 8, 3), ("input", 8, 4),
    ("input", 8, 5), ("input", 8, 6), ("input", 8, 7), ("input", 8, 8), ("input", 8, 9),
    ("middle", 0, 0), ("middle", 0, 1), ("middle", 0, 2), ("middle", 0, 3), ("middle", 0, 4),
    ("middle", 0, 5), ("middle", 0, 6), ("middle", 0, 7), ("middle", 0, 8), ("middle", 0, 9),
    ("output", 0, 0), ("output", 0, 1), ("output", 0, 2), ("output", 0, 3), ("output", 0, 4),
    ("output", 0, 5), ("output", 0, 6), ("output", 0, 7), ("output", 0, 8), ("output", 0, 9),
    ("output", 1, 0), ("output", 1, 1), ("output", 1, 2), ("output", 1, 3), ("output", 1, 4),
    ("output", 1, 5), ("output", 1, 6), ("output", 1, 7), ("output", 1, 8), ("output", 1, 9),
    ("output", 2, 0), ("output", 2, 1), ("output", 2, 2), ("output", 2, 3), ("output", 2, 4),
    ("output", 2, 5), ("output", 2, 6), ("output", 2, 7), ("output", 2, 8), ("output", 2, 9),
    ("output", 3, 0), ("output", 3, 1),
    ("output", 4, 0), ("output", 4, 1),
    ("output", 5, 0), ("output", 5, 1),
]
EXPECTED_KEYS = {"sd15": SD15_KEYS, "sdxl": SDXL_KEYS}


def _conditioning(arch: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    extra = {}
    if arch == "sdxl":
        extra = {"pooled_output": torch.randn(1, 1280, generator=g), "width": 64, "height": 64,
                 "crop_w": 0, "crop_h": 0, "target_width": 64, "target_height": 64}
    return [[torch.randn(1, 77, TINY_UNET[arch].context_dim, generator=g), extra]]


def test_key_lists_have_the_documented_sizes():
    assert len(SD15_KEYS) == 16 and len(set(SD15_KEYS)) == 16
    assert len(SDXL_KEYS) == 70 and len(set(SDXL_KEYS)) == 70


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_attn2_keys_static(arch):
    model = tiny_models.build_unet(arch)
    assert tiny_models.attn2_keys(model) == EXPECTED_KEYS[arch]
    unet = model.get_model_object("diffusion_model")
    assert unet.model_channels == TINY_UNET[arch].model_channels
    assert unet.input_blocks[1 if arch == "sd15" else 4][1].transformer_blocks[0].attn2.to_k.weight.shape[1] == TINY_UNET[arch].context_dim
    assert next(unet.parameters()).dtype == torch.float32


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_every_key_is_patched_once_per_unet_call_in_a_real_ksampler_run(arch):
    model = tiny_models.build_unet(arch).clone()
    expected = EXPECTED_KEYS[arch]
    # Every real key plus keys that must never fire (the IPAdapter_plus ("middle", 1, i) bug, stray ids).
    bogus = [("middle", 1, j) for j in range(10)] + [("input", 0, 0), ("input", 3, 0), ("output", 12, 0), ("input", 1, 1)]
    calls = {key: 0 for key in expected + bogus}
    unet_calls = []

    def counting_patch(key):
        def patch(q, k, v, extra_options):
            calls[key] += 1
            return optimized_attention(q, k, v, extra_options["n_heads"])
        return patch

    for key in calls:
        model.set_model_attn2_replace(counting_patch(key), key[0], key[1], key[2])

    def unet_wrapper(apply_model, args):
        unet_calls.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(unet_wrapper)
    steps = 2 if arch == "sd15" else 1  # one SDXL UNet call already visits all 70 blocks
    out = nodes.common_ksampler(model, 7, steps, 5.0, "euler", "normal", _conditioning(arch, 1), _conditioning(arch, 2),
                                {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]
    assert torch.isfinite(out).all()
    assert len(unet_calls) == steps and all(sorted(c) == [0, 1] for c in unet_calls)  # cond + uncond batched
    assert {k: calls[k] for k in expected} == {k: len(unet_calls) for k in expected}
    assert {k: calls[k] for k in bogus} == {k: 0 for k in bogus}


def test_build_unet_is_deterministic_and_fully_initialised():
    a = tiny_models.build_unet("sd15", seed=3).get_model_object("diffusion_model").state_dict()
    b = tiny_models.build_unet("sd15", seed=3).get_model_object("diffusion_model").state_dict()
    c = tiny_models.build_unet("sd15", seed=4).get_model_object("diffusion_model").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert all(torch.isfinite(v).all() and v.abs().max() < 10 for v in a.values())


def test_registration_is_idempotent():
    tiny_models.register_all()
    tiny_models.register_all()
    models = comfy.supported_models.models
    assert models.count(tiny_models.TinySD15) == 1 and models.count(tiny_models.TinySDXL) == 1
    assert models.index(tiny_models.TinySD15) < models.index(comfy.supported_models.SD15)
    wrapper = comfy.clip_vision.load_clipvision_from_sd
    assert wrapper._tiny_original is not None and not hasattr(wrapper._tiny_original, "_tiny_original")


@pytest.mark.parametrize("name", ["vit-h", "vit-g", "vit-l-336"])
def test_tiny_clip_vision_outputs(name):
    dims = TINY_CLIP[name]
    clip = tiny_models.build_clip_vision(name)
    assert isinstance(clip, comfy.clip_vision.ClipVisionModel)
    out = clip.encode_image(torch.rand(2, 80, 60, 3))
    assert out["image_embeds"].shape == (2, dims.projection_dim)
    assert out["penultimate_hidden_states"].shape == (2, dims.tokens, dims.hidden_size)
    assert out["last_hidden_state"].shape == (2, dims.tokens, dims.hidden_size)
    assert out.image_embeds is out["image_embeds"]
    assert not torch.equal(out["penultimate_hidden_states"], out["last_hidden_state"])
    for key in ("image_embeds", "penultimate_hidden_states", "last_hidden_state"):
        assert torch.isfinite(out[key]).all() and out[key].dtype == torch.float32


def test_clip_vision_files_load_through_comfyui_loader_and_node(fixture_files):
    image = torch.rand(1, 64, 64, 3)
    cases = [(name, fixture_files.clip_vision[name], fixture_files.clip_vision_names[name]) for name in TINY_CLIP]
    cases.append(("vit-h", fixture_files.clip_vision_sub, "sub/model.safetensors"))
    for name, path, clip_name in cases:
        dims = TINY_CLIP[name]
        loaded = comfy.clip_vision.load(str(path))
        assert isinstance(loaded, comfy.clip_vision.ClipVisionModel), path
        assert loaded.image_size == dims.image_size
        out = loaded.encode_image(image)
        reference = tiny_models.build_clip_vision(name).encode_image(image)
        assert out["penultimate_hidden_states"].shape == (1, dims.tokens, dims.hidden_size)
        assert torch.equal(out["image_embeds"], reference["image_embeds"])  # the file holds the seeded weights
        (node_out,) = nodes.CLIPVisionLoader().load_clip(clip_name)
        assert node_out.encode_image(image)["image_embeds"].shape == (1, dims.projection_dim)


def test_non_tiny_state_dicts_still_go_to_comfyui():
    assert comfy.clip_vision.load_clipvision_from_sd({}) is None  # ComfyUI's answer for an unknown dict


def test_tiny_sd15_checkpoint_loads_with_comfyui_checkpoint_loader(fixture_files):
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(fixture_files.checkpoint_sd15), output_vae=True, output_clip=True,
        embedding_directory=None,
    )
    assert isinstance(model.model.model_config, tiny_models.TinySD15)
    assert tiny_models.attn2_keys(model) == SD15_KEYS
    (cond,) = nodes.CLIPTextEncode().encode(clip, "a photo of a cat")
    assert cond[0][0].shape == (1, 77, TINY_UNET["sd15"].context_dim)
    image = vae.decode(torch.randn(1, 4, 8, 8))
    assert image.shape[-3:] == (64, 64, 3)
    (node_model, node_clip, node_vae) = nodes.CheckpointLoaderSimple().load_checkpoint(fixture_files.checkpoint_sd15_name)[:3]
    assert isinstance(node_model.model.model_config, tiny_models.TinySD15)


def test_tiny_sdxl_checkpoint_gives_sdxl_shaped_conditioning(fixture_files):
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(fixture_files.checkpoint_sdxl_name)[:3]
    assert isinstance(model.model.model_config, tiny_models.TinySDXL)
    assert tiny_models.attn2_keys(model) == SDXL_KEYS
    (cond,) = nodes.CLIPTextEncode().encode(clip, "a photo of a cat")
    assert cond[0][0].shape == (1, 77, TINY_UNET["sdxl"].context_dim)
    assert cond[0][1]["pooled_output"].shape == (1, 1280)  # what SDXL's ADM embedding (2816 = 1280 + 6*256) needs
