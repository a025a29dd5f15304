"""FaceID adapters: every family's tokens against the reference math, the FaceID nodes run headless with
supplied face embeddings, v1/v2, Kolors, and the errors a user meets.

Adapters are the fixture factory's synthetic checkpoints at tiny widths; the UNets, CLIP vision encoders
and sampler are ComfyUI's real ones at tiny sizes. The reference math below is written from the
reference implementation's definitions (research notes 1.1, 1.6), independently of the library.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import folder_paths

from harness import adapter_factory, dims, executor, tiny_models
from harness.widths import TINY_WIDTHS
from ipadapter_next.ipadapter import adapter as adapter_mod
from ipadapter_next.ipadapter import attention, checkpoint, encoders, faceid
from ipadapter_next.ipadapter.encode import encode_images, negative_embeds
from support import sample

E = dims.TINY_FACE_EMBED
PEN = "penultimate_hidden_states"
FACE_FILE = "test_faces.face.safetensors"
FACE_IMAGE = "faceid_reference.png"
FACEID_FAMILIES = [f for f in adapter_factory.FAMILIES if checkpoint.family(f).is_faceid]


@pytest.fixture(scope="module", autouse=True)
def _inputs(models_dir, torch_single_thread):
    """Face embeddings and a reference image in ComfyUI's input folder."""
    inputs = Path(folder_paths.get_input_directory())
    faceid.save_face_embeds(faceid.FaceEmbeds.from_tensor(torch.randn(1, E, generator=torch.Generator().manual_seed(5))),
                            inputs / FACE_FILE)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(inputs / FACE_IMAGE)


def tiny_faceid(family: str, source: str | None = None) -> adapter_mod.Adapter:
    """The factory's tiny checkpoint, detected with the tiny widths (so the tiny face width names a face)."""
    sections = adapter_factory.adapter_state_dict(family, scale="tiny")
    source = source or f"{family}.safetensors"
    return adapter_mod.build_adapter(sections, checkpoint.detect(sections, source=source, widths=TINY_WIDTHS),
                                     source=source)


def clip_for(adapter):
    return tiny_models.build_clip_vision(adapter.spec.encoder.key) if adapter.spec.encoder else None


def kolors_unet():
    """A tiny SDXL UNet with the encoder_hid_proj a Kolors UNet has (text width -> context width)."""
    unet = tiny_models.build_unet("sdxl")
    ctx = dims.TINY_UNET["sdxl"].context_dim
    proj = torch.nn.Linear(2 * ctx, ctx)
    torch.nn.init.normal_(proj.weight, std=(2 * ctx) ** -0.5)
    unet.model.diffusion_model.encoder_hid_proj = proj
    return unet


def entry_of(model) -> attention.AdapterEntry:
    patches = attention.attn2_patches(model)
    return next(iter(patches.values())).entries[0]


# --------------------------------------------------------------------------------------------------
# Reference math (tencent-ailab IP-Adapter definitions, functional form)
# --------------------------------------------------------------------------------------------------
def _lin(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _ln(x, sd, name):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"])


def ref_id_tokens(sd, face):
    """MLPProjModel (FaceID): Linear -> GELU -> Linear -> [B, T, C] -> LayerNorm."""
    c = sd["norm.weight"].shape[0]
    x = _lin(F.gelu(_lin(face, sd, "proj.0")), sd, "proj.2")
    return _ln(x.reshape(face.shape[0], -1, c), sd, "norm")


def ref_perceiver(sd, prefix, latents, x):
    """(Face)PerceiverResampler: norm1 on features, norm2 on latents, K/V over both, fp32 softmax."""
    x = _lin(x, sd, f"{prefix}proj_in")
    depth = len({k[len(prefix):].split(".")[1] for k in sd if k.startswith(f"{prefix}layers.")})
    for i in range(depth):
        a, f = f"{prefix}layers.{i}.0", f"{prefix}layers.{i}.1"
        xn, ln_lat = _ln(x, sd, f"{a}.norm1"), _ln(latents, sd, f"{a}.norm2")
        q = F.linear(ln_lat, sd[f"{a}.to_q.weight"])
        k, v = F.linear(torch.cat([xn, ln_lat], dim=1), sd[f"{a}.to_kv.weight"]).chunk(2, dim=-1)
        heads = q.shape[-1] // 64
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, 64).transpose(1, 2)  # noqa: E731
        s = 1 / math.sqrt(math.sqrt(64))
        w = torch.softmax((split(q) * s) @ (split(k) * s).transpose(-2, -1), dim=-1)
        out = (w @ split(v)).transpose(1, 2).reshape(q.shape)
        latents = F.linear(out, sd[f"{a}.to_out.weight"]) + latents
        ff = F.gelu(F.linear(_ln(latents, sd, f"{f}.0"), sd[f"{f}.1.weight"]))
        latents = F.linear(ff, sd[f"{f}.3.weight"]) + latents
    return _ln(_lin(latents, sd, f"{prefix}proj_out"), sd, f"{prefix}norm_out")


