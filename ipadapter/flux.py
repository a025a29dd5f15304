"""XLabs' Flux IP-Adapter (v1: 4 tokens, v2: 16 tokens): its file layout, detection, layers and block map.

The released files hold ``ip_adapter_proj_model.{proj,norm}.*`` (CLIP ViT-L/14 ``image_embeds`` -> T tokens
of the T5 width, the same ImageProj as SD's IP-Adapter) and, for each of Flux's 19 double blocks,
``double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}``. Reading a file
(``files.split_sections``) files the first under ``image_proj`` and the second under ``ip_adapter`` as
``N.processor.ip_adapter_double_stream_k_proj.weight``. The math lives in ``dit_patch``.

Per-block weights address double block ``N`` (0-18 on Flux.1): ``resolve_block_weights``; the
experimental style / composition maps of the transformer models are in ``block_maps``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import nn

from .block_maps import DIT_BLOCK_MAPS, DIT_MAPPED_TYPES, map_weights
from .encoders import KnownEncoder, KnownWidths
from .errors import UnknownAdapterError
from .families import AdapterSpec, EncoderRequirement
from .layers import LayerSite
from .projection import split_tokens
from .weights import LayerWeight, Weight, find_weight_type, parse_layer_weights

ARCH = "flux"
ARCH_NAME = "Flux"
DIT_ARCH_NAMES = {ARCH: ARCH_NAME, "sd3": "SD3.5"}  # architectures patched per DiT block (not through attn2)
FLUX_DOUBLE_BLOCKS = 19  # Flux.1 dev / schnell
FLUX_SINGLE_BLOCKS = 38  # patched by InstantX's adapter only
DIT_BLOCKS = {ARCH: FLUX_DOUBLE_BLOCKS, "sd3": 38}  # patched blocks of the released models (SD3.5 Large)

# The encoder XLabs trained with (openai/clip-vit-large-patch14, 224 px); ComfyUI: clip_vision_l.safetensors.
VIT_L = KnownEncoder("vit-l", "CLIP ViT-L/14", hidden_size=1024, projection_dim=768, image_size=224)

# Image-token count -> (family name, label): the released versions.
XLABS_VERSIONS = {
    4: ("flux-ip-adapter", "Flux XLabs IP-Adapter v1 (CLIP ViT-L image embeds, 4 tokens)"),
    16: ("flux-ip-adapter-v2", "Flux XLabs IP-Adapter v2 (CLIP ViT-L image embeds, 16 tokens)"),
}

# Raw file prefixes -> section (files.split_sections uses this for the XLabs layout).
SECTION_ALIASES = {"ip_adapter_proj_model": "image_proj", "double_blocks": "ip_adapter"}

_IP_KEY = re.compile(r"^(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")
_PROJ_KEYS = ("proj.weight", "proj.bias", "norm.weight", "norm.bias")


def is_xlabs(ip: Mapping[str, object]) -> bool:
    """True when an ``ip_adapter`` section has XLabs Flux double-block keys."""
    return any(_IP_KEY.match(k) for k in ip)


def is_dit(arch: str) -> bool:
    return arch in DIT_ARCH_NAMES


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------
def _encoder(width: int, widths: KnownWidths) -> EncoderRequirement:
    """CLIP ViT-L/14 for width 768; otherwise a known 224-px encoder of that image_embeds width."""
    for enc in (VIT_L, *widths.encoders):
        if enc.projection_dim == width and enc.image_size == VIT_L.image_size:
            return EncoderRequirement(enc.name, "image_embeds", width, enc.image_size, enc.key)
    return EncoderRequirement(f"CLIP vision (image_embeds width {width})", "image_embeds", width, VIT_L.image_size)


def _block_ids(ip: Mapping[str, torch.Tensor], where: str) -> list[int]:
    parts: dict[int, set[str]] = {}
    for key in ip:
        m = _IP_KEY.match(key)
        if m:
            parts.setdefault(int(m.group(1)), set()).add(f"{m.group(2)}.{m.group(3)}")
    ids = sorted(parts)
    if ids != list(range(len(ids))):
        raise UnknownAdapterError(f"{where}: XLabs Flux double blocks are not numbered 0..{len(ids) - 1} (got {ids[:8]}...)")
    full = {"k.weight", "k.bias", "v.weight", "v.bias"}
    broken = [n for n in ids if parts[n] != full]
    if broken:
        raise UnknownAdapterError(f"{where}: double block {broken[0]} lacks some of the k/v projection weights and "
                                  f"biases ({sorted(full - parts[broken[0]])}); the file is incomplete")
    return ids


def detect_xlabs(p: Mapping[str, torch.Tensor], ip: Mapping[str, torch.Tensor], where: str,
                 widths: KnownWidths) -> AdapterSpec:
    """The spec of an XLabs Flux IP-Adapter from its sections (meta tensors are enough)."""
    missing = [k for k in _PROJ_KEYS if k not in p]
    if missing:
        raise UnknownAdapterError(f"{where}: an XLabs Flux IP-Adapter needs ip_adapter_proj_model.{{{', '.join(_PROJ_KEYS)}}}; "
                                  f"missing {', '.join(missing)}")
    ids = _block_ids(ip, where)
    k0 = ip["0.processor.ip_adapter_double_stream_k_proj.weight"]
    hidden, context = int(k0.shape[0]), int(k0.shape[1])
    for n in ids:
        for kv in "kv":
            shape = tuple(ip[f"{n}.processor.ip_adapter_double_stream_{kv}_proj.weight"].shape)
            if shape != (hidden, context):
                raise UnknownAdapterError(f"{where}: double block {n} {kv}_proj is {shape}, block 0's is {(hidden, context)}")
    token_dim = int(p["norm.weight"].shape[0])
    try:
        tokens = split_tokens(int(p["proj.weight"].shape[0]), token_dim, "image_proj", "ip_adapter_proj_model.proj.weight")
    except ValueError as exc:
        raise UnknownAdapterError(f"{where}: {exc}") from exc
    if token_dim != context:
        raise UnknownAdapterError(f"{where}: image tokens are {token_dim} wide but the double blocks' IP projections "
                                  f"take {context}; the file is inconsistent")
    family, label = XLABS_VERSIONS.get(tokens, (f"flux-ip-adapter ({tokens} tokens)",
                                                f"Flux XLabs-layout IP-Adapter ({tokens} tokens)"))
    return AdapterSpec(
        family=family, label=label, arch=ARCH, tokens=tokens, projection="image_proj", context_dim=context,
        token_dim=token_dim, layer_count=len(ids), encoder=_encoder(int(p["proj.weight"].shape[1]), widths),
        face_embed_dim=None, face_embedding=None, has_lora=False, lora_rank=None, is_faceid=False,
        is_portrait=False, is_kolors=False, faceid_v2=False, source=where,
    )


# --------------------------------------------------------------------------------------------------
# Layers: one module per double block, with the to_k_ip / to_v_ip names the shared entry code reads
# --------------------------------------------------------------------------------------------------
class BlockIPLayer(nn.Module):
    def __init__(self, context_dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, hidden, bias=bias)
        self.to_v_ip = nn.Linear(context_dim, hidden, bias=bias)


def build_layers(ip_sd: Mapping[str, torch.Tensor], cast) -> nn.ModuleDict:
    """``{"N": BlockIPLayer}`` adopting the file's tensors (``cast`` converts each one)."""
    ids = sorted({int(m.group(1)) for m in map(_IP_KEY.match, ip_sd) if m})
    layers = nn.ModuleDict()
    state = {}
    with torch.device("meta"):
        for n in ids:
            hidden, context = ip_sd[f"{n}.processor.ip_adapter_double_stream_k_proj.weight"].shape
            layers[str(n)] = BlockIPLayer(int(context), int(hidden))
            for kv in "kv":
                for part in ("weight", "bias"):
                    state[f"{n}.to_{kv}_ip.{part}"] = cast(ip_sd[f"{n}.processor.ip_adapter_double_stream_{kv}_proj.{part}"])
    layers.load_state_dict(state, strict=True, assign=True)
    return layers


