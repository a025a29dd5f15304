"""InstantX's FLUX.1-dev IP-Adapter: its file layout, detection, layers and block map. The patch is in
``flux_instantx_patch``.

The released ``ip-adapter.bin`` holds two sections:

- ``image_proj``: an MLP on SigLIP so400m-patch14-384's *pooled* output (the vision model's attention-pooling
  head, 1152 wide): ``proj.0`` (1152 -> 2304), GELU, ``proj.2`` (2304 -> 128 x 4096), then LayerNorm
  ``norm`` (4096) per token: 128 image tokens of the T5 width. The layout is FaceID's MLP, so the shared
  ``faceid`` projection builds it.
- ``ip_adapter``: one processor per attention of the transformer, in diffusers' order: the 19 double blocks
  (``0``-``18``) then the 38 single blocks (``19``-``56``); each ``N.to_k_ip.weight`` / ``N.to_v_ip.weight``
  (3072 x 4096, no bias). The IP keys get a per-head RMSNorm without weights (eps 1e-5); the values none.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from .errors import UnknownAdapterError
from .families import AdapterSpec, EncoderRequirement
from .flux import ARCH, FLUX_SINGLE_BLOCKS, BlockIPLayer  # noqa: F401 (FLUX_SINGLE_BLOCKS re-exported)
from .layers import LayerSite
from .sd3 import SIGLIP_384

FAMILY = "flux-instantx-ip-adapter"
LABEL = "FLUX.1-dev InstantX IP-Adapter (SigLIP pooled output, MLP to {tokens} tokens)"
POOLED_OUTPUT = "siglip_pooled"  # the encoder output it reads: SigLIP's attention-pooled vector
NORM_EPS = 1e-5  # the IP keys' RMSNorm (no weights)


_IP_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")
_PROJ_KEYS = ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias")


def is_instantx_flux(ip: Mapping[str, object]) -> bool:
    """Processors numbered from 0 with bias-free to_k_ip and no timestep norm (the UNet adapters number their
    cross-attention processors from 1; InstantX SD3.5 has ``norm_ip``)."""
    return "0.to_k_ip.weight" in ip and "0.to_k_ip.bias" not in ip and "0.norm_ip.linear.weight" not in ip


def detect_instantx_flux(p: Mapping[str, torch.Tensor], ip: Mapping[str, torch.Tensor], where: str) -> AdapterSpec:
    missing = [k for k in _PROJ_KEYS if k not in p]
    if missing:
        raise UnknownAdapterError(f"{where}: an InstantX FLUX IP-Adapter's image_proj needs {', '.join(_PROJ_KEYS)}; "
                                  f"missing {', '.join(missing)}. The file is incomplete or not this adapter.")
    ids = processor_ids(ip, where)
    hidden, context = (int(s) for s in ip["0.to_k_ip.weight"].shape)
    for n in ids:
        for kv in "kv":
            shape = tuple(ip[f"{n}.to_{kv}_ip.weight"].shape)
            if shape != (hidden, context):
                raise UnknownAdapterError(f"{where}: processor {n} to_{kv}_ip is {shape}, processor 0's is "
                                          f"{(hidden, context)}; the file is inconsistent")
    token_dim = int(p["norm.weight"].shape[0])
    rows, inner = (int(s) for s in p["proj.2.weight"].shape)
    if token_dim != context or rows % token_dim:
        raise UnknownAdapterError(f"{where}: image_proj makes rows of {rows} for {token_dim}-wide tokens but the IP "
                                  f"layers take {context}; the file is inconsistent")
    width = int(p["proj.0.weight"].shape[1])
    name, full_width, size = SIGLIP_384
    encoder = EncoderRequirement(f"{name} (pooled output)" if width == full_width else f"SigLIP (pooled width {width})",
                                 POOLED_OUTPUT, width, size, None)
    tokens = rows // token_dim
    return AdapterSpec(
        family=FAMILY, label=LABEL.format(tokens=tokens), arch=ARCH, tokens=tokens, projection="faceid",
        context_dim=context, token_dim=token_dim, layer_count=len(ids), encoder=encoder, face_embed_dim=None,
        face_embedding=None, has_lora=False, lora_rank=None, is_faceid=False, is_portrait=False, is_kolors=False,
        faceid_v2=False, source=where,
    )


def processor_ids(ip: Mapping[str, torch.Tensor], where: str) -> list[int]:
    parts: dict[int, set[str]] = {}
    for key in ip:
        m = _IP_KEY.match(key)
        if m is None:
            raise UnknownAdapterError(f"{where}: unexpected key ip_adapter.{key} in an InstantX FLUX IP-Adapter "
                                      f"(expected N.to_k_ip.weight / N.to_v_ip.weight)")
        parts.setdefault(int(m.group(1)), set()).add(m.group(2))
    ids = sorted(parts)
    if ids != list(range(len(ids))):
        raise UnknownAdapterError(f"{where}: processors are not numbered 0..{len(ids) - 1} (got {ids[:8]}...)")
    broken = [n for n in ids if parts[n] != {"k", "v"}]
    if broken:
        raise UnknownAdapterError(f"{where}: processor {broken[0]} lacks to_k_ip or to_v_ip; the file is incomplete")
    return ids


def build_layers(ip_sd: Mapping[str, torch.Tensor], cast) -> nn.ModuleDict:
    """``{"N": BlockIPLayer}`` (bias-free) adopting the file's tensors; ``cast`` converts each one."""
    layers = nn.ModuleDict()
    with torch.device("meta"):
        for n in processor_ids(ip_sd, "ip_adapter"):
            hidden, context = ip_sd[f"{n}.to_k_ip.weight"].shape
            layers[str(n)] = BlockIPLayer(int(context), int(hidden), bias=False)
    layers.load_state_dict({k: cast(v) for k, v in ip_sd.items()}, strict=True, assign=True)
    return layers


def block_sites(doubles: int, singles: int) -> tuple[LayerSite, ...]:
    """Processor N -> its block: double blocks first, then single blocks (diffusers' processor order)."""
    return (tuple(LayerSite(key=("double_block", i, 0), ckpt_index=i, transformer_index=i) for i in range(doubles))
            + tuple(LayerSite(key=("single_block", j, 0), ckpt_index=doubles + j, transformer_index=j)
                    for j in range(singles)))


def processor_weights(layer_weights: Mapping, doubles: int, singles: int) -> dict[int, float]:
    """Mad Scientist keys (``N`` / ``double_N`` -> double block N, ``("single", N)`` -> single block N) ->
    processor index -> weight, with a clear error for a block the model does not have."""
    out = {}
    for key, w in layer_weights.items():
        kind, n = key if isinstance(key, tuple) else ("double", key)
        count = doubles if kind == "double" else singles
        if not 0 <= n < count:
            raise ValueError(f"layer_weights: {kind}_{n} is out of range: this Flux model has {kind} blocks "
                             f"0-{count - 1}")
        out[n if kind == "double" else doubles + n] = w
    return out