def ref_plus(sd, face, clip, shortcut, scale):
    ids = ref_id_tokens(sd, face)
    out = ref_perceiver(sd, "perceiver_resampler.", ids, clip)
    return ids + scale * out if shortcut else out


# --------------------------------------------------------------------------------------------------
# Detection of every FaceID family from the factory's checkpoints
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FACEID_FAMILIES)
def test_every_faceid_family_is_detected_with_its_inputs(family):
    spec = tiny_faceid(family).spec
    layout = adapter_factory.layout(family)
    assert spec.is_faceid and spec.face_embed_dim == E
    assert spec.has_lora == layout.lora
    assert spec.face_embedding == ("embedding" if "unnorm" in family else "normed_embedding")
    assert (spec.encoder is not None) == (layout.projection == "faceid_plus")
    assert spec.is_kolors == family.startswith("Kolors")


# --------------------------------------------------------------------------------------------------
# Tokens == reference math
# --------------------------------------------------------------------------------------------------
CASES = {
    "faceid sd15": ("ip-adapter-faceid_sd15", 1, {}),
    "faceid sdxl": ("ip-adapter-faceid_sdxl", 1, {}),
    "portrait sd15, 3 faces": ("ip-adapter-faceid-portrait_sd15", 3, {}),
    "portrait sdxl": ("ip-adapter-faceid-portrait_sdxl", 2, {}),
    "portrait unnorm": ("ip-adapter-faceid-portrait_sdxl_unnorm", 2, {}),
    "plus v1": ("ip-adapter-faceid-plusv2_sd15", 1, {"faceid_version": "v1"}),
    "plus v2": ("ip-adapter-faceid-plusv2_sd15", 2, {"faceid_version": "v2", "weight_faceidv2": 1.7}),
    "plus v2 sdxl": ("ip-adapter-faceid-plusv2_sdxl", 1, {"weight_faceidv2": 0.6}),
    "kolors": ("Kolors-IP-Adapter-FaceID-Plus", 1, {"weight_kolors": 0.8, "weight_faceidv2": 1.3}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_projected_tokens_match_the_reference_math(case):
    family, n, options = CASES[case]
    adapter = tiny_faceid(family)
    sd = adapter.sections["image_proj"]
    spec = adapter.spec
    raw = torch.randn(n, E, generator=torch.Generator().manual_seed(11)) * 3  # ArcFace norms are ~20, not 1
    faces = faceid.FaceEmbeds(raw / raw.norm(dim=-1, keepdim=True), raw)
    crops = torch.rand(n, 96, 96, 3, generator=torch.Generator().manual_seed(12))
    model = kolors_unet() if spec.is_kolors else tiny_models.build_unet(spec.arch)
    clip_vision = clip_for(adapter)

    patched, face_image = faceid.apply_faceid(model, adapter, image=crops, face_embeds=faces, clip_vision=clip_vision,
                                              **options)
    entry = entry_of(patched)

    face = raw if spec.face_embedding == "embedding" else faces.normed
    zeros = torch.zeros(1, E)
    if spec.projection == "faceid":
        want, want_neg = ref_id_tokens(sd, face), ref_id_tokens(sd, zeros)
    elif spec.projection == "resampler":  # portrait unnorm: the raw embedding is the Resampler's single token
        latents = sd["latents"]
        want = ref_perceiver(sd, "", latents.expand(n, -1, -1), face[:, None])
        want_neg = ref_perceiver(sd, "", latents, zeros[:, None])
    else:
        clip = encode_images(clip_vision, crops, PEN)
        clip_neg = negative_embeds(clip_vision, PEN, clip)[:1]
        version = options.get("faceid_version", "auto")
        v2 = version == "v2" or (version == "auto" and "plusv2" in family) or spec.is_kolors
        scale = options.get("weight_faceidv2", 1.0)
        want, want_neg = ref_plus(sd, face, clip, v2, scale), ref_plus(sd, zeros, clip_neg, v2, scale)
        assert torch.equal(face_image, crops)
    if spec.is_kolors:
        proj = model.model.diffusion_model.encoder_hid_proj
        want, want_neg = (options["weight_kolors"] * F.linear(t, proj.weight, proj.bias) for t in (want, want_neg))

    assert entry.cond.shape == (n, spec.tokens, spec.context_dim)
    torch.testing.assert_close(entry.cond, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(entry.uncond, want_neg, rtol=0, atol=1e-5)


def test_plus_v1_and_v2_are_the_callers_choice_with_the_file_name_as_default():
    def tokens(name, version):
        adapter = tiny_faceid("ip-adapter-faceid-plusv2_sd15", source=name)
        model = tiny_models.build_unet("sd15")
        patched, _ = faceid.apply_faceid(model, adapter, image=torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)),
                                         face_embeds=faceid.FaceEmbeds.from_tensor(torch.ones(1, E)),
                                         clip_vision=clip_for(adapter), faceid_version=version, weight_faceidv2=2.0)
        return entry_of(patched).cond

    v1, v2 = tokens("x.safetensors", "v1"), tokens("x.safetensors", "v2")
    assert not torch.allclose(v1, v2)
    torch.testing.assert_close(tokens("ip-adapter-faceid-plusv2_sd15.bin", "auto from file name"), v2)
    torch.testing.assert_close(tokens("ip-adapter-faceid-plus_sd15.bin", "auto from file name"), v1)
    torch.testing.assert_close(tokens("ip-adapter-faceid-plusv2_sd15.bin", "v1"), v1)  # explicit beats the name


def test_combine_embeds_merges_faces_before_projection():
    adapter = tiny_faceid("ip-adapter-faceid_sd15")
    faces = faceid.FaceEmbeds.from_tensor(torch.randn(3, E, generator=torch.Generator().manual_seed(3)))
    patched, _ = faceid.apply_faceid(tiny_models.build_unet("sd15"), adapter, face_embeds=faces, combine="average")
    want = ref_id_tokens(adapter.sections["image_proj"], faces.normed.mean(0, keepdim=True))
    torch.testing.assert_close(entry_of(patched).cond, want, rtol=0, atol=1e-5)


def test_kolors_without_encoder_hid_proj_says_which_model_is_needed():
    adapter = tiny_faceid("Kolors-IP-Adapter-FaceID-Plus")
    with pytest.raises(faceid.FaceIDError, match="needs a Kolors model.*encoder_hid_proj"):
        faceid.apply_faceid(tiny_models.build_unet("sdxl"), adapter, image=torch.rand(1, 64, 64, 3),
                            face_embeds=faceid.FaceEmbeds.from_tensor(torch.ones(1, E)),
                            clip_vision=clip_for(adapter), weight_kolors=1.0)


@pytest.mark.parametrize("family", ["ip-adapter-faceid-plusv2_sd15", "ip-adapter-faceid-portrait_sdxl_unnorm",
                                    "Kolors-IP-Adapter-FaceID-Plus"])
def test_patched_model_samples_and_the_face_changes_the_result(family):
    adapter = tiny_faceid(family)
    model = kolors_unet() if adapter.spec.is_kolors else tiny_models.build_unet(adapter.spec.arch)
    kwargs = dict(image=torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2)), clip_vision=clip_for(adapter),
                  weight_kolors=1.0 if adapter.spec.is_kolors else None)
    a, _ = faceid.apply_faceid(model, adapter, face_embeds=faceid.FaceEmbeds.from_tensor(torch.randn(1, E) * 4), **kwargs)
    b, _ = faceid.apply_faceid(model, adapter, face_embeds=faceid.FaceEmbeds.from_tensor(-torch.randn(1, E) * 4), **kwargs)
    out_a, out_b = sample(a, adapter.spec.arch), sample(b, adapter.spec.arch)
    assert torch.isfinite(out_a).all()
    assert (out_a - out_b).abs().mean() > 1e-4


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
def test_faceid_adapter_without_faces_names_the_inputs_to_connect():
    with pytest.raises(faceid.FaceIDError, match="InsightFace Loader.*face_embeds"):
        faceid.apply_faceid(tiny_models.build_unet("sd15"), tiny_faceid("ip-adapter-faceid_sd15"), image=torch.rand(1, 64, 64, 3))


