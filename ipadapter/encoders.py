"""Widths that name image encoders and face embeddings, and the extension point to add more.

An IP-Adapter's projection only shows the width of what it reads (1024 = ViT-H image_embeds, 1280 =
ViT-bigG image_embeds or ViT-H penultimate states, ...). ``FULL_WIDTHS`` is the table of the released
encoders; functions that name encoders take a ``KnownWidths`` argument, and default to ``known_widths()``.

Extension point: ``register_widths(table)`` makes every default lookup (loading adapters, the Unified
Loaders' file search, encoder messages) also know the encoders of ``table``, e.g. smaller stand-ins of the
real encoders; ``unregister_widths(table)`` undoes it, and ``widths_registered(table)`` does both around a
``with`` block.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "CLIP_PATCH_SIZE",
    "FULL_WIDTHS",
    "KnownEncoder",
    "KnownWidths",
    "known_widths",
    "register_widths",
    "unregister_widths",
    "widths_registered",
]

CLIP_PATCH_SIZE = 14  # every supported CLIP vision encoder uses 14-px patches (257 tokens at 224 px)


@dataclass(frozen=True)
class KnownEncoder:
    key: str  # canonical encoder key: "vit-h", "vit-g", "vit-l-336"
    name: str
    hidden_size: int  # width of the penultimate hidden states
    projection_dim: int  # width of image_embeds
    image_size: int = 224

    def width(self, output: str) -> int:
        return self.hidden_size if output == "penultimate_hidden_states" else self.projection_dim


@dataclass(frozen=True)
class KnownWidths:
    """Widths that identify encoders and face embeddings."""

    encoders: tuple[KnownEncoder, ...]
    face_embed_widths: tuple[int, ...]

    def encoder(self, output: str, width: int) -> KnownEncoder | None:
        for enc in self.encoders:
            if enc.width(output) == width:
                return enc
        return None


FULL_WIDTHS = KnownWidths(
    encoders=(
        KnownEncoder("vit-h", "CLIP ViT-H", hidden_size=1280, projection_dim=1024),
        KnownEncoder("vit-g", "CLIP ViT-bigG", hidden_size=1664, projection_dim=1280),
        KnownEncoder("vit-l-336", "CLIP ViT-L-336", hidden_size=1024, projection_dim=768, image_size=336),
    ),
    face_embed_widths=(512,),  # insightface ArcFace (buffalo_l, antelopev2)
)

_registered: list[KnownWidths] = []


def register_widths(widths: KnownWidths) -> None:
    """Also recognise the encoders and face-embedding widths of ``widths`` wherever the pack looks
    widths up by default (see ``known_widths``). Idempotent."""
    if widths not in _registered:
        _registered.append(widths)


def unregister_widths(widths: KnownWidths) -> None:
    """Undo ``register_widths``; a table that is not registered is ignored."""
    if widths in _registered:
        _registered.remove(widths)


@contextmanager
def widths_registered(widths: KnownWidths) -> Iterator[KnownWidths]:
    """``register_widths(widths)`` for the duration of a ``with`` block."""
    register_widths(widths)
    try:
        yield widths
    finally:
        unregister_widths(widths)


def known_widths() -> KnownWidths:
    """The released encoders' widths followed by every registered table (first match wins)."""
    encoders = FULL_WIDTHS.encoders + tuple(e for w in _registered for e in w.encoders)
    faces = FULL_WIDTHS.face_embed_widths + tuple(f for w in _registered for f in w.face_embed_widths)
    return KnownWidths(encoders, faces)
