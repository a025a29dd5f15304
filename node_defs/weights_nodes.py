"""Weight schedules for batches and animation: IPAdapter Weights and friends."""
from __future__ import annotations

NODES: dict[str, tuple[type, str]] = {}
