"""Projection models (``ipadapter/projection.py``): checkpoint key layout and numerical parity.

The oracle is diffusers' own loader: a tiny original-format ``image_proj`` state dict goes through
``UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers`` (the converter ``load_ip_adapter``
uses, which renames keys, splits ``to_kv`` and builds diffusers' projection classes) and through
diffusers' ``MultiIPAdapterImageProjection`` (the wrapper the UNet calls). Our module loads the very same
state dict unchanged. Both see the same fp32 inputs and must agree to 1e-5.

The tiny layouts below are spelled out key by key from the checkpoint format (reference-math 1.1),
not taken from our modules, so a wrong key name or shape in the library fails here.
"""
from __future__ import annotations

import zlib

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import MultiIPAdapterImageProjection

from harness.dims import RESAMPLER_DIM_HEAD, TINY_CLIP, TINY_FACE_EMBED, TINY_UNET
from support import LAYOUTS
from ipadapter_next.ipadapter import projection

ATOL = 1e-5
BATCH = 2
CLIP_TOKENS = TINY_CLIP["vit-h"].tokens  # 257: CLS + 16x16 patches at 224 px
SD15_C = TINY_UNET["sd15"].context_dim  # 64  -> 1 perceiver head of 64
SDXL_C = TINY_UNET["sdxl"].context_dim  # 128 -> 2 perceiver heads of 64
VIT_H_HIDDEN = TINY_CLIP["vit-h"].hidden_size  # penultimate states width
VIT_H_PROJ = TINY_CLIP["vit-h"].projection_dim  # image_embeds width
VIT_G_PROJ = TINY_CLIP["vit-g"].projection_dim
FACE_E = TINY_FACE_EMBED


# ------------------------------------------------------------------------------------------------
# Checkpoint layouts (key -> shape), written from the original format
# ------------------------------------------------------------------------------------------------


def image_proj_layout(c: int, d: int, tokens: int) -> dict[str, tuple[int, ...]]:
    return {"proj.weight": (tokens * c, d), "proj.bias": (tokens * c,), "norm.weight": (c,), "norm.bias": (c,)}


def mlp_layout(c: int, d: int) -> dict[str, tuple[int, ...]]:
    return {
        "proj.0.weight": (d, d), "proj.0.bias": (d,),
        "proj.2.weight": (c, d), "proj.2.bias": (c,),
        "proj.3.weight": (c,), "proj.3.bias": (c,),
    }


def faceid_layout(c: int, e: int, tokens: int, hidden: int | None = None) -> dict[str, tuple[int, ...]]:
    hidden = 2 * e if hidden is None else hidden
    return {
        "proj.0.weight": (hidden, e), "proj.0.bias": (hidden,),
        "proj.2.weight": (tokens * c, hidden), "proj.2.bias": (tokens * c,),
        "norm.weight": (c,), "norm.bias": (c,),
    }


def perceiver_layout(
    dim: int, embed: int, out: int, heads: int, depth: int = 4, ff_mult: int = 4, prefix: str = ""
) -> dict[str, tuple[int, ...]]:
    inner = heads * RESAMPLER_DIM_HEAD
    layout = {
        f"{prefix}proj_in.weight": (dim, embed), f"{prefix}proj_in.bias": (dim,),
        f"{prefix}proj_out.weight": (out, dim), f"{prefix}proj_out.bias": (out,),
        f"{prefix}norm_out.weight": (out,), f"{prefix}norm_out.bias": (out,),
    }
    for i in range(depth):
        p = f"{prefix}layers.{i}."
        layout |= {
            f"{p}0.norm1.weight": (dim,), f"{p}0.norm1.bias": (dim,),  # LN of the image features
            f"{p}0.norm2.weight": (dim,), f"{p}0.norm2.bias": (dim,),  # LN of the latents
            f"{p}0.to_q.weight": (inner, dim),
            f"{p}0.to_kv.weight": (2 * inner, dim),  # rows [:inner] = K, [inner:] = V
            f"{p}0.to_out.weight": (dim, inner),
            f"{p}1.0.weight": (dim,), f"{p}1.0.bias": (dim,),  # feed-forward LN
            f"{p}1.1.weight": (ff_mult * dim, dim),
            f"{p}1.3.weight": (dim, ff_mult * dim),
        }
    return layout


