"""Per-layer weights: weight types (curves and style/composition maps) and embeds scaling modes.

Layers are addressed by ComfyUI's ``transformer_index`` (t_idx: 0-15 on SD1.5, 0-10 on SDXL), as the
old extension's maps are; the middle block (t_idx 6 on SD1.5, 4 on SDXL) is patched here, unlike there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Union

import torch

from .layers import ARCHITECTURES, AttnKey, LayerSite, layer_map, transformer_count

WEIGHT_TYPES = (
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
    "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
    "style and composition", "style transfer precise", "composition precise",
)
# Reachable only through the Style & Composition nodes' expand_style option.
HIDDEN_WEIGHT_TYPES = ("strong style and composition",)
EMBEDS_SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")


# A weight is one number, or one per frame (a 1-D tensor) for the Batch nodes' per-frame schedules.
Weight = Union[float, torch.Tensor]


@dataclass(frozen=True)
class LayerWeight:
    weight: Weight
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
# The transformer indices the composition weight acts on (input_blocks 8 on SDXL, 7 and 8 on SD1.5).
COMPOSITION_LAYERS: dict[str, tuple[int, ...]] = {"sdxl": (3,), "sd15": (4, 5)}
# Layers whose tokens are swapped: the composition layers for precise style, all others for precise composition.
_SWAPS = {
    "style transfer precise": lambda arch: COMPOSITION_LAYERS[arch],
    "composition precise": lambda arch: _but(arch, *COMPOSITION_LAYERS[arch]),
}


def _nonzero(w: Weight) -> bool:
    return bool((w != 0).any()) if isinstance(w, torch.Tensor) else w != 0


def as_frame_weights(weight) -> Weight:
    """A node's ``weight``: a number, or a list of numbers (one per frame, from IPAdapter Weights)."""
    if isinstance(weight, torch.Tensor):
        return weight.flatten().float() if weight.numel() > 1 else float(weight.flatten()[0])
    if isinstance(weight, (list, tuple)):
        if not weight:
            raise ValueError("the weight list is empty: connect a schedule with at least one value")
        return torch.tensor([float(w) for w in weight]) if len(weight) > 1 else float(weight[0])
    return float(weight)


def resolve_layer_weights(
    arch: str,
    weight_type: str = "linear",
    weight: Weight = 1.0,
    weight_composition: float | None = None,
    boost: float | None = None,
    layer_weights: Mapping[int | tuple[int, int], float] | None = None,
) -> dict[AttnKey, LayerWeight]:
    """Weight of every cross-attention site of ``arch``; sites with weight 0 are left out.

    ``weight`` may be a 1-D tensor of per-frame weights: every value that the old maps derive from
    ``weight`` then becomes per-frame, values from ``weight_composition`` / ``boost`` stay numbers.
    ``weight_composition`` defaults to 1.0 as the old extension's did (it is not ``weight``).
    ``layer_weights`` (Mad Scientist style) overrides the type's map: keys are t_idx, or
    (t_idx, block_index) for one transformer block of an SDXL SpatialTransformer; values are
    multiplied by ``weight``; layers it does not name get 0.
    """
    sites = layer_map(arch)
    count = transformer_count(arch)
    if weight_type not in WEIGHT_TYPES + HIDDEN_WEIGHT_TYPES:
        raise ValueError(f"unknown weight_type {weight_type!r}; choose one of: {', '.join(WEIGHT_TYPES)}")
    swap_layers = set(_SWAPS[weight_type](arch)) if weight_type in _SWAPS else set()
    if layer_weights is not None:
        return _from_layer_weights(sites, count, weight, layer_weights, swap_layers)
    per_site: dict[AttnKey, Weight]
    if weight_type in _CURVES:
        per_site = {s.key: weight * _curve(weight_type, s.transformer_index, count, s.block) for s in sites}
    else:
        values = _map_values(weight_type, weight, weight_composition, boost)
        per_t: dict[int, Weight] = {}
        for indices, var, factor in _MAPS[weight_type][arch]:
            for t in indices:
                per_t[t] = values[var] * factor
        per_site = {s.key: per_t.get(s.transformer_index, 0.0) for s in sites}
    by_key = {s.key: s for s in sites}
    return {
        key: LayerWeight(w, by_key[key].transformer_index in swap_layers)
        for key, w in per_site.items()
        if _nonzero(w)
    }


