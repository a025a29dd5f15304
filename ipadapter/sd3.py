"""InstantX's SD3.5-Large IP-Adapter: its file layout, detection, the timestep-conditioned resampler and the
per-block IP layers. The patch that applies it lives in ``sd3_patch``.

The file (``ip-adapter.bin``) holds ``image_proj`` (a TimeResampler: SigLIP so400m ``hidden_states[-2]``, 729
tokens of 1152 -> 64 tokens of 2432, conditioned on the timestep) and ``ip_adapter`` with one processor per
joint block ``N``: ``N.norm_ip.linear.*`` (adaptive LayerNorm of the tokens from the resampler's timestep
embedding), ``N.to_k_ip`` / ``N.to_v_ip``, and RMSNorm weights ``N.norm_q`` / ``N.norm_k`` / ``N.norm_ip_k``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UnknownAdapterError
from .families import AdapterSpec, EncoderRequirement

ARCH = "sd3"
ARCH_NAME = "SD3.5"
HEAD_DIM = 64
EPS = 1e-6
SIGLIP_384 = ("SigLIP so400m-patch14-384", 1152, 384)  # name, hidden width, input size

_PROJ_REQUIRED = ("latents", "proj_in.weight", "proj_out.weight", "norm_out.weight", "time_embedding.linear_1.weight",
                  "time_embedding.linear_2.weight", "layers.0.0.to_q.weight")
_LAYER_PARTS = ("norm_ip.linear.weight", "norm_ip.linear.bias", "to_k_ip.weight", "to_v_ip.weight", "norm_q.weight",
                "norm_k.weight", "norm_ip_k.weight")


def is_instantx_sd3(ip: Mapping[str, object]) -> bool:
    return "0.norm_ip.linear.weight" in ip


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------
def detect_sd3(p: Mapping[str, torch.Tensor], ip: Mapping[str, torch.Tensor], where: str) -> AdapterSpec:
    missing = [k for k in _PROJ_REQUIRED if k not in p]
    if missing:
        raise UnknownAdapterError(f"{where}: an InstantX SD3.5 IP-Adapter's image_proj (TimeResampler) needs "
                                  f"{', '.join(missing)}; the file is incomplete")
    count = 1 + max(int(k.split(".")[0]) for k in ip if k.split(".")[0].isdigit())
    for n in range(count):
        absent = [part for part in _LAYER_PARTS if f"{n}.{part}" not in ip]
        if absent:
            raise UnknownAdapterError(f"{where}: joint block {n} lacks {', '.join(absent)}; the file is incomplete")
    out_dim = int(p["proj_out.weight"].shape[0])
    hidden = int(ip["0.to_k_ip.weight"].shape[0])
    if int(ip["0.to_k_ip.weight"].shape[1]) != out_dim:
        raise UnknownAdapterError(f"{where}: the resampler makes {out_dim}-wide tokens but the IP layers take "
                                  f"{int(ip['0.to_k_ip.weight'].shape[1])}; the file is inconsistent")
    width = int(p["proj_in.weight"].shape[1])
    name, full_width, size = SIGLIP_384
    encoder = EncoderRequirement(name if width == full_width else f"SigLIP (hidden width {width})",
                                 "penultimate_hidden_states", width, size, "siglip-384" if width == full_width else None)
    return AdapterSpec(
        family="SD3.5-Large-IP-Adapter", label="SD3.5-Large InstantX IP-Adapter (SigLIP, TimeResampler)", arch=ARCH,
        tokens=int(p["latents"].shape[1]), projection="time_resampler", context_dim=out_dim, token_dim=out_dim,
        layer_count=count, encoder=encoder, face_embed_dim=None, face_embedding=None, has_lora=False,
        lora_rank=None, is_faceid=False, is_portrait=False, is_kolors=False, faceid_v2=False, source=where,
    ) if hidden == 64 * count else _mismatch(where, hidden, count)


def _mismatch(where: str, hidden: int, count: int):
    raise UnknownAdapterError(f"{where}: {count} joint-block processors of width {hidden}; an SD3 MMDiT with {count} "
                              f"blocks is {64 * count} wide. The file is not an SD3.5 IP-Adapter")


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal timestep features, cosines first (max period 10000, no frequency shift)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _TimeBlock(nn.Module):
    """One resampler layer: perceiver attention of the latents over (features, latents) and a feed-forward,
    both with timestep-adaptive LayerNorm. Parameter names are the file's."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        inner = heads * HEAD_DIM
        self.heads = heads
        self.attn = nn.ModuleDict({"norm1": nn.LayerNorm(dim), "norm2": nn.LayerNorm(dim),
                                   "to_q": nn.Linear(dim, inner, bias=False), "to_kv": nn.Linear(dim, 2 * inner, bias=False),
                                   "to_out": nn.Linear(inner, dim, bias=False)})
        self.ff = nn.ModuleList([nn.LayerNorm(dim), nn.Linear(dim, 4 * dim, bias=False), nn.GELU(),
                                 nn.Linear(4 * dim, dim, bias=False)])
        self.ada = nn.ModuleList([nn.SiLU(), nn.Linear(dim, 4 * dim)])

    def forward(self, x: torch.Tensor, latents: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, shift_mlp, scale_mlp = self.ada[1](self.ada[0](temb)).chunk(4, dim=1)
        a = self.attn
        x = a["norm1"](x)
        lat = a["norm2"](latents) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        b = lat.shape[0]
        q = a["to_q"](lat).view(b, -1, self.heads, HEAD_DIM).transpose(1, 2)
        k, v = a["to_kv"](torch.cat([x, lat], dim=1)).chunk(2, dim=-1)
        k = k.reshape(b, -1, self.heads, HEAD_DIM).transpose(1, 2)
        v = v.reshape(b, -1, self.heads, HEAD_DIM).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, self.heads * HEAD_DIM)
        latents = a["to_out"](out) + latents
        h = self.ff[0](latents) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return self.ff[3](self.ff[2](self.ff[1](h))) + latents


