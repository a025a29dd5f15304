"""FaceID nodes: insightface loader, FaceID apply nodes, the FaceID unified loader."""
from __future__ import annotations

NODES: dict[str, tuple[type, str]] = {}
