"""IPADAPTER_PARAMS: per-region image prompts (Regional Conditioning -> Combine Params -> From Params).

The value travelling between nodes is the old extension's plain dict of parallel lists, so params built
by other packs keep working: {"image": [...], "attn_mask": [...], "weight": [...], "weight_type": [...],
"start_at": [...], "end_at": [...]}; entry i is one image prompt with its own mask, weight and window.
"""
from __future__ import annotations

from typing import Any, Mapping

import node_helpers
from torch import Tensor

from .adapter import Adapter
from .apply import apply_adapter, encode_for
from .weights import WEIGHT_TYPE_TABLE

FIELDS = ("image", "attn_mask", "weight", "weight_type", "start_at", "end_at")


def make_params(image: Tensor, attn_mask: Tensor | None, weight, weight_type: str, start_at: float,
                end_at: float) -> dict[str, list]:
    """One region's params: every field a one-item list."""
    return {"image": [image], "attn_mask": [attn_mask], "weight": [weight], "weight_type": [weight_type],
            "start_at": [start_at], "end_at": [end_at]}


def combine_params(*params: Mapping[str, list] | None) -> dict[str, list]:
    """Concatenate params field by field, in order (None inputs are skipped)."""
    given = [p for p in params if p is not None]
    for i, p in enumerate(given, 1):
        _check(p, f"params_{i}")
    return {name: [item for p in given for item in p[name]] for name in FIELDS}


def param_entries(params: Mapping[str, list]) -> list[dict[str, Any]]:
    """One dict per region (keys: FIELDS), after checking the params are complete and consistent."""
    _check(params, "ipadapter_params")
    count = len(params["image"])
    return [{name: params[name][i] for name in FIELDS} for i in range(count)]


def apply_params(model, adapter: Adapter, clip_vision, params: Mapping[str, list], *, combine: str = "concat",
                 embeds_scaling: str = "V only", image_negative: Tensor | None = None,
                 negative_mode: str = "black image", unfold: bool = False):
    """IPAdapter from Params: every region's image prompt, with its own mask, weight and window."""
    for region in param_entries(params):
        if region["image"] is None:
            continue
        embeds = encode_for(adapter, clip_vision, region["image"], image_negative, negative_mode=negative_mode)
        model = apply_adapter(model, adapter, embeds, weight=region["weight"], weight_type=region["weight_type"],
                              combine=combine, start_at=region["start_at"], end_at=region["end_at"],
                              embeds_scaling=embeds_scaling, attn_mask=region["attn_mask"], unfold=unfold)
    return model


def _check(params: Mapping[str, list], what: str) -> None:
    if not isinstance(params, Mapping):
        raise TypeError(f"{what} must come from IPAdapter Regional Conditioning or IPAdapter Combine Params")
    missing = [name for name in FIELDS if name not in params]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}: build it with IPAdapter Regional Conditioning "
                         "(and IPAdapter Combine Params)")
    lengths = {name: len(params[name]) for name in FIELDS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{what} has lists of different lengths ({lengths}): every region needs one of each field")
    for i, weight_type in enumerate(params["weight_type"]):
        if weight_type not in WEIGHT_TYPE_TABLE:
            raise ValueError(f"{what} region {i + 1}: unknown weight_type {weight_type!r}")


def set_region(conditioning: list | None, mask: Tensor | None, strength: float) -> list | None:
    """Confine a text conditioning to ``mask`` (at ``strength``), as ComfyUI's Conditioning (Set Mask) does
    with set_cond_area "default"; unchanged without a mask or a conditioning."""
    if conditioning is None or mask is None:
        return conditioning
    mask = mask[None] if mask.dim() == 2 else mask
    return node_helpers.conditioning_set_values(
        conditioning, {"mask": mask, "set_area_to_bounds": False, "mask_strength": strength})