# --------------------------------------------------------------------------------------------------
# Block map and per-block weights
# --------------------------------------------------------------------------------------------------
def block_sites(count: int) -> tuple[LayerSite, ...]:
    """One site per double block: key ("double_block", N, 0), checkpoint index N."""
    return tuple(LayerSite(key=("double_block", n, 0), ckpt_index=n, transformer_index=n) for n in range(count))


# Weight types whose curve depends only on the block's position: they carry over to a row of DiT blocks.
# The others are UNet block maps (input/middle/output, style/composition layers).
DIT_WEIGHT_TYPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out")


def unsupported(what: str, adapter_name: str, arch: str = ARCH) -> str:
    name = DIT_ARCH_NAMES[arch]
    return (f"{what} is not available for {adapter_name} ({name} IP-Adapter): it is defined on SD1.5/SDXL "
            f"UNet layers. On {name} use IPAdapter, IPAdapter Advanced, Batch, Embeds or Mad Scientist.")


def resolve_block_weights(sites: tuple[LayerSite, ...], weight_type: str, weight: Weight,
                          layer_weights: Mapping[int, float] | None = None, arch_name: str = ARCH_NAME,
                          weight_composition: float | None = None) -> dict:
    """site key -> LayerWeight for the blocks with a non-zero weight.

    ``layer_weights`` (Mad Scientist) names blocks by index, multiplied by ``weight``; others get 0.
    Otherwise ``weight_type`` is one of ``DIT_WEIGHT_TYPES`` (a curve over the block index) or one of the
    experimental style / composition maps (``block_maps``; ``weight_composition`` defaults to 1.0, as on
    the UNet)."""
    def nonzero(w: Weight) -> bool:
        return bool((w != 0).any()) if isinstance(w, torch.Tensor) else w != 0

    if layer_weights is not None:
        for n in layer_weights:
            if isinstance(n, tuple):  # ("single", N) from parse_block_weights
                raise ValueError(f"layer_weights: {n[0]}_{n[1]}: this adapter has no single-block layers (XLabs "
                                 f"adapters act on the double blocks only); use double_N keys")
            if not 0 <= n < len(sites):
                raise ValueError(f"block index {n} is out of range: this {arch_name} model has blocks 0-{len(sites) - 1}")
        per = {s.key: layer_weights.get(s.ckpt_index, 0.0) * weight for s in sites if layer_weights.get(s.ckpt_index, 0.0)}
    elif weight_type in DIT_BLOCK_MAPS:
        values = {"w": weight, "wc": 1.0 if weight_composition is None else weight_composition}
        per = map_weights(sites, weight_type, values)
    else:
        if weight_type not in DIT_WEIGHT_TYPES:
            find_weight_type(weight_type)  # an unknown name gets the usual message
            raise ValueError(f"weight_type {weight_type!r} is a UNet layer map and has no {arch_name} equivalent; "
                             f"on {arch_name} choose one of {', '.join(DIT_WEIGHT_TYPES + DIT_MAPPED_TYPES)} (the "
                             f"style / composition maps are experimental there), or give per-block weights "
                             f"with IPAdapter Mad Scientist (layer_weights such as 'double_0:1, double_10:0.5').")
        curve = find_weight_type(weight_type).curve
        per = {s.key: weight * curve(s.ckpt_index, len(sites), "double") for s in sites}
    return {k: LayerWeight(w) for k, w in per.items() if nonzero(w)}


