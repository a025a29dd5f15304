"""A loaded IP-Adapter: its spec, projection model and per-layer to_k_ip/to_v_ip weights.

The weights live in a ComfyUI ModelPatcher, so ComfyUI's memory manager loads and offloads them with
the UNet (the attention patch returns it from ``models()``). Loading the same file twice (same path,
size and modification time) returns the adapter already in memory.
"""
from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor, nn

import comfy.model_management as mm
import comfy.model_patcher

from . import flux, flux_instantx, sd3
from .detect import detect
from .encoders import known_widths
from .families import AdapterSpec
from .files import file_identity, read_checkpoint
from .projection import build_projection


class IPLayer(nn.Module):
    """The image branch's key/value projections of one cross-attention layer (no bias)."""

    def __init__(self, context_dim: int, hidden: int):
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, hidden, bias=False)  # [hidden, C]
        self.to_v_ip = nn.Linear(context_dim, hidden, bias=False)


class IPAdapterModel(nn.Module):
    """``image_proj`` and ``ip_adapter`` submodules: state-dict keys are the flat checkpoint keys."""

    def __init__(self, image_proj: nn.Module, ip_adapter: nn.ModuleDict):
        super().__init__()
        self.image_proj = image_proj
        self.ip_adapter = ip_adapter


@dataclass(frozen=True)
class _Built:
    model: IPAdapterModel
    patcher: comfy.model_patcher.ModelPatcher


@dataclass(frozen=True, eq=False)
class Adapter:
    """A loaded adapter. Its modules are assembled from the file's tensors on first use, so loading is
    little more than reading the file (and an adapter that is loaded but never applied costs no more)."""

    spec: AdapterSpec
    source: str  # file name, for messages
    sections: Mapping[str, Mapping[str, Tensor]] = field(repr=False)  # the checkpoint's tensors
    dtype: torch.dtype | None = None  # convert the weights to this; None keeps the file's dtype
    _built: list = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _projected: dict = field(default_factory=dict, repr=False)  # (id(embeds), dtype) -> (weakref, tokens)

    def _build(self) -> _Built:
        if not self._built:
            with self._lock:
                if not self._built:
                    self._built.append(_assemble(self.sections, self.spec, self.dtype))
        return self._built[0]

    @property
    def model(self) -> IPAdapterModel:
        return self._build().model

    @property
    def patcher(self) -> comfy.model_patcher.ModelPatcher:
        return self._build().patcher

    @property
    def extra(self) -> dict[str, Tensor]:
        """Tensors beside the IP layers (the FaceID LoRA), for the LoRA loader."""
        return {k: v for k, v in self.sections["ip_adapter"].items() if not _is_ip_layer_key(k)}

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.source))[0]

    @property
    def layer_widths(self) -> dict[int, int]:
        return {int(n): layer.to_k_ip.weight.shape[0] for n, layer in self.model.ip_adapter.items()}

    def project(self, embeds: Tensor, dtype: torch.dtype | None = None, **kwargs) -> Tensor:
        """Image (or face) embeddings -> image tokens [B, T, C], computed in ``dtype``, on the intermediate device.

        Weights stay in the file's dtype (loading adopts the file's tensors without converting them);
        when the compute dtype differs they are cast for this call only.
        """
        mm.load_models_gpu([self.patcher])
        proj = self.model.image_proj
        p = next(proj.parameters())
        dtype = dtype or p.dtype
        with torch.no_grad():
            args = {k: (v.to(p.device, dtype) if isinstance(v, Tensor) else v) for k, v in kwargs.items()}
            x = embeds.to(p.device, dtype)
            if p.dtype == dtype:
                tokens = proj(x, **args)
            else:
                cast = {k: v.to(dtype) for k, v in proj.state_dict().items()}
                tokens = torch.func.functional_call(proj, cast, (x,), args)
        return tokens.to(mm.intermediate_device())


    # Projections memoised on the identity of their input: an input reused across applies (an encoder's
    # default negative) is projected once. Entries go when the input tensor is freed.
    def remembered(self, embeds: Tensor, dtype: torch.dtype) -> Tensor | None:
        hit = self._projected.get((id(embeds), dtype))
        return hit[1] if hit is not None and hit[0]() is embeds else None

    def remember(self, embeds: Tensor, dtype: torch.dtype, tokens: Tensor) -> None:
        key = (id(embeds), dtype)
        self._projected[key] = (weakref.ref(embeds, lambda _, k=key: self._projected.pop(k, None)), tokens)


def _is_ip_layer_key(key: str) -> bool:
    return key.endswith(".to_k_ip.weight") or key.endswith(".to_v_ip.weight")


def build_adapter(sections: Mapping[str, Mapping[str, Tensor]], spec: AdapterSpec, source: str,
                  dtype: torch.dtype | None = None) -> Adapter:
    """An Adapter over checkpoint sections. The tensors are adopted, not copied; with ``dtype`` they are
    converted first (otherwise compute casts them: see ``project`` and the attention patch)."""
    return Adapter(spec=spec, source=source, sections=sections, dtype=dtype)


def _assemble(sections: Mapping[str, Mapping[str, Tensor]], spec: AdapterSpec, dtype: torch.dtype | None) -> _Built:
    def cast(t: Tensor) -> Tensor:
        return t if dtype is None else t.to(dtype)

    ip_sd = sections["ip_adapter"]
    if spec.arch == sd3.ARCH:
        projection = sd3.build_resampler({k: cast(v) for k, v in sections["image_proj"].items()})
        layers = sd3.build_layers(ip_sd, cast)
    elif flux.is_dit(spec.arch):
        projection = build_projection(spec.projection, {k: cast(v) for k, v in sections["image_proj"].items()})
        build = flux_instantx.build_layers if spec.family == flux_instantx.FAMILY else flux.build_layers
        layers = build(ip_sd, cast)
    else:
        projection = build_projection(spec.projection, {k: cast(v) for k, v in sections["image_proj"].items()})
        layers = nn.ModuleDict()
        with torch.device("meta"):
            for key in sorted((k for k in ip_sd if k.endswith(".to_k_ip.weight")), key=lambda k: int(k.split(".")[0])):
                hidden, context = ip_sd[key].shape
                layers[key.split(".")[0]] = IPLayer(context, hidden)
        layers.load_state_dict({k: cast(v) for k, v in ip_sd.items() if _is_ip_layer_key(k)}, strict=True, assign=True)
    model = IPAdapterModel(projection, layers).eval()
    model.requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    return _Built(model=model, patcher=patcher)


_cache: "weakref.WeakValueDictionary[tuple, Adapter]" = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read and detect the adapter at ``path``; a file already loaded and unchanged is reused."""
    key = file_identity(path)
    path = key[0]
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    sections = read_checkpoint(path)
    spec = detect(sections, source=os.path.basename(path), widths=known_widths())
    adapter = build_adapter(sections, spec, source=os.path.basename(path))
    with _cache_lock:
        _cache[key] = adapter
    return adapter
