"""A layer sweep: which layers of the UNet carry what. One entry per layer group (the adapter on that group
only, or on every layer but that group), plus the two references: no adapter, and every layer.

Each entry's layers are written as ``layer_weights`` text (see ``weights.parse_layer_weights``), so an entry
the user likes can be pasted into IPAdapter Mad Scientist or IPAdapter Layer Weights as is.
"""
from __future__ import annotations

from dataclasses import dataclass

from .layers import layer_map, transformer_count
from .weights import layer_names

# How the layers are grouped: one group per SpatialTransformer (transformer index), or per UNet section.
GROUPINGS = ("each layer", "input / middle / output")
MODES = ("only this group", "all but this group")
NO_ADAPTER = "no adapter"
ALL_LAYERS = "all layers"


@dataclass(frozen=True)
class SweepEntry:
    label: str
    layers: tuple[int, ...]  # transformer indices the adapter acts on; empty: no adapter

    def layer_weights(self) -> str:
        """The entry as ``layer_weights`` text: every named layer at 1 (the node's weight scales them)."""
        return ", ".join(f"{t}:1" for t in self.layers)


def layer_groups(arch: str, grouping: str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, transformer indices) of every group of ``arch`` in execution order."""
    if grouping == GROUPINGS[0]:
        return [(name, (t,)) for name, t in layer_names(arch).items()]
    if grouping == GROUPINGS[1]:
        sections: dict[str, list[int]] = {}
        for site in layer_map(arch):
            indices = sections.setdefault(site.block, [])
            if site.transformer_index not in indices:
                indices.append(site.transformer_index)
        return [(name, tuple(indices)) for name, indices in sections.items()]
    raise ValueError(f"unknown grouping {grouping!r}; choose one of: {', '.join(GROUPINGS)}")


def sweep_entries(arch: str, grouping: str = GROUPINGS[0], mode: str = MODES[0]) -> list[SweepEntry]:
    """The references (no adapter, all layers) then one entry per group, in execution order."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    every = tuple(range(transformer_count(arch)))
    entries = [SweepEntry(NO_ADAPTER, ()), SweepEntry(ALL_LAYERS, every)]
    for name, indices in layer_groups(arch, grouping):
        if mode == MODES[0]:
            entries.append(SweepEntry(f"only {name}", indices))
        else:
            entries.append(SweepEntry(f"all but {name}", tuple(t for t in every if t not in indices)))
    return entries