def test_faceid_plus_without_clip_vision_says_so():
    with pytest.raises(faceid.FaceIDError, match="connect clip_vision"):
        faceid.apply_faceid(tiny_models.build_unet("sd15"), tiny_faceid("ip-adapter-faceid-plusv2_sd15"),
                            image=torch.rand(1, 64, 64, 3), face_embeds=faceid.FaceEmbeds.from_tensor(torch.ones(1, E)))


def test_unnorm_portrait_refuses_normalised_only_embeds():
    faces = faceid.FaceEmbeds(torch.nn.functional.normalize(torch.randn(1, E), dim=-1))
    with pytest.raises(faceid.FaceIDError, match="unnormalised face embedding"):
        faceid.apply_faceid(tiny_models.build_unet("sdxl"), tiny_faceid("ip-adapter-faceid-portrait_sdxl_unnorm"),
                            face_embeds=faces)


def test_non_faceid_adapter_in_the_faceid_node_and_kolors_in_the_plain_node_are_refused():
    plus = adapter_mod.build_adapter(adapter_factory.adapter_state_dict("ip-adapter-plus_sd15"),
                                     checkpoint.detect(adapter_factory.adapter_state_dict("ip-adapter-plus_sd15", device="meta"),
                                                       widths=TINY_WIDTHS), source="ip-adapter-plus_sd15.safetensors")
    with pytest.raises(faceid.FaceIDError, match="not a FaceID adapter.*IPAdapter Advanced"):
        faceid.apply_faceid(tiny_models.build_unet("sd15"), plus, face_embeds=faceid.FaceEmbeds.from_tensor(torch.ones(1, E)))
    with pytest.raises(faceid.FaceIDError, match="IPAdapter FaceID Kolors node"):
        faceid.apply_faceid(kolors_unet(), tiny_faceid("Kolors-IP-Adapter-FaceID-Plus"),
                            face_embeds=faceid.FaceEmbeds.from_tensor(torch.ones(1, E)))