_BLOCK_KEY = re.compile(r"^(?:(double|single)_)?(\d+)$")


def parse_block_weights(text: str, count: int = FLUX_DOUBLE_BLOCKS, singles: int = 0) -> dict:
    """Mad Scientist ``layer_weights`` on Flux: ``N:value`` or ``double_N:value`` entries (N = double block
    0..count-1) and, where ``singles`` > 0, ``single_N:value`` (key ``("single", N)``), separated by commas or
    newlines; ``{}`` for blank text. The model checks the ranges again (a tiny test model has fewer blocks)."""
    out: dict = {}
    for raw in re.split(r"[,\n]", text):
        entry = raw.strip()
        if not entry:
            continue
        key, sep, value = (s.strip() for s in entry.partition(":"))
        m = _BLOCK_KEY.match(key)

        def bad(why: str) -> ValueError:
            single = (f", single_0-single_{singles - 1} (InstantX adapters only)" if singles
                      else " (single blocks carry no IP layer)")
            return ValueError(f"layer_weights entry {entry!r}: {why}. On {ARCH_NAME} the keys are double blocks: "
                              f"0-{count - 1} or double_0-double_{count - 1}{single}.")

        if not sep:
            raise bad("expected key:value, e.g. double_3:0.5")
        if m is None:
            raise bad(f"{key!r} is not a block key")
        try:
            w = float(value)
        except ValueError:
            raise bad(f"{value!r} is not a number") from None
        n = int(m.group(2))
        key = ("single", n) if m.group(1) == "single" else n
        if n >= (singles if m.group(1) == "single" else count):
            raise bad(f"block {n} is out of range")
        if key in out:
            raise bad("this block is given twice")
        out[key] = w
    return out


def parse_any_layer_weights(text: str, arch: str) -> dict:
    """Mad Scientist ``layer_weights`` for any architecture: double-block keys on DiT models."""
    if not is_dit(arch):
        return parse_layer_weights(text, arch)
    return parse_block_weights(text, DIT_BLOCKS[arch], FLUX_SINGLE_BLOCKS if arch == ARCH else 0)


def token_grid_for(seq_len: int, mask_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) image-token grid of ``seq_len`` tokens closest to the mask's aspect ratio (Flux packs the
    latent in 2x2 patches; the block sees only the token count)."""
    target = math.log(mask_hw[0] / mask_hw[1])
    best = None
    for h in range(1, seq_len + 1):
        if seq_len % h == 0:
            score = abs(math.log(h / (seq_len // h)) - target)
            if best is None or score < best[0]:
                best = (score, (h, seq_len // h))
    return best[1]
