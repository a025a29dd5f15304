"""Synthetic IP-Adapter checkpoints for tests, built from a structural description of each family.

Every family is described by what it is made of (base UNet, projection kind, token count, which CLIP
output or face embedding it reads, LoRA or not, Resampler width rule); the tensors follow from the UNet
topology (processor order, hidden width per processor) and the widths in ``harness.dims``. The same
description gives the full-size layout (on the meta device, no allocation) and the tiny one used by
fast tests. Nothing here imports the library under test.

Weights are random but deterministic (per family, key and seed) and scaled to keep activations near
unit size: Linear weights ~ N(0, 1/fan_in), biases small, LayerNorm weights near 1.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.dims import (
    FULL_CLIP,
    FULL_FACE_EMBED,
    FULL_LORA_RANK,
    FULL_UNET,
    RESAMPLER_DIM_HEAD,
    TINY_CLIP,
    TINY_FACE_EMBED,
    TINY_LORA_RANK,
    TINY_UNET,
    ClipVisionDims,
    UNetDims,
)

__all__ = [
    "FAMILIES",
    "KOLORS_FACEID",
    "FamilyLayout",
    "adapter_state_dict",
    "layout",
    "lora_state_dict",
    "processor_layout",
    "write_checkpoint",
    "write_lora",
]

# --------------------------------------------------------------------------------------------------
# UNet topology: which levels carry attention, transformer depth, processor registration order
# --------------------------------------------------------------------------------------------------
LAYERS_PER_BLOCK = 2  # resnets per down level; up levels have one more


@dataclass(frozen=True)
class _Topology:
    depth_per_level: tuple[int, ...]  # transformer blocks per attention, 0 = no attention at that level
    mid_depth: int


_TOPOLOGY = {
    "sd15": _Topology(depth_per_level=(1, 1, 1, 0), mid_depth=1),
    "sdxl": _Topology(depth_per_level=(0, 2, 10), mid_depth=10),
}


def processor_layout(arch: str, scale: str = "tiny") -> tuple[tuple[str, int], ...]:
    """(diffusers processor name, hidden width) in ``unet.attn_processors`` order: down, up, mid.
    Position ``N`` in this tuple is the ``N`` of the checkpoint's ``N.to_k_ip.weight``."""
    widths = _sizes(scale).unet[arch].block_widths
    topo = _TOPOLOGY[arch]
    out: list[tuple[str, int]] = []

    def attention(prefix: str, depth: int, width: int) -> None:
        for t in range(depth):
            for attn in ("attn1", "attn2"):
                out.append((f"{prefix}.transformer_blocks.{t}.{attn}.processor", width))

    levels = len(widths)
    for level, depth in enumerate(topo.depth_per_level):
        if depth:
            for a in range(LAYERS_PER_BLOCK):
                attention(f"down_blocks.{level}.attentions.{a}", depth, widths[level])
    for up in range(levels):
        level = levels - 1 - up
        depth = topo.depth_per_level[level]
        for a in range(LAYERS_PER_BLOCK + 1 if depth else 0):
            attention(f"up_blocks.{up}.attentions.{a}", depth, widths[level])
    attention("mid_block.attentions.0", topo.mid_depth, widths[-1])
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# Sizes per scale
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sizes:
    unet: Mapping[str, UNetDims]
    clip: Mapping[str, ClipVisionDims]
    face: int
    lora_rank: int
    wide_resampler_dim: int  # SDXL Plus / portrait-unnorm Resampler width (real: 1280, != output 2048)
    kolors_plus_heads: int  # Kolors Plus Resampler heads (real: 12, so heads*64 != width 2048)


_SIZES = {
    "full": _Sizes(FULL_UNET, FULL_CLIP, FULL_FACE_EMBED, FULL_LORA_RANK, wide_resampler_dim=1280, kolors_plus_heads=12),
    "tiny": _Sizes(TINY_UNET, TINY_CLIP, TINY_FACE_EMBED, TINY_LORA_RANK, wide_resampler_dim=64, kolors_plus_heads=1),
}