# --------------------------------------------------------------------------------------------------
# Face embeds files
# --------------------------------------------------------------------------------------------------
def test_face_embeds_round_trip_keeps_raw_and_normed(tmp_path):
    raw = torch.randn(2, E) * 7
    faces = faceid.FaceEmbeds.from_tensor(raw)
    torch.testing.assert_close(faces.normed.norm(dim=-1), torch.ones(2))
    back = faceid.load_face_embeds(faceid.save_face_embeds(faces, tmp_path / "f.face.safetensors"))
    torch.testing.assert_close(back.raw, raw)
    torch.testing.assert_close(back.normed, faces.normed)


# --------------------------------------------------------------------------------------------------
# The nodes, headless, on the fixture models tree
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_widths():
    """Let the loaders name the tiny stand-in encoders and face width (portrait-unnorm is told apart from
    SDXL Plus by its input being a face embedding)."""
    with encoders.widths_registered(TINY_WIDTHS):
        yield


def faceid_graph(ipadapter_file, *, ckpt="tiny_sd15.safetensors", node="IPAdapterFaceID", weight=1.0, lora=None,
                 clip_name="CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", prefix="faceid", extra=None):
    sdxl = "sdxl" in ckpt
    prompt = (executor.workflow_plain_sdxl(seed=3, ckpt_name=ckpt, filename_prefix=prefix) if sdxl
              else executor.workflow_plain_sd15(seed=3, ckpt_name=ckpt, filename_prefix=prefix))
    prompt["10"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ipadapter_file}}
    prompt["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": clip_name}}
    prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": FACE_IMAGE}}
    prompt["14"] = {"class_type": "IPAdapterFaceEmbedsLoad", "inputs": {"face_embeds": FACE_FILE}}
    model = ["1", 0]
    if lora is not None:
        prompt["15"] = {"class_type": "IPAdapterFaceIDLoRA", "inputs": {"model": model, "ipadapter": ["10", 0],
                                                                          "strength": lora}}
        model = ["15", 0]
    inputs = {"model": model, "ipadapter": ["10", 0], "image": ["12", 0], "weight": weight, "weight_faceidv2": 1.0,
              "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
              "embeds_scaling": "V only", "clip_vision": ["11", 0], "face_embeds": ["14", 0], **(extra or {})}
    if node == "IPAdapterFaceIDKolors":
        inputs["weight_kolors"] = 1.0
    prompt["13"] = {"class_type": node, "inputs": inputs}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    return prompt


def image_of(result):
    return result.raise_for_error().image_tensors()[0]


