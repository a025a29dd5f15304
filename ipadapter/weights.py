"""Per-layer weights: weight types (curves and style/composition maps) and embeds scaling modes.

Layers are addressed by ComfyUI's ``transformer_index`` (t_idx: 0-15 on SD1.5, 0-10 on SDXL), as the
old extension's maps are; the middle block (t_idx 6 on SD1.5, 4 on SDXL) is patched here, unlike there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .layers import AttnKey, LayerSite, layer_map, transformer_count

WEIGHT_TYPES = (
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
    "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
    "style and composition", "style transfer precise", "composition precise",
)
# Reachable only through the Style & Composition nodes' expand_style option.
HIDDEN_WEIGHT_TYPES = ("strong style and composition",)
EMBEDS_SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")


@dataclass(frozen=True)
class LayerWeight:
    weight: float
    # "Precise" types swap the image tokens on suppressed layers (cond sees none, uncond sees the
    # reference), which turns the branch into negative guidance there.
    swap: bool = False


def _curve(weight_type: str, t: int, count: int, block: str) -> float:
    half = count / 2
    if weight_type == "linear":
        return 1.0
    if weight_type == "ease in":
        return 0.05 + 0.95 * (1 - t / count)
    if weight_type == "ease out":
        return 0.05 + 0.95 * (t / count)
    if weight_type == "ease in-out":
        return 0.05 + 0.95 * (1 - abs(t - half) / half)
    if weight_type == "reverse in-out":
        return 0.05 + 0.95 * (abs(t - half) / half)
    weak = {"weak input": ("input",), "weak output": ("output",), "weak middle": ("middle",),
            "strong middle": ("input", "output")}[weight_type]
    return 0.2 if block in weak else 1.0


_CURVES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out",
           "weak input", "weak output", "weak middle", "strong middle")


def _all(arch: str) -> tuple[int, ...]:
    return tuple(range(transformer_count(arch)))


def _but(arch: str, *skip: int) -> tuple[int, ...]:
    return tuple(t for t in _all(arch) if t not in skip)


# Style/composition maps: weight type -> arch -> ((t_idx..., variable, factor), ...), where variable is
# "w" (weight), "wc" (composition weight or style boost) or "b" (composition boost).
_MAPS: dict[str, dict[str, tuple[tuple[tuple[int, ...], str, float], ...]]] = {
    "style transfer": {
        "sdxl": (((6,), "w", 1.0),),
        "sd15": (((0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15), "w", 1.0),),
    },
    "composition": {
        "sdxl": (((3,), "w", 1.0),),
        "sd15": (((4,), "w", 0.25), ((5,), "w", 1.0)),
    },
    "strong style transfer": {
        "sdxl": ((_but("sdxl", 3), "w", 1.0),),
        "sd15": ((_but("sd15", 4, 5), "w", 1.0),),
    },
    "style and composition": {
        "sdxl": (((3,), "wc", 1.0), ((6,), "w", 1.0)),
        "sd15": (((0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15), "w", 1.0), ((4,), "wc", 0.25), ((5,), "wc", 1.0)),
    },
    "strong style and composition": {
        "sdxl": ((_but("sdxl", 3), "w", 1.0), ((3,), "wc", 1.0)),
        "sd15": ((_but("sd15", 4, 5), "w", 1.0), ((4, 5), "wc", 1.0)),
    },
    "composition precise": {
        "sdxl": (((0, 1, 2, 4, 5, 7, 8, 9, 10), "b", 0.1), ((3,), "wc", 1.0), ((6,), "b", 1.0)),
        "sd15": (((0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15), "b", 1.0), ((4,), "wc", 0.25), ((5,), "wc", 1.0),
                 ((6, 7, 8), "b", 0.1)),
    },
}
_MAPS["style transfer precise"] = _MAPS["style and composition"]
_COMPOSITION_LAYERS = {"sdxl": (3,), "sd15": (4, 5)}
# Layers whose tokens are swapped: the composition layers for precise style, all others for precise composition.
_SWAPS = {
    "style transfer precise": lambda arch: _COMPOSITION_LAYERS[arch],
    "composition precise": lambda arch: _but(arch, *_COMPOSITION_LAYERS[arch]),
}


def resolve_layer_weights(
    arch: str,
    weight_type: str = "linear",
    weight: float = 1.0,
    weight_composition: float | None = None,
    boost: float | None = None,
    layer_weights: Mapping[int | tuple[int, int], float] | None = None,
) -> dict[AttnKey, LayerWeight]:
    """Weight of every cross-attention site of ``arch``; sites with weight 0 are left out.

    ``layer_weights`` (Mad Scientist style) overrides the type's map: keys are t_idx, or
    (t_idx, block_index) for one transformer block of an SDXL SpatialTransformer; values are
    multiplied by ``weight``; layers it does not name get 0.
    """
    sites = layer_map(arch)
    count = transformer_count(arch)
    if weight_type not in WEIGHT_TYPES + HIDDEN_WEIGHT_TYPES:
        raise ValueError(f"unknown weight_type {weight_type!r}; choose one of: {', '.join(WEIGHT_TYPES)}")
    swap_layers = set(_SWAPS[weight_type](arch)) if weight_type in _SWAPS else set()
    per_t: dict[int, float]
    if layer_weights is not None:
        return _from_layer_weights(sites, count, weight, layer_weights, swap_layers)
    if weight_type in _CURVES:
        per_site = {s.key: weight * _curve(weight_type, s.transformer_index, count, s.block) for s in sites}
    else:
        wc = weight if weight_composition is None else weight_composition
        if weight_type == "style transfer precise" and boost is not None:
            wc = boost
        values = {"w": weight, "wc": wc, "b": weight if boost is None else boost}
        if weight_type == "composition precise":
            values["wc"] = weight
        per_t = {}
        for indices, var, factor in _MAPS[weight_type][arch]:
            for t in indices:
                per_t[t] = values[var] * factor
        per_site = {s.key: per_t.get(s.transformer_index, 0.0) for s in sites}
    by_key = {s.key: s for s in sites}
    return {
        key: LayerWeight(w, by_key[key].transformer_index in swap_layers)
        for key, w in per_site.items()
        if w != 0
    }


def _from_layer_weights(
    sites: tuple[LayerSite, ...],
    count: int,
    weight: float,
    layer_weights: Mapping[int | tuple[int, int], float],
    swap_layers: set[int],
) -> dict[AttnKey, LayerWeight]:
    for k in layer_weights:
        t = k[0] if isinstance(k, tuple) else k
        if not 0 <= t < count:
            raise ValueError(f"layer index {t} is out of range: this model has transformer indices 0-{count - 1}")
    out = {}
    for s in sites:
        value = layer_weights.get((s.transformer_index, s.key[2]), layer_weights.get(s.transformer_index, 0.0))
        if value * weight != 0:
            out[s.key] = LayerWeight(value * weight, s.transformer_index in swap_layers)
    return out