def _map_values(weight_type: str, weight: Weight, weight_composition: float | None,
                boost: float | None) -> dict[str, Weight]:
    """The variables of the style/composition maps, as the old extension set them per type."""
    wc = 1.0 if weight_composition is None else weight_composition
    b = weight
    if weight_type == "style transfer precise":  # style_boost drives the composition layers
        wc = weight if boost is None else boost
    elif weight_type == "composition precise":  # composition_boost drives the style layers
        wc, b = weight, (weight if boost is None else boost)
    return {"w": weight, "wc": wc, "b": b}


def _from_layer_weights(
    sites: tuple[LayerSite, ...],
    count: int,
    weight: Weight,
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
        w = value * weight
        if value != 0 and _nonzero(w):
            out[s.key] = LayerWeight(w, s.transformer_index in swap_layers)
    return out


# --- Mad Scientist ``layer_weights`` text ----------------------------------------------------------
_ARCH_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}
_KEY = re.compile(r"^(?:(?P<index>\d+)|(?P<block>input|output)_(?P<id>\d+)|(?P<middle>middle))(?:\.(?P<sub>\d+))?$")


def layer_names(arch: str) -> dict[str, int]:
    """Readable name of every SpatialTransformer -> its transformer index: ``input_7``, ``middle``, ``output_1``.

    The names are ComfyUI's block ids (``input_blocks.7``, ``middle_block``, ``output_blocks.1``).
    """
    names: dict[str, int] = {}
    for site in layer_map(arch):
        name = "middle" if site.block == "middle" else f"{site.block}_{site.key[1]}"
        names.setdefault(name, site.transformer_index)
    return names


def _depths(arch: str) -> dict[int, int]:
    depth: dict[int, int] = {}
    for site in layer_map(arch):
        depth[site.transformer_index] = depth.get(site.transformer_index, 0) + 1
    return depth


def _valid_keys(arch: str) -> str:
    count = transformer_count(arch)
    text = f"0-{count - 1} or {', '.join(layer_names(arch))}"
    if max(_depths(arch).values()) > 1:
        text += "; add .N for transformer block N of one layer (e.g. output_1.3 or 6.3)"
    return text


def parse_layer_weights(text: str, arch: str) -> dict[int | tuple[int, int], float]:
    """Parse Mad Scientist ``layer_weights``: ``key:value`` entries separated by commas and/or newlines.

    A key is a transformer index (``3``, as the old extension took), a block name (``input_8``,
    ``middle``, ``output_1``: see ``layer_names``), either followed by ``.N`` to address one transformer
    block of an SDXL layer (``output_1.3``). Blank entries (a trailing comma, empty lines) are skipped.
    Returns {t_idx: value} / {(t_idx, N): value} for ``resolve_layer_weights``; ``{}`` for blank text.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown UNet architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    names, depths, count = layer_names(arch), _depths(arch), transformer_count(arch)
    out: dict[int | tuple[int, int], float] = {}
    for raw in re.split(r"[,\n]", text):
        entry = raw.strip()
        if not entry:
            continue
        key_text, sep, value_text = entry.partition(":")
        key_text, value_text = key_text.strip(), value_text.strip()

        def bad(why: str) -> ValueError:
            return ValueError(f"layer_weights entry {entry!r}: {why}. Valid keys for {_ARCH_NAMES[arch]}: "
                              f"{_valid_keys(arch)}.")

        if not sep:
            raise bad("expected key:value, e.g. 3:0.5")
        try:
            value = float(value_text)
        except ValueError:
            raise bad(f"{value_text!r} is not a number") from None
        match = _KEY.match(key_text)
        if match is None:
            raise bad(f"{key_text!r} is not a layer key")
        if match["index"] is not None:
            t = int(match["index"])
            if t >= count:
                raise bad(f"index {t} is out of range")
        else:
            name = "middle" if match["middle"] else f"{match['block']}_{int(match['id'])}"
            if name not in names:
                raise bad(f"{_ARCH_NAMES[arch]} has no cross-attention in {name}")
            t = names[name]
        key: int | tuple[int, int] = t
        if match["sub"] is not None:
            sub = int(match["sub"])
            if sub >= depths[t]:
                raise bad(f"layer {t} has {depths[t]} transformer block(s), numbered 0-{depths[t] - 1}")
            key = (t, sub)
        if key in out:
            raise bad("this layer is given twice")
        out[key] = value
    return out
