"""Apply-node variants: style & composition, precise, Mad Scientist, ClipVision Enhancer, tiled, batch, params."""
from __future__ import annotations

NODES: dict[str, tuple[type, str]] = {}