def _sizes(scale: str) -> _Sizes:
    try:
        return _SIZES[scale]
    except KeyError:
        raise ValueError(f"scale must be one of {sorted(_SIZES)}, not {scale!r}") from None


# --------------------------------------------------------------------------------------------------
# Family descriptions
# --------------------------------------------------------------------------------------------------
RESAMPLER_DEPTH = 4
FF_MULT = 4
FACEID_MLP_MULT = 2  # FaceID MLP hidden width = 2 x face embedding width (1024 for 512)
KOLORS_TEXT_MULT = 2  # Kolors FaceID tokens have the text-encoder width: 2 x UNet context (4096 for 2048)


@dataclass(frozen=True)
class FamilyLayout:
    name: str
    arch: str  # "sd15" | "sdxl"
    projection: str  # "image_proj" | "mlp" | "resampler" | "faceid" | "faceid_plus"
    tokens: int | None  # image tokens per image; None = one per CLIP token (full-face MLP)
    clip: str | None = None  # key of the CLIP vision dims it reads ("vit-h", "vit-g", "vit-l-336")
    clip_output: str | None = None  # "image_embeds" | "penultimate_hidden_states"
    face_input: bool = False  # reads an insightface embedding
    lora: bool = False  # processor LoRA in every attention processor
    resampler: str | None = None  # width rule: "context" | "wide" | "kolors"
    token_width: str = "context"  # "context" | "kolors-text" (Kolors FaceID: 2 x context)


_PEN, _EMB = "penultimate_hidden_states", "image_embeds"
KOLORS_FACEID = "Kolors-IP-Adapter-FaceID-Plus"

_LAYOUTS: tuple[FamilyLayout, ...] = (
    FamilyLayout("ip-adapter_sd15", "sd15", "image_proj", 4, "vit-h", _EMB),
    FamilyLayout("ip-adapter_sd15_vit-G", "sd15", "image_proj", 4, "vit-g", _EMB),
    FamilyLayout("ip-adapter-plus_sd15", "sd15", "resampler", 16, "vit-h", _PEN, resampler="context"),
    FamilyLayout("ip-adapter-full-face_sd15", "sd15", "mlp", None, "vit-h", _PEN),
    FamilyLayout("ip-adapter_sdxl", "sdxl", "image_proj", 4, "vit-g", _EMB),
    FamilyLayout("ip-adapter_sdxl_vit-h", "sdxl", "image_proj", 4, "vit-h", _EMB),
    FamilyLayout("ip-adapter-plus_sdxl_vit-h", "sdxl", "resampler", 16, "vit-h", _PEN, resampler="wide"),
    FamilyLayout("ip-adapter-faceid_sd15", "sd15", "faceid", 4, face_input=True, lora=True),
    FamilyLayout("ip-adapter-faceid_sdxl", "sdxl", "faceid", 4, face_input=True, lora=True),
    FamilyLayout("ip-adapter-faceid-plusv2_sd15", "sd15", "faceid_plus", 4, "vit-h", _PEN, face_input=True, lora=True),
    FamilyLayout("ip-adapter-faceid-plusv2_sdxl", "sdxl", "faceid_plus", 4, "vit-h", _PEN, face_input=True, lora=True),
    FamilyLayout("ip-adapter-faceid-portrait_sd15", "sd15", "faceid", 16, face_input=True),
    FamilyLayout("ip-adapter-faceid-portrait_sdxl", "sdxl", "faceid", 16, face_input=True),
    FamilyLayout("ip-adapter-faceid-portrait_sdxl_unnorm", "sdxl", "resampler", 16, face_input=True, resampler="wide"),
    FamilyLayout("Kolors-IP-Adapter-Plus", "sdxl", "resampler", 16, "vit-l-336", _PEN, resampler="kolors"),
    FamilyLayout(KOLORS_FACEID, "sdxl", "faceid_plus", 6, "vit-l-336", _PEN, face_input=True, token_width="kolors-text"),
)
_BY_NAME = {f.name: f for f in _LAYOUTS}

