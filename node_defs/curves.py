"""IPAdapter Weight Curve (category ipadapter/weights): a multiplier of an adapter's weight over the sampling steps,
for the apply nodes' optional ``weight_curve`` input."""
from __future__ import annotations

from ..ipadapter.curves import CURVE_PRESETS, INTERPOLATIONS, make_curve
from .registry import node_table
from .specs import FromSpecs


class IPAdapterWeightCurve(FromSpecs):
    CATEGORY = "ipadapter/weights"
    RETURN_TYPES = ("WEIGHT_CURVE",)
    RETURN_NAMES = ("weight_curve",)
    FUNCTION = "make"
    REQUIRED = (
        ("preset", (list(CURVE_PRESETS), {
            "default": "fade out",
            "tooltip": "fade out: full weight at the first step down to 0 at the last (composition from the image, "
                       "details from the prompt); fade in: the reverse; bell: strongest mid-way; custom: the "
                       "keyframes below."})),
        ("interpolation", (list(INTERPOLATIONS), {
            "tooltip": "Between keyframes: linear, ease (slow near each keyframe) or step (hold a keyframe's value "
                       "until the next one, like start_at / end_at)."})),
        ("keyframes", ("STRING", {
            "default": "0:1, 0.5:0.5, 1:0", "multiline": True,
            "tooltip": "custom only: progress:multiplier pairs, progress 0 at the first step and 1 at the end, "
                       "e.g. '0:1, 0.6:0.3, 1:0'. Before the first / after the last keyframe its value holds."})),
    )

    def make(self, preset, interpolation, keyframes):
        return (make_curve(preset, interpolation, keyframes),)


NODES = node_table(IPAdapterWeightCurve)
