"""Recognise model files by their tensors (names and shapes), never by their file names.

A CLIP vision encoder is told apart from the others by its widths (hidden / projection) and input size
(position embeddings); an IP-Adapter by ``checkpoint.detect``. Only shapes are read: for .safetensors
just the JSON header at the start of the file, for zip-format torch pickles the archive's index (the
tensor data is memory-mapped and never touched). What a file holds is cached by (path, modification
time, size), so scanning a models folder again costs a few ``stat`` calls.

Widths that name encoders come from a ``checkpoint.KnownWidths`` table: the real models'
(``FULL_WIDTHS``) plus any table registered with ``register_widths`` (the test fixtures' tiny encoders).
"""
from __future__ import annotations

import json
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from .checkpoint import (FULL_WIDTHS, PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, AdapterSpec, CheckpointError,
                         KnownEncoder, KnownWidths, detect)

Shapes = dict[str, tuple[int, ...]]

_MAX_HEADER = 100 * 1024 * 1024  # a larger safetensors header means a corrupt or foreign file
CLIP_PATCH = 14  # every CLIP vision encoder an IP-Adapter uses has 14-px patches


# --------------------------------------------------------------------------------------------------
# Width tables
# --------------------------------------------------------------------------------------------------
_extra_widths: list[KnownWidths] = []


def register_widths(widths: KnownWidths) -> None:
    """Also recognise the encoders of ``widths`` (e.g. tiny stand-in models). Idempotent."""
    if widths not in _extra_widths:
        _extra_widths.append(widths)


def unregister_widths(widths: KnownWidths) -> None:
    if widths in _extra_widths:
        _extra_widths.remove(widths)


def known_widths() -> KnownWidths:
    """The real models' widths followed by every registered table."""
    encoders = FULL_WIDTHS.encoders + tuple(e for w in _extra_widths for e in w.encoders)
    faces = FULL_WIDTHS.face_embed_widths + tuple(f for w in _extra_widths for f in w.face_embed_widths)
    return KnownWidths(encoders, faces)


# --------------------------------------------------------------------------------------------------
# Reading shapes
# --------------------------------------------------------------------------------------------------
def read_safetensors_header(path: str | os.PathLike) -> Shapes:
    """Tensor name -> shape from a .safetensors header; reads 8 bytes plus the header, no tensor data."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{Path(path).name} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length <= 1 or length > _MAX_HEADER:
            raise CheckpointError(f"{Path(path).name} has no valid safetensors header (header length {length})")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"{Path(path).name} has an unreadable safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{Path(path).name} has no valid safetensors header")
    return {k: tuple(int(n) for n in v["shape"]) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "shape" in v}


def _flatten(obj, prefix: str, out: Shapes) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = tuple(obj.shape)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(k, str):
                _flatten(v, f"{prefix}.{k}" if prefix else k, out)


def _read_pickle_shapes(path: str | os.PathLike) -> Shapes:
    """Shapes of a zip-format torch file, memory-mapped (tensor data stays on disk). weights_only:
    a pickle that needs code is refused, as everywhere in this pack."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # legacy (non-zip) format, unsafe or corrupt pickle
        raise CheckpointError(f"{Path(path).name}: its tensor shapes could not be read ({str(exc).splitlines()[0]})") from exc
    out: Shapes = {}
    _flatten(data, "", out)
    return out


_cache: dict[tuple[str, int, int], Shapes | CheckpointError] = {}
_cache_lock = threading.Lock()


def _file_key(path: str | os.PathLike) -> tuple[str, int, int]:
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_mtime_ns, st.st_size


def tensor_shapes(path: str | os.PathLike) -> Shapes:
    """Tensor name -> shape (nested sections joined with '.'); cached by path, mtime and size.

    Raises ``CheckpointError`` when the file cannot be read as tensors (the failure is cached too)."""
    key = _file_key(path)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is None:
        suffix = Path(path).suffix.lower()
        try:
            if suffix in SAFETENSORS_SUFFIXES:
                hit = read_safetensors_header(path)
            elif suffix in PICKLE_SUFFIXES:
                hit = _read_pickle_shapes(path)
            else:
                raise CheckpointError(f"{Path(path).name}: not a .safetensors or torch file")
        except CheckpointError as exc:
            hit = exc
        except OSError as exc:
            hit = CheckpointError(f"{Path(path).name} could not be read: {exc}")
        with _cache_lock:
            _cache[key] = hit
    if isinstance(hit, CheckpointError):
        raise hit
    return hit


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


# --------------------------------------------------------------------------------------------------
# CLIP vision encoders
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipVisionLayout:
    """Where a layout keeps the widths: key of the class embedding [hidden], of the position embeddings
    [tokens, hidden], of the projection and which of its axes is the projection width, layer key pattern."""

    name: str
    class_embedding: str
    positions: str
    projection: str
    projection_axis: int
    layer: re.Pattern


CLIP_VISION_LAYOUTS = (
    # Hugging Face transformers (what h94/IP-Adapter's image_encoder/model.safetensors holds)
    ClipVisionLayout("transformers", "vision_model.embeddings.class_embedding",
                     "vision_model.embeddings.position_embedding.weight", "visual_projection.weight", 0,
                     re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")),
    # open_clip (laion's open_clip_pytorch_model files; ComfyUI converts them on load)
    ClipVisionLayout("open_clip", "visual.class_embedding", "visual.positional_embedding", "visual.proj", 1,
                     re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.")),
)


@dataclass(frozen=True)
class ClipVisionShape:
    layout: str
    hidden_size: int
    projection_dim: int | None
    tokens: int  # position embeddings: CLS + patches
    layers: int

    @property
    def image_size(self) -> int:
        return round((self.tokens - 1) ** 0.5) * CLIP_PATCH


def clip_vision_shape(shapes: Mapping[str, tuple[int, ...]]) -> ClipVisionShape | None:
    """The widths of a CLIP vision encoder's tensors, or None when they are not one."""
    for lay in CLIP_VISION_LAYOUTS:
        if lay.class_embedding not in shapes or lay.positions not in shapes:
            continue
        layers = {int(m.group(1)) for k in shapes if (m := lay.layer.match(k))}
        if not layers:
            continue
        proj = shapes.get(lay.projection)
        return ClipVisionShape(lay.name, int(shapes[lay.class_embedding][-1]),
                               int(proj[lay.projection_axis]) if proj is not None and len(proj) == 2 else None,
                               int(shapes[lay.positions][0]), max(layers) + 1)
    return None


def identify_clip_vision(path: str | os.PathLike, widths: KnownWidths | None = None) -> KnownEncoder | None:
    """The known encoder whose widths and input size the file has; None for anything else (another
    encoder, not an encoder, unreadable)."""
    try:
        shape = clip_vision_shape(tensor_shapes(path))
    except CheckpointError:
        return None
    if shape is None:
        return None
    for enc in (widths or known_widths()).encoders:
        if (enc.hidden_size, enc.projection_dim, enc.image_size) == (shape.hidden_size, shape.projection_dim,
                                                                     shape.image_size):
            return enc
    return None


# --------------------------------------------------------------------------------------------------
# IP-Adapters
# --------------------------------------------------------------------------------------------------
def identify_ipadapter(path: str | os.PathLike, widths: KnownWidths | None = None) -> AdapterSpec:
    """The IP-Adapter spec of a file from its shapes alone. Raises ``CheckpointError`` (or a subclass:
    not an adapter, unknown layout) with the reason."""
    shapes = tensor_shapes(path)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return detect(meta, source=Path(path).name, widths=widths or known_widths())