def resampler_layout(dim: int, embed: int, out: int, heads: int, queries: int = 16) -> dict[str, tuple[int, ...]]:
    return {"latents": (1, queries, dim)} | perceiver_layout(dim, embed, out, heads)


def faceid_plus_layout(c: int, e: int, clip: int, tokens: int = 4) -> dict[str, tuple[int, ...]]:
    heads = c // RESAMPLER_DIM_HEAD
    return faceid_layout(c, e, tokens) | perceiver_layout(c, clip, c, heads, prefix="perceiver_resampler.")


def random_state_dict(layout: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """fp32 weights of a realistic scale; LayerNorm affines are random too, so norm1/norm2 swaps show."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in layout.items():
        t = torch.randn(shape, generator=gen)
        if len(shape) == 2:
            t = t / shape[1] ** 0.5  # keep activations O(1)
        elif key.endswith("weight"):
            t = 1.0 + 0.3 * t  # LayerNorm gain
        elif key.endswith("bias"):
            t = 0.3 * t
        sd[key] = t
    return sd


# ------------------------------------------------------------------------------------------------
# The diffusers oracle
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_unet() -> UNet2DConditionModel:
    """A tiny UNet only to call diffusers' converter on (it is a method of the UNet loader mixin)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=SD15_C,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def diffusers_tokens(unet: UNet2DConditionModel, kind: str, sd: dict, inputs: dict) -> torch.Tensor:
    """Project ``inputs`` the way a diffusers UNet does after ``load_ip_adapter``: tokens [B, n*T, C]."""
    layer = unet._convert_ip_adapter_image_proj_to_diffusers(dict(sd), low_cpu_mem_usage=False)
    wrapper = MultiIPAdapterImageProjection([layer]).eval()
    if kind == "faceid_plus":
        # diffusers reads the CLIP features and the v2 shortcut from attributes, not from forward().
        layer.clip_embeds = inputs["clip_embeds"].unsqueeze(1)  # [B, num_images=1, N, D]
        layer.shortcut = inputs["shortcut"]
        layer.shortcut_scale = inputs["scale"]
        embeds = inputs["id_embeds"].unsqueeze(1)  # [B, 1, E]
    elif inputs.get("per_face"):
        embeds = inputs["x"]  # portrait: [B, n_faces, E], each face its own "image"
    else:
        embeds = inputs["x"].unsqueeze(1)  # one image per batch entry
    with torch.no_grad():
        out = wrapper([embeds])[0]  # [B, n_images, T, C]
    return out.flatten(1, 2)


def our_tokens(module: torch.nn.Module, kind: str, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        if kind == "faceid_plus":
            return module(inputs["id_embeds"], inputs["clip_embeds"], shortcut=inputs["shortcut"], scale=inputs["scale"])
        return module(inputs["x"])


# ------------------------------------------------------------------------------------------------
# Parity cases: (kind, layout, inputs, expected output shape)
# ------------------------------------------------------------------------------------------------


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


PARITY_CASES = {
    # name: (kind, layout, inputs, output shape)
    "basic_sd15_4_tokens": (
        "image_proj", image_proj_layout(SD15_C, VIT_H_PROJ, 4),
        {"x": _randn(BATCH, VIT_H_PROJ, seed=1)}, (BATCH, 4, SD15_C),
    ),
    "basic_sdxl_vit-g_4_tokens": (
        "image_proj", image_proj_layout(SDXL_C, VIT_G_PROJ, 4),
        {"x": _randn(BATCH, VIT_G_PROJ, seed=2)}, (BATCH, 4, SDXL_C),
    ),
    "full_face_257_tokens": (
        "mlp", mlp_layout(SD15_C, VIT_H_HIDDEN),
        {"x": _randn(BATCH, CLIP_TOKENS, VIT_H_HIDDEN, seed=3)}, (BATCH, CLIP_TOKENS, SD15_C),
    ),
    "plus_sd15_16_queries": (
        "resampler", resampler_layout(SD15_C, VIT_H_HIDDEN, SD15_C, heads=1),
        {"x": _randn(BATCH, CLIP_TOKENS, VIT_H_HIDDEN, seed=4)}, (BATCH, 16, SD15_C),
    ),
    "plus_sdxl_dim_64_to_128": (  # internal width differs from the output width, as 1280 -> 2048
        "resampler", resampler_layout(64, VIT_H_HIDDEN, SDXL_C, heads=1),
        {"x": _randn(BATCH, CLIP_TOKENS, VIT_H_HIDDEN, seed=5)}, (BATCH, 16, SDXL_C),
    ),
    "plus_2_heads": (
        "resampler", resampler_layout(SDXL_C, VIT_H_HIDDEN, SDXL_C, heads=2),
        {"x": _randn(BATCH, CLIP_TOKENS, VIT_H_HIDDEN, seed=6)}, (BATCH, 16, SDXL_C),
    ),
    "kolors_plus_like_attention_narrower_than_dim": (  # Kolors: dim 2048, heads*64 = 768
        "resampler", resampler_layout(SDXL_C, TINY_CLIP["vit-l-336"].hidden_size, SDXL_C, heads=1),
        {"x": _randn(BATCH, TINY_CLIP["vit-l-336"].tokens, TINY_CLIP["vit-l-336"].hidden_size, seed=7)},
        (BATCH, 16, SDXL_C),
    ),
    "portrait_unnorm_resampler_over_3_faces": (
        "resampler", resampler_layout(64, FACE_E, SDXL_C, heads=1),
        {"x": _randn(BATCH, 3, FACE_E, seed=8)}, (BATCH, 16, SDXL_C),
    ),
    "faceid_4_tokens": (
        "faceid", faceid_layout(SD15_C, FACE_E, 4),
        {"x": _randn(BATCH, FACE_E, seed=9)}, (BATCH, 4, SD15_C),
    ),
    "faceid_portrait_16_tokens_x_3_faces": (
        "faceid", faceid_layout(SD15_C, FACE_E, 16),
        {"x": _randn(BATCH, 3, FACE_E, seed=10), "per_face": True}, (BATCH, 3 * 16, SD15_C),
    ),
    "faceid_plus_v1_no_shortcut": (
        "faceid_plus", faceid_plus_layout(SD15_C, FACE_E, VIT_H_HIDDEN),
        {"id_embeds": _randn(BATCH, FACE_E, seed=11), "clip_embeds": _randn(BATCH, CLIP_TOKENS, VIT_H_HIDDEN, seed=12),
         "shortcut": False, "scale": 1.0},
        (BATCH, 4, SD15_C),
    ),
    "faceid_plus_v2_shortcut_0.7": (
        "faceid_plus", faceid_plus_layout(SD15_C, FACE_E, VIT_H_HIDDEN),
        {"id_embeds": _randn(BATCH, FACE_E, seed=13), "clip_embeds": _randn(BATCH, CLIP_TOKENS, VIT_H_HIDDEN, seed=14),
         "shortcut": True, "scale": 0.7},
        (BATCH, 4, SD15_C),
    ),
    "faceid_plus_v2_sdxl_2_heads": (
        "faceid_plus", faceid_plus_layout(SDXL_C, FACE_E, VIT_H_HIDDEN),
        {"id_embeds": _randn(BATCH, FACE_E, seed=15), "clip_embeds": _randn(BATCH, CLIP_TOKENS, VIT_H_HIDDEN, seed=16),
         "shortcut": True, "scale": 0.7},
        (BATCH, 4, SDXL_C),
    ),
}


@pytest.mark.parametrize("name", list(PARITY_CASES))
def test_projection_matches_diffusers_in_fp32(name, diffusers_unet):
    kind, layout, inputs, out_shape = PARITY_CASES[name]
    sd = random_state_dict(layout, seed=zlib.crc32(name.encode()))  # stable across runs

    module = projection.build_projection(kind, sd).eval()
    # The checkpoint section loads unchanged and strictly: same keys, same shapes.
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == layout
    module.load_state_dict(sd, strict=True)

    ours = our_tokens(module, kind, inputs)
    theirs = diffusers_tokens(diffusers_unet, kind, sd, inputs)
    assert ours.shape == theirs.shape == out_shape
    assert ours.dtype == torch.float32
    diff = (ours - theirs).abs().max().item()
    assert diff <= ATOL, f"{name}: max |ours - diffusers| = {diff:.3g}"
    # Guard against a vacuous pass (e.g. both sides returning the LayerNorm bias only).
    assert ours.std().item() > 0.1


def test_explicit_constructors_take_the_checkpoint_keys_strictly():
    """The classes built by hand (as a reader of the reference would) load the raw checkpoint sections."""
    c, d, e, hidden_clip = SD15_C, VIT_H_PROJ, FACE_E, VIT_H_HIDDEN
    modules_and_layouts = [
        (projection.ImageProjModel(c, d, num_tokens=4), image_proj_layout(c, d, 4)),
        (projection.MLPProjModel(c, hidden_clip), mlp_layout(c, hidden_clip)),
        (
            projection.Resampler(dim=64, depth=4, heads=1, num_queries=16, embedding_dim=hidden_clip, output_dim=SDXL_C),
            resampler_layout(64, hidden_clip, SDXL_C, heads=1),
        ),
        (projection.FaceIDProjModel(c, e, num_tokens=16), faceid_layout(c, e, 16)),
        (
            projection.FaceIDPlusProjModel(cross_attention_dim=SDXL_C, id_embeddings_dim=e, clip_embeddings_dim=hidden_clip),
            faceid_plus_layout(SDXL_C, e, hidden_clip),
        ),
    ]
    for i, (module, layout) in enumerate(modules_and_layouts):
        sd = random_state_dict(layout, seed=100 + i)
        module.load_state_dict(sd, strict=True)  # raises on any key or shape difference
        assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == layout


def test_portrait_tokens_are_concatenated_face_after_face():
    sd = random_state_dict(faceid_layout(SD15_C, FACE_E, 16), seed=20)
    module = projection.build_projection("faceid", sd)
    faces = _randn(BATCH, 3, FACE_E, seed=21)
    with torch.no_grad():
        together = module(faces)
        for f in range(3):
            alone = module(faces[:, f])  # [B, 16, C]
            # Same values up to matmul blocking (a different batch shape may round differently).
            torch.testing.assert_close(together[:, 16 * f : 16 * (f + 1)], alone, rtol=0, atol=ATOL)


def test_faceid_plus_shortcut_adds_the_id_tokens():
    sd = random_state_dict(faceid_plus_layout(SD15_C, FACE_E, VIT_H_HIDDEN), seed=30)
    module = projection.build_projection("faceid_plus", sd)
    ids, clip = _randn(BATCH, FACE_E, seed=31), _randn(BATCH, CLIP_TOKENS, VIT_H_HIDDEN, seed=32)
    faceid_only = projection.FaceIDProjModel(SD15_C, FACE_E, num_tokens=4)
    faceid_only.load_state_dict({k: v for k, v in sd.items() if not k.startswith("perceiver_resampler.")})
    with torch.no_grad():
        v1 = module(ids, clip)
        v2 = module(ids, clip, shortcut=True, scale=0.7)
        torch.testing.assert_close(v2, faceid_only(ids) + 0.7 * v1, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_resampler_keeps_fp32_softmax_and_stays_close(dtype):
    """In half precision the attention follows the original: q, k scaled by dh^-1/4, softmax in fp32."""
    sd = random_state_dict(resampler_layout(SDXL_C, VIT_H_HIDDEN, SDXL_C, heads=2), seed=40)
    x = _randn(BATCH, CLIP_TOKENS, VIT_H_HIDDEN, seed=41)
    reference = projection.build_projection("resampler", sd)
    half = projection.build_projection("resampler", {k: v.to(dtype) for k, v in sd.items()})
    with torch.no_grad():
        expected = reference(x)
        got = half(x)  # fp32 input is cast to the weights' dtype
        assert got.dtype == dtype

        # One attention layer against the original arithmetic written out here.
        attn = half.layers[0][0]
        feats, lat = _randn(BATCH, 20, SDXL_C, seed=42).to(dtype), _randn(BATCH, 16, SDXL_C, seed=43).to(dtype)
        xn, ln = attn.norm1(feats), attn.norm2(lat)
        heads = lambda t: t.reshape(BATCH, t.shape[1], 2, 64).transpose(1, 2)  # noqa: E731
        q = heads(attn.to_q(ln))
        k, v = (heads(t) for t in attn.to_kv(torch.cat([xn, ln], dim=1)).chunk(2, dim=-1))
        s = 64 ** -0.25
        w = torch.softmax(((q * s) @ (k * s).transpose(-2, -1)).float(), dim=-1).to(dtype)
        original = attn.to_out((w @ v).transpose(1, 2).reshape(BATCH, 16, 128))
        torch.testing.assert_close(attn(feats, lat), original, rtol=0, atol=0)

    tol = 0.1 if dtype == torch.bfloat16 else 0.02
    assert (got.float() - expected).abs().max().item() < tol


def test_build_projection_shares_the_state_dict_tensors_and_keeps_their_dtype():
    sd = {k: v.half() for k, v in random_state_dict(image_proj_layout(SD15_C, VIT_H_PROJ, 4), seed=50).items()}
    module = projection.build_projection("image_proj", sd)
    assert module.proj.weight.dtype == torch.float16
    assert module.proj.weight.data_ptr() == sd["proj.weight"].data_ptr()  # assigned, not copied

    fresh = projection.build_projection("image_proj", sd, load_weights=False)
    assert not fresh.proj.weight.is_meta and fresh.proj.weight.dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# Full-size layouts of every released family, on the meta device
# ------------------------------------------------------------------------------------------------

# Family -> kind, from the manifest notes (reference-math 1.2).
FAMILY_KIND = {
    "ip-adapter_sd15": "image_proj",  # also light / light_v11
    "ip-adapter_sd15_vit-G": "image_proj",
    "ip-adapter_sdxl": "image_proj",
    "ip-adapter_sdxl_vit-h": "image_proj",
    "ip-adapter-full-face_sd15": "mlp",
    "ip-adapter-plus_sd15": "resampler",  # also plus-face and composition
    "ip-adapter-plus_sdxl_vit-h": "resampler",
    "Kolors-IP-Adapter-Plus": "resampler",
    "ip-adapter-faceid-portrait_sdxl_unnorm": "resampler",
    "ip-adapter-faceid_sd15": "faceid",
    "ip-adapter-faceid_sdxl": "faceid",
    "ip-adapter-faceid-portrait_sd15": "faceid",  # 16 tokens per face
    "ip-adapter-faceid-portrait_sdxl": "faceid",
    "ip-adapter-faceid-plusv2_sd15": "faceid_plus",  # v1 has the same layout
    "ip-adapter-faceid-plusv2_sdxl": "faceid_plus",
}


MANIFEST = LAYOUTS["families"]


def test_family_table_covers_the_manifest():
    assert set(FAMILY_KIND) == set(MANIFEST)
    assert set(FAMILY_KIND.values()) == set(projection.PROJECTION_KINDS)


@pytest.mark.parametrize("family", sorted(FAMILY_KIND))
def test_full_size_layout_builds_on_meta(family):
    layout = {k: tuple(s) for k, s in MANIFEST[family]["image_proj"].items()}
    sd = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    module = projection.build_projection(FAMILY_KIND[family], sd)
    assert all(p.is_meta for p in module.parameters())
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == layout


def test_full_size_hyperparameters_match_the_reference_table():
    """Spot-check the inferred hyperparameters against reference-math 1.2."""
    def build(family):
        sd = {k: torch.empty(s, device="meta") for k, s in MANIFEST[family]["image_proj"].items()}
        return projection.build_projection(FAMILY_KIND[family], sd)

    plus_xl = build("ip-adapter-plus_sdxl_vit-h")
    assert (len(plus_xl.layers), plus_xl.layers[0][0].heads, plus_xl.latents.shape[1]) == (4, 20, 16)
    assert build("ip-adapter-plus_sd15").layers[0][0].heads == 12
    assert build("Kolors-IP-Adapter-Plus").layers[0][0].heads == 12
    assert build("ip-adapter-faceid-plusv2_sdxl").perceiver_resampler.layers[0][0].heads == 32
    assert build("ip-adapter-faceid-portrait_sdxl").num_tokens == 16
    assert build("ip-adapter_sd15").num_tokens == 4


# ------------------------------------------------------------------------------------------------
# State dicts that do not fit
# ------------------------------------------------------------------------------------------------


def _meta(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in layout.items()}


def _without(layout: dict, key: str) -> dict:
    return {k: v for k, v in layout.items() if k != key}


BAD_INPUTS = {
    # name: (kind, layout, words the message must contain)
    "unknown_kind": ("ipadapter", image_proj_layout(64, 32, 4), ["unknown projection kind", "image_proj"]),
    "missing_norm": ("image_proj", _without(image_proj_layout(64, 32, 4), "norm.weight"), ["missing key", "norm.weight"]),
    "tokens_not_a_multiple": (
        "image_proj", image_proj_layout(64, 32, 4) | {"proj.weight": (250, 32), "proj.bias": (250,)},
        ["proj.weight", "250", "64"],
    ),
    "bias_shape": ("image_proj", image_proj_layout(64, 32, 4) | {"proj.bias": (255,)}, ["proj.bias", "[256]", "[255]"]),
    "full_face_given_as_faceid": ("faceid", mlp_layout(64, 40), ["missing key", "norm.weight"]),
    "faceid_given_as_full_face": ("mlp", faceid_layout(64, 16, 4), ["square", "proj.0.weight"]),
    "extra_key": ("mlp", mlp_layout(64, 40) | {"norm.weight": (64,)}, ["unexpected keys", "norm.weight"]),
    "missing_latents": ("resampler", _without(resampler_layout(64, 40, 64, 1), "latents"), ["missing key", "latents"]),
    "heads_not_64_wide": (
        "resampler", resampler_layout(64, 40, 64, 1) | {f"layers.{i}.0.to_q.weight": (48, 64) for i in range(4)},
        ["to_q", "48", "64"],
    ),
    "missing_layer": (
        "resampler", {k: v for k, v in resampler_layout(64, 40, 64, 1).items() if not k.startswith("layers.2.")},
        ["layer ids", "[0, 1, 3]"],
    ),
    "prefixed_keys": (
        "image_proj", {f"image_proj.{k}": v for k, v in image_proj_layout(64, 32, 4).items()},
        ["missing key", "image_proj."],
    ),
    "faceid_plus_perceiver_width": (
        "faceid_plus", faceid_layout(128, 16, 4) | perceiver_layout(64, 40, 64, 1, prefix="perceiver_resampler."),
        ["perceiver width", "128"],
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_state_dict_that_does_not_fit_raises_a_readable_value_error(name):
    kind, layout, words = BAD_INPUTS[name]
    with pytest.raises(ValueError) as excinfo:
        projection.build_projection(kind, _meta(layout))
    message = str(excinfo.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def test_wrong_rank_input_is_rejected():
    module = projection.build_projection("faceid", random_state_dict(faceid_layout(64, 16, 4), seed=60))
    with pytest.raises(ValueError, match="n_faces"):
        module(torch.zeros(1, 2, 3, 16))
