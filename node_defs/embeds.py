"""Embeds utilities: combine, save, load; the noise image for negatives."""
from __future__ import annotations

NODES: dict[str, tuple[type, str]] = {}