# The manifest's family names (ipadapter_checkpoint_layouts.json), then Kolors FaceID (not in it).
FAMILIES: tuple[str, ...] = tuple(f.name for f in _LAYOUTS)


def layout(family: str) -> FamilyLayout:
    try:
        return _BY_NAME[family]
    except KeyError:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}") from None


# --------------------------------------------------------------------------------------------------
# Shapes (a state dict of shapes and init kinds), then tensors
# --------------------------------------------------------------------------------------------------
# init kinds: ("w", fan_in) linear weight, "b" bias, "ln_w" / "ln_b" LayerNorm, ("latents", dim)
_Spec = dict[str, tuple[tuple[int, ...], object]]


def _linear(spec: _Spec, name: str, out_f: int, in_f: int, bias: bool = True) -> None:
    spec[f"{name}.weight"] = ((out_f, in_f), ("w", in_f))
    if bias:
        spec[f"{name}.bias"] = ((out_f,), "b")


def _layernorm(spec: _Spec, name: str, width: int) -> None:
    spec[f"{name}.weight"] = ((width,), "ln_w")
    spec[f"{name}.bias"] = ((width,), "ln_b")


def _perceiver(spec: _Spec, prefix: str, dim: int, heads: int, in_width: int, out_width: int,
               queries: int | None) -> None:
    """Resampler (with learned latents) or FacePerceiverResampler (queries=None: latents come from outside)."""
    inner = heads * RESAMPLER_DIM_HEAD
    if queries is not None:
        spec[f"{prefix}latents"] = ((1, queries, dim), ("latents", dim))
    _linear(spec, f"{prefix}proj_in", dim, in_width)
    _linear(spec, f"{prefix}proj_out", out_width, dim)
    _layernorm(spec, f"{prefix}norm_out", out_width)
    for i in range(RESAMPLER_DEPTH):
        layer = f"{prefix}layers.{i}"
        _layernorm(spec, f"{layer}.0.norm1", dim)
        _layernorm(spec, f"{layer}.0.norm2", dim)
        _linear(spec, f"{layer}.0.to_q", inner, dim, bias=False)
        _linear(spec, f"{layer}.0.to_kv", 2 * inner, dim, bias=False)
        _linear(spec, f"{layer}.0.to_out", dim, inner, bias=False)
        _layernorm(spec, f"{layer}.1.0", dim)
        _linear(spec, f"{layer}.1.1", dim * FF_MULT, dim, bias=False)
        _linear(spec, f"{layer}.1.3", dim, dim * FF_MULT, bias=False)


def _faceid_mlp(spec: _Spec, face: int, token_dim: int, tokens: int) -> None:
    _linear(spec, "proj.0", FACEID_MLP_MULT * face, face)
    _linear(spec, "proj.2", token_dim * tokens, FACEID_MLP_MULT * face)
    _layernorm(spec, "norm", token_dim)


def _image_proj_spec(f: FamilyLayout, s: _Sizes) -> _Spec:
    ctx = s.unet[f.arch].context_dim
    token_dim = ctx * (KOLORS_TEXT_MULT if f.token_width == "kolors-text" else 1)
    clip = s.clip[f.clip] if f.clip else None
    clip_width = None
    if clip is not None:
        clip_width = clip.hidden_size if f.clip_output == _PEN else clip.projection_dim
    spec: _Spec = {}
    if f.projection == "image_proj":
        _linear(spec, "proj", f.tokens * token_dim, clip_width)
        _layernorm(spec, "norm", token_dim)
    elif f.projection == "mlp":
        _linear(spec, "proj.0", clip_width, clip_width)
        _linear(spec, "proj.2", token_dim, clip_width)
        _layernorm(spec, "proj.3", token_dim)
    elif f.projection == "resampler":
        in_width = s.face if f.face_input else clip_width
        if f.resampler == "context":
            dim, heads = ctx, ctx // RESAMPLER_DIM_HEAD
        elif f.resampler == "wide":
            dim = s.wide_resampler_dim
            heads = dim // RESAMPLER_DIM_HEAD
        else:  # "kolors": width = context, fewer heads than width / 64
            dim, heads = ctx, s.kolors_plus_heads
        _perceiver(spec, "", dim, heads, in_width, token_dim, queries=f.tokens)
    elif f.projection == "faceid":
        _faceid_mlp(spec, s.face, token_dim, f.tokens)
    elif f.projection == "faceid_plus":
        _faceid_mlp(spec, s.face, token_dim, f.tokens)
        _perceiver(spec, "perceiver_resampler.", token_dim, token_dim // RESAMPLER_DIM_HEAD, clip_width, token_dim,
                   queries=None)
    else:
        raise ValueError(f"unknown projection kind {f.projection!r}")
    return spec


