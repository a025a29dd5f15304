"""A layer sweep: which layers of the UNet (or blocks of Flux / SD3.5) carry what. One entry per layer group
(the adapter on that group only, or on every layer but that group), plus the two references: no adapter,
and every layer.

Each entry's layers are written as ``layer_weights`` text (see ``weights.parse_layer_weights`` and
``flux.parse_block_weights``), so an entry the user likes can be pasted into IPAdapter Mad Scientist (or
Embeds, or IPAdapter Layer Weights on a UNet) as is. On the transformer models the second grouping is the
halves of each block stream: the regions of the experimental style / composition maps (``block_maps``),
which a sweep on real weights checks.
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Union

from .layers import layer_map, transformer_count
from .weights import layer_names

# How the layers are grouped: one group per SpatialTransformer (transformer index), or per UNet section;
# on Flux / SD3.5 one group per block, or per half of each block stream.
GROUPINGS = ("each layer", "input / middle / output")
MODES = ("only this group", "all but this group")
NO_ADAPTER = "no adapter"
ALL_LAYERS = "all layers"


# A layer key as ``layer_weights`` parses it: a transformer index (UNet), a double / joint block index, or
# ("single", N) for a Flux single block.
LayerKey = Union[int, tuple[str, int]]


@dataclass(frozen=True)
class SweepEntry:
    label: str
    layers: tuple[LayerKey, ...]  # what the adapter acts on; empty: no adapter
    flux: bool = False  # Flux blocks are written double_N / single_N

    def layer_weights(self) -> str:
        """The entry as ``layer_weights`` text: every named layer at 1 (the node's weight scales them)."""
        return ", ".join(f"{_name(k, self.flux)}:1" for k in self.layers)

    def weights(self) -> dict:
        """The entry as the parsed ``layer_weights`` the apply functions take."""
        return {k: 1.0 for k in self.layers}


def _name(key: LayerKey, flux: bool) -> str:
    if isinstance(key, tuple):
        return f"{key[0]}_{key[1]}"
    return f"double_{key}" if flux else str(key)


def block_groups(streams: dict[str, int], grouping: str, names: dict[str, str] | None = None
                 ) -> list[tuple[str, tuple[LayerKey, ...]]]:
    """(name, block keys) of a transformer model's patched blocks: ``streams`` = {"double": n[, "single": m]}
    ("double" = Flux double blocks or SD3.5 joint blocks; ``names`` renames a stream in the labels). Per
    block, or per half of each stream."""
    def key(stream: str, i: int) -> LayerKey:
        return i if stream == "double" else (stream, i)

    names = names or {}
    if grouping == GROUPINGS[0]:
        return [(f"{names.get(stream, stream)} {i}", (key(stream, i),)) for stream, n in streams.items()
                for i in range(n)]
    if grouping == GROUPINGS[1]:
        out = []
        for stream, n in streams.items():
            half = (n + 1) // 2  # block i is in the first half when i / n < 0.5 (as block_maps places it)
            for lo, hi in ((0, half), (half, n)):
                if hi > lo:
                    out.append((f"{names.get(stream, stream)} {lo}-{hi - 1}",
                                tuple(key(stream, i) for i in range(lo, hi))))
        return out
    raise ValueError(f"unknown grouping {grouping!r}; choose one of: {', '.join(GROUPINGS)}")


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


def sweep_entries(arch: str, grouping: str = GROUPINGS[0], mode: str = MODES[0],
                  streams: dict[str, int] | None = None) -> list[SweepEntry]:
    """The references (no adapter, all layers) then one entry per group, in execution order. ``streams``:
    the block counts of a transformer model (``block_groups``), whose blocks are swept instead."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if streams is None:
        groups = layer_groups(arch, grouping)
        every: tuple[LayerKey, ...] = tuple(range(transformer_count(arch)))
    else:
        names = {"double": "joint"} if arch == "sd3" else None  # SD3.5's blocks are joint blocks
        groups = block_groups(streams, grouping, names)
        every = tuple(k for _, keys in block_groups(streams, GROUPINGS[0]) for k in keys)
    flux = streams is not None and arch == "flux"
    entries = [SweepEntry(NO_ADAPTER, (), flux), SweepEntry(ALL_LAYERS, every, flux)]
    for name, keys in groups:
        if mode == MODES[0]:
            entries.append(SweepEntry(f"only {name}", keys, flux))
        else:
            entries.append(SweepEntry(f"all but {name}", tuple(k for k in every if k not in keys), flux))
    return entries
