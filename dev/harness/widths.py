"""The tiny fixture encoders as a library width table, so the pack can be told to recognise them.

The library names encoders by their widths (``ipadapter.encoders``); the tiny stand-ins of ``dims`` have
widths no released encoder has. Tests pass ``TINY_WIDTHS`` to detection explicitly, or register it for
code that uses the pack's default table: ``with encoders.widths_registered(TINY_WIDTHS): ...``.
Imports the pack as ``ipadapter_next``: use it once the runtime has loaded the pack (as the tests do).
"""
from __future__ import annotations

from collections.abc import Mapping

from ipadapter_next.ipadapter.encoders import KnownEncoder, KnownWidths

from .dims import TINY_CLIP, TINY_FACE_EMBED, ClipVisionDims


def widths_from_dims(clip_dims: Mapping[str, ClipVisionDims], face_embed_width: int) -> KnownWidths:
    """A width table with one encoder per ``clip_dims`` entry (keyed by the canonical encoder key) and
    one face-embedding width."""
    encoders = tuple(KnownEncoder(key, f"CLIP {d.name}", d.hidden_size, d.projection_dim, d.image_size)
                     for key, d in clip_dims.items())
    return KnownWidths(encoders, (face_embed_width,))


TINY_WIDTHS = widths_from_dims(TINY_CLIP, TINY_FACE_EMBED)