class TimeResampler(nn.Module):
    """SigLIP features [N, T, D] and a timestep -> (tokens [N, Q, C], timestep embedding [N, R])."""

    def __init__(self, in_dim: int, dim: int, out_dim: int, heads: int, depth: int, queries: int, t_dim: int):
        super().__init__()
        self.t_dim = t_dim
        self.latents = nn.Parameter(torch.empty(1, queries, dim))
        self.proj_in = nn.Linear(in_dim, dim)
        self.proj_out = nn.Linear(dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)
        self.time_embedding = nn.ModuleDict({"linear_1": nn.Linear(t_dim, dim), "linear_2": nn.Linear(dim, dim)})
        self.layers = nn.ModuleList([_TimeBlock(dim, heads) for _ in range(depth)])

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        te = self.time_embedding
        temb = te["linear_2"](F.silu(te["linear_1"](timestep_features(timestep, self.t_dim).to(x.dtype))))
        latents = self.latents.expand(x.shape[0], -1, -1)
        x = self.proj_in(x) + temb[:, None]
        for layer in self.layers:
            latents = layer(x, latents, temb)
        return self.norm_out(self.proj_out(latents)), temb


# File name of a resampler layer's part -> module name (the file numbers the parts; the module names them).
_RESAMPLER_RENAMES = (("0.norm1.", "attn.norm1."), ("0.norm2.", "attn.norm2."), ("0.to_q.", "attn.to_q."),
                      ("0.to_kv.", "attn.to_kv."), ("0.to_out.", "attn.to_out."), ("1.0.", "ff.0."), ("1.1.", "ff.1."),
                      ("1.3.", "ff.3."), ("2.1.", "ada.1."))


def _module_key(key: str) -> str:
    if not key.startswith("layers."):
        return key
    _, index, part = key.split(".", 2)
    for old, new in _RESAMPLER_RENAMES:
        if part.startswith(old):
            return f"layers.{index}.{new}{part[len(old):]}"
    return key


def build_resampler(p: Mapping[str, torch.Tensor]) -> TimeResampler:
    """The TimeResampler adopting the file's ``image_proj`` tensors (left on the meta device for meta tensors)."""
    depth = 1 + max(int(k.split(".")[1]) for k in p if k.startswith("layers."))
    dim, in_dim = p["proj_in.weight"].shape
    with torch.device("meta"):
        module = TimeResampler(int(in_dim), int(dim), int(p["proj_out.weight"].shape[0]),
                               int(p["layers.0.0.to_q.weight"].shape[0]) // HEAD_DIM, depth,
                               int(p["latents"].shape[1]), int(p["time_embedding.linear_1.weight"].shape[1]))
    if not any(t.is_meta for t in p.values()):
        module.load_state_dict({_module_key(k): t for k, t in p.items()}, strict=True, assign=True)
    return module


class JointIPLayer(nn.Module):
    """One joint block's IP processor (the file's names under ``N.``)."""

    def __init__(self, token_dim: int, hidden: int, t_dim: int):
        super().__init__()
        self.norm_ip = nn.ModuleDict({"linear": nn.Linear(t_dim, 2 * token_dim)})
        self.to_k_ip = nn.Linear(token_dim, hidden, bias=False)
        self.to_v_ip = nn.Linear(token_dim, hidden, bias=False)
        self.norm_q = nn.ParameterDict({"weight": nn.Parameter(torch.empty(HEAD_DIM))})
        self.norm_k = nn.ParameterDict({"weight": nn.Parameter(torch.empty(HEAD_DIM))})
        self.norm_ip_k = nn.ParameterDict({"weight": nn.Parameter(torch.empty(HEAD_DIM))})

    def tokens_kv(self, tokens: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adaptive-normed tokens -> (K normed per head, V), both [N, heads, Q, 64]."""
        shift, scale = self.norm_ip["linear"](F.silu(temb)).chunk(2, dim=1)
        n = F.layer_norm(tokens, tokens.shape[-1:], eps=EPS) * (1 + scale[:, None]) + shift[:, None]
        b = n.shape[0]
        k = self.to_k_ip(n).view(b, -1, self.to_k_ip.out_features // HEAD_DIM, HEAD_DIM).transpose(1, 2)
        v = self.to_v_ip(n).view(b, -1, self.to_v_ip.out_features // HEAD_DIM, HEAD_DIM).transpose(1, 2)
        return rms_norm(k, self.norm_ip_k["weight"]), v


def build_layers(ip_sd: Mapping[str, torch.Tensor], cast) -> nn.ModuleDict:
    count = 1 + max(int(k.split(".")[0]) for k in ip_sd if k.split(".")[0].isdigit())
    layers = nn.ModuleDict()
    with torch.device("meta"):
        for n in range(count):
            hidden, token_dim = ip_sd[f"{n}.to_k_ip.weight"].shape
            layers[str(n)] = JointIPLayer(int(token_dim), int(hidden), int(ip_sd[f"{n}.norm_ip.linear.weight"].shape[1]))
    layers.load_state_dict({k: cast(v) for k, v in ip_sd.items()}, strict=True, assign=True)
    return layers
