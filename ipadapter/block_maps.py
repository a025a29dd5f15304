"""Style / composition block maps for the transformer models (Flux, SD3.5): EXPERIMENTAL.

The UNet maps (``weights.WEIGHT_TYPE_TABLE``) come from InstantStyle's measurements on SDXL. Nobody has
published such a measurement for Flux or SD3.5, so this is a first map, built on one structural
assumption and meant to be checked and refined with real weights:

- composition (where things are) is settled by the first half of the joint / double-stream blocks, where
  the image tokens still attend to the text in their own stream and the layout forms;
- style (how things look) by the second half of the double stream and by the single-stream blocks.

Regions are fractions of a stream's blocks, so one row fits Flux.1 (19 double + 38 single blocks), SD3.5
Large (38 joint blocks, named "double" here) and the tiny test models alike: block i of n belongs to
[start, end) when start <= i / n < end. Blocks no region names get weight 0 (and are skipped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .layers import LayerSite

__all__ = ["BlockRegion", "DIT_BLOCK_MAPS", "DIT_MAPPED_TYPES", "map_weights", "stream_of"]


@dataclass(frozen=True)
class BlockRegion:
    stream: str  # "double" (Flux double blocks, SD3.5 joint blocks) or "single" (Flux single blocks)
    start: float  # fraction of the stream's blocks, inclusive
    end: float  # exclusive; 1.0 reaches the last block
    var: str = "w"  # "w": the weight; "wc": weight_composition
    factor: float = 1.0


_COMPOSITION = BlockRegion("double", 0.0, 0.5)
_STYLE = (BlockRegion("double", 0.5, 1.0), BlockRegion("single", 0.5, 1.0))
_STRONG_STYLE = (BlockRegion("double", 0.5, 1.0), BlockRegion("single", 0.0, 1.0))

# weight type -> regions (the same rows for every transformer architecture; SD3.5 has no single stream).
DIT_BLOCK_MAPS: dict[str, tuple[BlockRegion, ...]] = {
    "style transfer": _STYLE,
    "composition": (_COMPOSITION,),
    "strong style transfer": _STRONG_STYLE,  # every block but the composition ones
    "style and composition": _STYLE + (BlockRegion("double", 0.0, 0.5, "wc"),),
}
DIT_MAPPED_TYPES = tuple(DIT_BLOCK_MAPS)


def stream_of(site: LayerSite) -> str:
    """"double" or "single" from a DiT site key ("double_block" / "single_block", N, 0)."""
    return site.key[0].split("_")[0]


def map_weights(sites: tuple[LayerSite, ...], weight_type: str, values: Mapping[str, object]) -> dict:
    """site key -> weight (``values[var] * factor``) for the sites the map of ``weight_type`` names."""
    counts: dict[str, int] = {}
    for s in sites:
        counts[stream_of(s)] = counts.get(stream_of(s), 0) + 1
    position: dict[str, int] = {}
    out = {}
    for s in sites:  # sites come in block order within each stream
        stream = stream_of(s)
        i = position.get(stream, 0)
        position[stream] = i + 1
        for region in DIT_BLOCK_MAPS[weight_type]:
            if region.stream == stream and region.start <= i / counts[stream] < region.end:
                out[s.key] = values[region.var] * region.factor
    return out
