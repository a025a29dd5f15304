"""Unified loaders: pick the IP-Adapter and CLIP vision files of a preset by what the files are."""
from __future__ import annotations

NODES: dict[str, tuple[type, str]] = {}
