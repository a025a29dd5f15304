"""Recognise model files by their tensors (names and shapes), never by their file names.

Only shapes are read: for .safetensors just the JSON header at the start of the file, for zip-format
torch pickles the archive's index (the tensor data is memory-mapped and never touched). What a file holds
is cached by its identity (path, modification time, size), so scanning a models folder again costs a
few ``stat`` calls. A CLIP vision encoder is told apart from the others by its widths (hidden /
projection) and input size (position embeddings); an IP-Adapter by ``detect.detect``. Widths name
encoders through ``encoders.known_widths()`` unless a table is passed.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from .detect import detect
from .encoders import CLIP_PATCH_SIZE, FULL_WIDTHS, KnownEncoder, KnownWidths, known_widths
from .errors import CheckpointError
from .families import AdapterSpec
from .files import (Shapes, StateDicts, check_sections, file_identity, pickle_shapes, read_safetensors_header,
                    split_sections, tensor_file_kind)

__all__ = [
    "CLIP_VISION_LAYOUTS",
    "ClipVisionLayout",
    "ClipVisionShape",
    "clear_cache",
    "clip_vision_shape",
    "identify_clip_vision",
    "identify_ipadapter",
    "inspect_checkpoint",
    "read_checkpoint_shapes",
    "tensor_shapes",
]


# --------------------------------------------------------------------------------------------------
# Shapes, cached
# --------------------------------------------------------------------------------------------------
_cache: dict[tuple[str, int, int], Shapes | CheckpointError] = {}
_cache_lock = threading.Lock()


def tensor_shapes(path: str | os.PathLike) -> Shapes:
    """Tensor name -> shape (nested sections joined with '.'); cached by the file's identity.

    Raises ``CheckpointError`` when the file cannot be read as tensors (the failure is cached too)."""
    kind = tensor_file_kind(path)
    key = file_identity(path)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is None:
        try:
            hit = read_safetensors_header(path) if kind == "safetensors" else pickle_shapes(path)
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
        return round((self.tokens - 1) ** 0.5) * CLIP_PATCH_SIZE


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
def read_checkpoint_shapes(path: str | os.PathLike) -> StateDicts:
    """Like ``files.read_checkpoint`` but every tensor is on the meta device (shapes only, from the
    cached ``tensor_shapes``: for .safetensors only the header is read)."""
    shapes = tensor_shapes(path)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return check_sections(shapes, split_sections(meta), Path(path).name)


def inspect_checkpoint(path: str | os.PathLike, widths: KnownWidths = FULL_WIDTHS) -> AdapterSpec:
    """Detect a file's family from its shapes alone, naming encoders by ``widths`` (the released ones by
    default). Raises ``CheckpointError`` (or a subclass: not an adapter, unknown layout) with the reason."""
    return detect(read_checkpoint_shapes(path), source=Path(path).name, widths=widths)


def identify_ipadapter(path: str | os.PathLike, widths: KnownWidths | None = None) -> AdapterSpec:
    """``inspect_checkpoint`` with every width table the pack knows (``encoders.known_widths()``) by default."""
    return inspect_checkpoint(path, widths or known_widths())