@pytest.mark.parametrize("ipadapter_file, ckpt, lora", [
    ("ip-adapter-faceid_sd15.bin", "tiny_sd15.safetensors", 0.6),
    ("ip-adapter-faceid-plusv2_sd15.safetensors", "tiny_sd15.safetensors", 0.6),
    ("ip-adapter-faceid-portrait_sd15.safetensors", "tiny_sd15.safetensors", None),
    ("ip-adapter-faceid-plusv2_sdxl.safetensors", "tiny_sdxl.safetensors", 0.6),
    ("ip-adapter-faceid_sdxl.safetensors", "tiny_sdxl.safetensors", 0.6),
    ("ip-adapter-faceid-portrait_sdxl.safetensors", "tiny_sdxl.safetensors", None),
    ("ip-adapter-faceid-portrait_sdxl_unnorm.safetensors", "tiny_sdxl.safetensors", None),
])
def test_faceid_node_runs_headless_with_supplied_face_embeds(ipadapter_file, ckpt, lora, tiny_widths):
    stem = Path(ipadapter_file).stem
    spec = adapter_mod.load_adapter(folder_paths.get_full_path("ipadapter", ipadapter_file)).spec
    assert spec.is_faceid and spec.family == checkpoint.family(stem).name
    plain = image_of(executor.run_prompt(faceid_graph(ipadapter_file, ckpt=ckpt, weight=0.0, prefix=f"{stem}_w0")))
    result = executor.run_prompt(faceid_graph(ipadapter_file, ckpt=ckpt, lora=lora, prefix=stem))
    image = image_of(result)
    assert image.shape == plain.shape and (image - plain).abs().mean() > 0.005


def test_faceid_batch_node_runs_with_the_old_key():
    image_of(executor.run_prompt(faceid_graph("ip-adapter-faceid_sd15.safetensors", node="IPAAdapterFaceIDBatch",
                                              prefix="faceid_batch")))


def test_kolors_node_on_a_model_without_encoder_hid_proj_fails_with_the_fix():
    result = executor.run_prompt(faceid_graph("Kolors-IP-Adapter-FaceID-Plus.safetensors", ckpt="tiny_sdxl.safetensors",
                                              node="IPAdapterFaceIDKolors", prefix="kolors",
                                              clip_name="clip-vit-large-patch14-336.safetensors"))
    assert not result.success
    assert "needs a Kolors model" in result.error["exception_message"]


def test_faceid_adapter_in_the_advanced_node_names_the_faceid_node():
    prompt = faceid_graph("ip-adapter-faceid_sd15.safetensors", prefix="adv_faceid")
    inputs = prompt["13"]["inputs"]
    for name in ("weight_faceidv2", "face_embeds"):
        del inputs[name]
    prompt["13"] = {"class_type": "IPAdapterAdvanced", "inputs": inputs}
    result = executor.run_prompt(prompt)
    assert not result.success
    message = result.error["exception_message"]
    assert "is a FaceID adapter" in message and "IPAdapter FaceID" in message


def test_face_embeds_save_node_writes_a_file_the_load_node_lists():
    from ipadapter_next.node_defs import faceid as nodes_faceid

    faces = faceid.FaceEmbeds.from_tensor(torch.randn(2, E))
    out = nodes_faceid.IPAdapterFaceEmbedsSave().save(faces, "saved_faces")
    path = Path(folder_paths.get_output_directory()) / out["ui"]["text"][0]
    assert path.name.endswith(faceid.FACE_EMBEDS_SUFFIX)
    torch.testing.assert_close(faceid.load_face_embeds(path).normed, faces.normed)
    assert FACE_FILE in nodes_faceid.IPAdapterFaceEmbedsLoad.INPUT_TYPES()["required"]["face_embeds"][0]


def test_faceid_node_takes_a_weight_curve_like_the_other_apply_nodes(tiny_widths):
    """A step curve (on from half way) gives the image of start_at 0.5: the curve reaches the FaceID patch."""
    file = "ip-adapter-faceid-plusv2_sd15.safetensors"
    curve = {"class_type": "IPAdapterWeightCurve",
             "inputs": {"preset": "custom", "interpolation": "step", "keyframes": "0:0, 0.5:1"}}

    def run(prefix, **extra):
        prompt = faceid_graph(file, prefix=prefix, extra=extra)
        if "weight_curve" in extra:
            prompt["16"] = curve
        return image_of(executor.run_prompt(prompt))

    by_curve = run("faceid_curve", weight_curve=["16", 0])
    by_window = run("faceid_window", start_at=0.5)
    everywhere = run("faceid_full")
    assert torch.equal(by_curve, by_window)
    assert not torch.equal(by_curve, everywhere)