def _ip_adapter_spec(f: FamilyLayout, s: _Sizes, scale: str) -> _Spec:
    ctx = s.unet[f.arch].context_dim
    r = s.lora_rank
    spec: _Spec = {}
    for n, (name, hidden) in enumerate(processor_layout(f.arch, scale)):
        cross = name.endswith("attn2.processor")
        if f.lora:
            kv_in = ctx if cross else hidden
            for proj, in_f in (("to_q", hidden), ("to_k", kv_in), ("to_v", kv_in), ("to_out", hidden)):
                _linear(spec, f"{n}.{proj}_lora.down", r, in_f, bias=False)
                _linear(spec, f"{n}.{proj}_lora.up", hidden, r, bias=False)
        if cross:
            _linear(spec, f"{n}.to_k_ip", hidden, ctx, bias=False)
            _linear(spec, f"{n}.to_v_ip", hidden, ctx, bias=False)
    return spec


def _seed_for(family: str, section: str, key: str, seed: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{family}/{section}/{key}".encode())) % (2**63 - 1)


def _make(shape: tuple[int, ...], init: object, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if init == "b":
        return noise * 0.02
    if init == "ln_w":
        return 1.0 + 0.1 * noise
    if init == "ln_b":
        return noise * 0.02
    _, fan = init  # ("w", fan_in) or ("latents", dim)
    return noise / float(fan) ** 0.5


def adapter_state_dict(family: str, scale: str = "tiny", device="cpu", seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` for one family. ``scale`` "full" (real sizes; use
    ``device="meta"``) or "tiny"; weights are a deterministic function of (family, key, seed)."""
    f = layout(family)
    s = _sizes(scale)
    specs = {"image_proj": _image_proj_spec(f, s), "ip_adapter": _ip_adapter_spec(f, s, scale)}
    return {section: _tensors(spec, family, section, device, seed, dtype) for section, spec in specs.items()}


def write_checkpoint(family: str, path: str | Path, scale: str = "tiny", seed: int = 0) -> Path:
    """Write a checkpoint file: ``.safetensors`` with flat ``image_proj.*`` / ``ip_adapter.*`` keys, or a
    ``.bin`` / ``.pt`` / ``.pth`` torch.save of the nested dict (loadable with weights_only=True)."""
    path = Path(path)
    sd = adapter_state_dict(family, scale=scale, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        flat = {f"{section}.{k}": t.contiguous() for section, tensors in sd.items() for k, t in tensors.items()}
        save_file(flat, str(path))
    elif suffix in (".bin", ".pt", ".pth"):
        torch.save(sd, path)
    else:
        raise ValueError(f"write_checkpoint: unsupported suffix {suffix!r} (use .safetensors or .bin)")
    return path


# --------------------------------------------------------------------------------------------------
# The separately published FaceID LoRA files (``*_lora.safetensors``)
# --------------------------------------------------------------------------------------------------
_LORA_PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}


def lora_state_dict(family: str, scale: str = "tiny", seed: int = 0) -> dict[str, torch.Tensor]:
    """The checkpoint's own LoRA (same tensors, same seed) under kohya key names, as the published
    ``*_lora.safetensors`` files hold it: ``lora_unet_<diffusers module path with _>.lora_{down,up}.weight``
    plus ``.alpha`` equal to the rank (scale 1, as the checkpoint's LoRA has no alpha)."""
    f = layout(family)
    if not f.lora:
        raise ValueError(f"{family} has no FaceID LoRA; families with one: "
                         f"{', '.join(x.name for x in _LAYOUTS if x.lora)}")
    ip = adapter_state_dict(family, scale=scale, seed=seed)["ip_adapter"]
    out: dict[str, torch.Tensor] = {}
    for n, (name, _) in enumerate(processor_layout(f.arch, scale)):
        module = name.removesuffix(".processor")
        for proj, target in _LORA_PROJECTIONS.items():
            key = "lora_unet_" + f"{module}.{target}".replace(".", "_")
            down, up = ip[f"{n}.{proj}_lora.down.weight"], ip[f"{n}.{proj}_lora.up.weight"]
            out[f"{key}.lora_down.weight"] = down
            out[f"{key}.lora_up.weight"] = up
            out[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))
    return out


def write_lora(family: str, path: str | Path, scale: str = "tiny", seed: int = 0) -> Path:
    """Write ``family``'s FaceID LoRA as a kohya-format ``.safetensors`` file (see ``lora_state_dict``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: t.contiguous() for k, t in lora_state_dict(family, scale, seed).items()}, str(path))
    return path


# --------------------------------------------------------------------------------------------------
# XLabs Flux IP-Adapter (v1 / v2): the released flat key names
# --------------------------------------------------------------------------------------------------
def xlabs_flux_spec(version: str = "v1", scale: str = "tiny", dims=None) -> _Spec:
    """Shapes of an XLabs Flux IP-Adapter, under the released keys: ``ip_adapter_proj_model.{proj,norm}.*``
    and ``double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}``. ``dims`` (a
    ``harness.dims.FluxDims``) overrides the Flux widths of ``scale``."""
    from harness.dims import FULL_FLUX, FULL_VIT_L_EMBEDS, TINY_FLUX, XLABS_FLUX_TOKENS

    flux = dims or (FULL_FLUX if scale == "full" else TINY_FLUX)
    clip_width = FULL_VIT_L_EMBEDS if scale == "full" else _sizes("tiny").clip["vit-h"].projection_dim
    tokens = XLABS_FLUX_TOKENS[version]
    ctx = flux.context_in_dim
    spec: _Spec = {}
    _linear(spec, "ip_adapter_proj_model.proj", tokens * ctx, clip_width)
    _layernorm(spec, "ip_adapter_proj_model.norm", ctx)
    for n in range(flux.depth):
        for kv in "kv":
            _linear(spec, f"double_blocks.{n}.processor.ip_adapter_double_stream_{kv}_proj", flux.hidden_size, ctx)
    return spec


def xlabs_flux_state_dict(version: str = "v1", scale: str = "tiny", device="cpu", seed: int = 0,
                          dims=None) -> dict[str, torch.Tensor]:
    """The flat state dict of an XLabs Flux IP-Adapter (``device="meta"`` for the full-size layout)."""
    return _tensors(xlabs_flux_spec(version, scale, dims), f"xlabs-flux-{version}", "flat", device, seed)


def _tensors(spec: _Spec, family: str, section: str, device, seed: int, dtype: torch.dtype = torch.float32):
    """The tensors of ``spec``: empty on the meta device, else seeded per (family, section, key, seed)."""
    meta = torch.device(device).type == "meta"
    out = {}
    for key, (shape, init) in spec.items():
        if meta:
            out[key] = torch.empty(shape, dtype=dtype, device="meta")
            continue
        gen = torch.Generator().manual_seed(_seed_for(family, section, key, seed))
        out[key] = _make(shape, init, gen).to(dtype=dtype, device=device)
    return out


def write_xlabs_flux(path: str | Path, version: str = "v1", scale: str = "tiny", seed: int = 0, dims=None) -> Path:
    """``.safetensors`` as released, or a ``.bin`` torch.save of the same flat dict (weights_only-loadable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = xlabs_flux_state_dict(version, scale, seed=seed, dims=dims)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: t.contiguous() for k, t in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


# --------------------------------------------------------------------------------------------------
# InstantX SD3.5-Large IP-Adapter (ip-adapter.bin): the released section and key names
# --------------------------------------------------------------------------------------------------
def instantx_sd35_spec(scale: str = "tiny") -> dict[str, _Spec]:
    from harness.dims import FULL_SD35_LARGE, TINY_SD35

    d = FULL_SD35_LARGE if scale == "full" else TINY_SD35
    r, h = d.resampler_dim, d.hidden_size
    proj: _Spec = {}  # a Resampler (the same keys as IP-Adapter Plus's) plus timestep conditioning
    _perceiver(proj, "", r, d.resampler_heads, d.siglip_width, h, queries=d.queries)
    _linear(proj, "time_embedding.linear_1", r, d.timestep_in_dim)
    _linear(proj, "time_embedding.linear_2", r, r)
    for i in range(RESAMPLER_DEPTH):
        _linear(proj, f"layers.{i}.2.1", 4 * r, r)  # adaptive LayerNorm shifts and scales
    ip: _Spec = {}
    for n in range(d.depth):
        _linear(ip, f"{n}.norm_ip.linear", 2 * h, r)
        _linear(ip, f"{n}.to_k_ip", h, h, bias=False)
        _linear(ip, f"{n}.to_v_ip", h, h, bias=False)
        for norm in ("norm_q", "norm_k", "norm_ip_k"):
            ip[f"{n}.{norm}.weight"] = ((RESAMPLER_DIM_HEAD,), "ln_w")
    return {"image_proj": proj, "ip_adapter": ip}


def instantx_sd35_state_dict(scale: str = "tiny", device="cpu", seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` as in InstantX's ip-adapter.bin (``device="meta"``: full size)."""
    return {section: _tensors(spec, "instantx-sd35", section, device, seed)
            for section, spec in instantx_sd35_spec(scale).items()}


# --------------------------------------------------------------------------------------------------
# InstantX FLUX.1-dev IP-Adapter (ip-adapter.bin): the released section and key names
# --------------------------------------------------------------------------------------------------
def instantx_flux_spec(scale: str = "tiny", dims=None) -> dict[str, _Spec]:
    """``image_proj``: MLP ``proj.0`` (E -> 2E), ``proj.2`` (2E -> T x 4096), LayerNorm ``norm``; ``ip_adapter``:
    ``N.to_{k,v}_ip.weight`` (hidden x 4096, no bias) for the double blocks then the single blocks."""
    from harness.dims import FULL_FLUX, INSTANTX_FLUX_FULL, INSTANTX_FLUX_TINY, TINY_FLUX

    flux = dims or (FULL_FLUX if scale == "full" else TINY_FLUX)
    width, tokens = INSTANTX_FLUX_FULL if scale == "full" else INSTANTX_FLUX_TINY
    ctx = flux.context_in_dim
    proj: _Spec = {}
    _faceid_mlp(proj, width, ctx, tokens)
    ip: _Spec = {}
    for n in range(flux.depth + flux.depth_single_blocks):
        _linear(ip, f"{n}.to_k_ip", flux.hidden_size, ctx, bias=False)
        _linear(ip, f"{n}.to_v_ip", flux.hidden_size, ctx, bias=False)
    return {"image_proj": proj, "ip_adapter": ip}


def instantx_flux_state_dict(scale: str = "tiny", device="cpu", seed: int = 0,
                             dims=None) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` as in InstantX's ip-adapter.bin (``device="meta"``: full size)."""
    return {section: _tensors(spec, "instantx-flux", section, device, seed)
            for section, spec in instantx_flux_spec(scale, dims).items()}


def write_instantx_flux(path: str | Path, seed: int = 0, dims=None) -> Path:
    """A ``.bin`` as released (torch.save of the two sections; weights_only-loadable). Idempotent."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(instantx_flux_state_dict(seed=seed, dims=dims), path)
    return path
