"""Per-layer weights: the weight types table (curves and style/composition maps, token swaps) and the
embeds scaling table (how a layer's weight scales the image branch's K and V), with their math.

Layers are addressed by ComfyUI's ``transformer_index`` (t_idx: 0-15 on SD1.5, 0-10 on SDXL), as the
old extension's maps are; the middle block (t_idx 6 on SD1.5, 4 on SDXL) is patched here, unlike there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Union

import torch

from .layers import ARCH_NAMES, ARCHITECTURES, AttnKey, LayerSite, layer_map, transformer_count

# A weight is one number, or one per frame (a 1-D tensor) for the Batch nodes' per-frame schedules.
Weight = Union[float, torch.Tensor]


@dataclass(frozen=True)
class LayerWeight:
    weight: Weight
    # "Precise" types swap the image tokens on suppressed layers (cond sees none, uncond sees the
    # reference), which turns the branch into negative guidance there.
    swap: bool = False


# --------------------------------------------------------------------------------------------------
# Weight types
# --------------------------------------------------------------------------------------------------
# A curve: (t_idx, transformer count, block name) -> factor of the weight at that layer.
Curve = Callable[[int, int, str], float]
# A map: arch -> ((t_idx..., variable, factor), ...): the layers named get variable * factor, others 0;
# the variables are "w" (weight), "wc" (composition weight or style boost) and "b" (composition boost).
LayerMap = Mapping[str, tuple[tuple[tuple[int, ...], str, float], ...]]


def _weak(*blocks: str) -> Curve:
    return lambda t, count, block: 0.2 if block in blocks else 1.0


def _all(arch: str) -> tuple[int, ...]:
    return tuple(range(transformer_count(arch)))


def _but(arch: str, *skip: int) -> tuple[int, ...]:
    return tuple(t for t in _all(arch) if t not in skip)


def _plain_values(weight: Weight, weight_composition: float | None, boost: float | None) -> dict[str, Weight]:
    return {"w": weight, "wc": 1.0 if weight_composition is None else weight_composition, "b": weight}


def _style_precise_values(weight: Weight, weight_composition: float | None, boost: float | None) -> dict[str, Weight]:
    # style_boost drives the composition layers
    return {"w": weight, "wc": weight if boost is None else boost, "b": weight}


def _composition_precise_values(weight: Weight, weight_composition: float | None,
                                boost: float | None) -> dict[str, Weight]:
    # composition_boost drives the style layers
    return {"w": weight, "wc": weight, "b": weight if boost is None else boost}


# The transformer indices the composition weight acts on (input_blocks 8 on SDXL, 7 and 8 on SD1.5).
COMPOSITION_LAYERS: dict[str, tuple[int, ...]] = {"sdxl": (3,), "sd15": (4, 5)}
_SD15_STYLE = (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)
_STYLE_AND_COMPOSITION: LayerMap = {
    "sdxl": (((3,), "wc", 1.0), ((6,), "w", 1.0)),
    "sd15": ((_SD15_STYLE, "w", 1.0), ((4,), "wc", 0.25), ((5,), "wc", 1.0)),
}


@dataclass(frozen=True)
class WeightType:
    """One weight type: a curve over the layers, or a style/composition map; and where tokens are swapped."""

    name: str
    curve: Curve | None = None
    layer_map: LayerMap | None = None  # used when there is no curve
    values: Callable[[Weight, float | None, float | None], dict[str, Weight]] = _plain_values  # map variables
    swaps: Callable[[str], tuple[int, ...]] | None = None  # arch -> t_idx whose tokens are swapped
    hidden: bool = False  # reachable only through the Style & Composition nodes' expand_style option


WEIGHT_TYPE_TABLE: dict[str, WeightType] = {t.name: t for t in (
    WeightType("linear", curve=lambda t, count, block: 1.0),
    WeightType("ease in", curve=lambda t, count, block: 0.05 + 0.95 * (1 - t / count)),
    WeightType("ease out", curve=lambda t, count, block: 0.05 + 0.95 * (t / count)),
    WeightType("ease in-out", curve=lambda t, count, block: 0.05 + 0.95 * (1 - abs(t - count / 2) / (count / 2))),
    WeightType("reverse in-out", curve=lambda t, count, block: 0.05 + 0.95 * (abs(t - count / 2) / (count / 2))),
    WeightType("weak input", curve=_weak("input")),
    WeightType("weak output", curve=_weak("output")),
    WeightType("weak middle", curve=_weak("middle")),
    WeightType("strong middle", curve=_weak("input", "output")),
    WeightType("style transfer", layer_map={
        "sdxl": (((6,), "w", 1.0),),
        "sd15": ((_SD15_STYLE, "w", 1.0),),
    }),
    WeightType("composition", layer_map={
        "sdxl": (((3,), "w", 1.0),),
        "sd15": (((4,), "w", 0.25), ((5,), "w", 1.0)),
    }),
    WeightType("strong style transfer", layer_map={
        "sdxl": ((_but("sdxl", 3), "w", 1.0),),
        "sd15": ((_but("sd15", 4, 5), "w", 1.0),),
    }),
    WeightType("style and composition", layer_map=_STYLE_AND_COMPOSITION),
    # Swapped on the composition layers: precise style.
    WeightType("style transfer precise", layer_map=_STYLE_AND_COMPOSITION, values=_style_precise_values,
               swaps=lambda arch: COMPOSITION_LAYERS[arch]),
    # Swapped on every layer but the composition ones: precise composition.
    WeightType("composition precise", layer_map={
        "sdxl": (((0, 1, 2, 4, 5, 7, 8, 9, 10), "b", 0.1), ((3,), "wc", 1.0), ((6,), "b", 1.0)),
        "sd15": ((_SD15_STYLE, "b", 1.0), ((4,), "wc", 0.25), ((5,), "wc", 1.0), ((6, 7, 8), "b", 0.1)),
    }, values=_composition_precise_values, swaps=lambda arch: _but(arch, *COMPOSITION_LAYERS[arch])),
    WeightType("strong style and composition", layer_map={
        "sdxl": ((_but("sdxl", 3), "w", 1.0), ((3,), "wc", 1.0)),
        "sd15": ((_but("sd15", 4, 5), "w", 1.0), ((4, 5), "wc", 1.0)),
    }, hidden=True),
)}
WEIGHT_TYPES = tuple(name for name, t in WEIGHT_TYPE_TABLE.items() if not t.hidden)  # the nodes' choices
HIDDEN_WEIGHT_TYPES = tuple(name for name, t in WEIGHT_TYPE_TABLE.items() if t.hidden)


def find_weight_type(name: str) -> WeightType:
    """The record of weight type ``name``; ValueError listing the choices for an unknown one."""
    if name not in WEIGHT_TYPE_TABLE:
        raise ValueError(f"unknown weight_type {name!r}; choose one of: {', '.join(WEIGHT_TYPES)}")
    return WEIGHT_TYPE_TABLE[name]


# --------------------------------------------------------------------------------------------------
# Embeds scaling: how a layer's weight scales the image branch's K and V
# --------------------------------------------------------------------------------------------------
def _unscaled(t: torch.Tensor, w: Weight) -> torch.Tensor:
    return t


def _scaled(t: torch.Tensor, w: Weight) -> torch.Tensor:
    return t * w


def _mean_scaled(v: torch.Tensor, w: Weight) -> torch.Tensor:
    mu = v.mean(dim=1, keepdim=True)  # only V's mean over the tokens is weighted
    return (v - mu) + w * mu


@dataclass(frozen=True)
class EmbedsScaling:
    name: str
    scale_k: Callable[[torch.Tensor, Weight], torch.Tensor]
    scale_v: Callable[[torch.Tensor, Weight], torch.Tensor]
    channel_penalty: bool = False  # narrower layers get proportionally less: the old extension's C / 1280

    def scale(self, w: Weight, width: int, max_width: int, kc: torch.Tensor, vc: torch.Tensor, ku: torch.Tensor,
              vu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """K and V of cond and uncond scaled by ``w`` (a number or [rows, 1, 1] per-frame weights) at a
        layer ``width`` channels wide, the widest being ``max_width``."""
        if self.channel_penalty:
            w = w * width / max_width
        return self.scale_k(kc, w), self.scale_v(vc, w), self.scale_k(ku, w), self.scale_v(vu, w)

    # A weight curve multiplies the weight per UNet call by m; these say how cached K/V follow (curves.py).
    @property
    def k_scaled(self) -> bool:
        """K is proportional to the weight (so K at weight w * m is m times K at w)."""
        return self.scale_k is _scaled

    @property
    def v_mean(self) -> bool:
        """Only V's token mean follows the weight: V(w * m) = V(w) + (m - 1) * ``mean_part``; otherwise V is
        proportional to the weight."""
        return self.scale_v is _mean_scaled

    def mean_part(self, w: Weight, width: int, max_width: int, v: torch.Tensor) -> torch.Tensor:
        """The weighted token mean of raw V (the part of V a weight change moves), [rows, 1, C]."""
        if self.channel_penalty:
            w = w * width / max_width
        return w * v.mean(dim=1, keepdim=True)


EMBEDS_SCALING_TABLE: dict[str, EmbedsScaling] = {s.name: s for s in (
    # Attn(q, K, w V) = w Attn(q, K, V): V is scaled once, not every attention call.
    EmbedsScaling("V only", _unscaled, _scaled),
    EmbedsScaling("K+V", _scaled, _scaled),
    EmbedsScaling("K+V w/ C penalty", _scaled, _scaled, channel_penalty=True),
    EmbedsScaling("K+mean(V) w/ C penalty", _scaled, _mean_scaled, channel_penalty=True),
)}
EMBEDS_SCALING = tuple(EMBEDS_SCALING_TABLE)


def find_embeds_scaling(name: str) -> EmbedsScaling:
    """The record of embeds scaling ``name``; ValueError listing the choices for an unknown one."""
    if name not in EMBEDS_SCALING_TABLE:
        raise ValueError(f"unknown embeds_scaling {name!r}; choose one of {EMBEDS_SCALING}")
    return EMBEDS_SCALING_TABLE[name]


# --------------------------------------------------------------------------------------------------
# Resolving a layer's weight
# --------------------------------------------------------------------------------------------------
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
    record = find_weight_type(weight_type)
    swap_layers = set(record.swaps(arch)) if record.swaps is not None else set()
    if layer_weights is not None:
        return _from_layer_weights(sites, count, weight, layer_weights, swap_layers)
    per_site: dict[AttnKey, Weight]
    if record.curve is not None:
        per_site = {s.key: weight * record.curve(s.transformer_index, count, s.block) for s in sites}
    else:
        values = record.values(weight, weight_composition, boost)
        per_t: dict[int, Weight] = {}
        for indices, var, factor in record.layer_map[arch]:
            for t in indices:
                per_t[t] = values[var] * factor
        per_site = {s.key: per_t.get(s.transformer_index, 0.0) for s in sites}
    by_key = {s.key: s for s in sites}
    return {
        key: LayerWeight(w, by_key[key].transformer_index in swap_layers)
        for key, w in per_site.items()
        if _nonzero(w)
    }


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
            return ValueError(f"layer_weights entry {entry!r}: {why}. Valid keys for {ARCH_NAMES[arch]}: "
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
                raise bad(f"{ARCH_NAMES[arch]} has no cross-attention in {name}")
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
