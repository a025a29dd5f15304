"""The one table of node input specs, and INPUT_TYPES built from it.

A node lists its inputs by name, in its widget order (the old extension's order); each name is looked up
in SPECS, which holds every input more than one node has and every input of the nodes that apply or
encode an image prompt. An item may also be ``(name, options)``, to change some options of that table
entry on one node (a smaller range, another tooltip), or ``(name, spec)`` for an input that only one
utility node has (its tooltip says what it means there).
"""
from __future__ import annotations

from typing import Iterable, Union

from ..ipadapter import insightface_glue
from ..ipadapter.apply import ATTENTION_MODES
from ..ipadapter.families import FACEID_V2_OPTIONS
from ..ipadapter.encode import COMBINE_METHODS, NEGATIVE_MODES
from ..ipadapter.weights import EMBEDS_SCALING, WEIGHT_TYPES

def _strength(tooltip: str, default: float = 1.0, low: float = -1, high: float = 5) -> tuple:
    return ("FLOAT", {"default": default, "min": low, "max": high, "step": 0.05, "tooltip": tooltip})


SPECS: dict[str, tuple] = {
    # what is patched, and with what
    "model": ("MODEL", {"tooltip": "The SD1.5 or SDXL model to patch; the input model itself is not changed."}),
    "ipadapter": ("IPADAPTER", {"tooltip": "From IPAdapter Model Loader (or a Unified Loader)."}),
    "clip_vision": ("CLIP_VISION", {"tooltip": "The CLIP vision encoder the adapter was trained with."}),
    "insightface": ("INSIGHTFACE", {"tooltip": "From IPAdapter InsightFace Loader: detects the face and computes "
                                               "its embedding."}),
    # references
    "image": ("IMAGE", {"tooltip": "The reference image(s). Several images are combined as combine_embeds says."}),
    "image_negative": ("IMAGE", {"tooltip": "Optional negative reference (default: a black image, or zeros for "
                                            "basic models)."}),
    "image_style": ("IMAGE", {"tooltip": "Reference for the style (the style layers)."}),
    "image_composition": ("IMAGE", {"tooltip": "Reference for the composition (the composition layer)."}),
    "mask": ("MASK", {"tooltip": "Masks the reference in the encoder's input (masked pixels become neutral)."}),
    "pos_embed": ("EMBEDS", {"tooltip": "Encoder features from IPAdapter Encoder (or Load Embeds)."}),
    "neg_embed": ("EMBEDS", {"tooltip": "Negative features (default: from a black image, or zeros)."}),
    "face_embeds": ("FACE_EMBEDS", {"tooltip": "Precomputed face embeddings (IPAdapter Face Embeds or Load Face "
                                               "Embeds); when connected, insightface is not needed and `image` is "
                                               "taken as the face crop(s)."}),
    "ipadapter_params": ("IPADAPTER_PARAMS", {"tooltip": "From IPAdapter Regional Conditioning (or IPAdapter "
                                                         "Combine Params)."}),
    # strengths
    "weight": _strength("Strength of the image prompt."),
    "weight_style": _strength("Strength of the style image."),
    "weight_composition": _strength("Strength of the composition image."),
    "weight_faceidv2": _strength("FaceID Plus v2 (and Kolors): strength of the CLIP face-structure branch added to "
                                 "the identity tokens. Ignored by other FaceID models.", high=5.0),
    "weight_kolors": _strength("Scales the Kolors UNet's encoder_hid_proj applied to the face tokens.", high=5.0),
    "style_boost": _strength("Weight on the composition layer, where the reference acts as negative guidance to "
                             "keep its composition out (SDXL: start at 2; SD1.5: -1..1).", low=-5),
    "composition_boost": _strength("Weight on the style layers, where the reference acts as negative guidance to "
                                   "keep its style out (0: off; try 0.3).", default=0.0, low=-5),
    # how and when it acts
    "attn_mask": ("MASK", {"tooltip": "Where the image prompt acts (white) and where not (black); any size with the "
                                      "latent's aspect ratio."}),
    "weight_type": (list(WEIGHT_TYPES), {"tooltip": "How the weight is spread over the UNet's layers (on Flux / "
                                                    "SD3.5: the linear and ease curves, and experimental style / "
                                                    "composition block maps)."}),
    "combine_embeds": (list(COMBINE_METHODS), {"tooltip": "How several reference images are merged before "
                                                          "projection."}),
    "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                           "tooltip": "Fraction of sampling at which the image prompt starts acting."}),
    "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                         "tooltip": "Fraction of sampling after which the image prompt stops acting."}),
    "embeds_scaling": (list(EMBEDS_SCALING), {"tooltip": "How the weight scales the image branch: its output "
                                                         "(V only) or its keys/values."}),
    "negative_mode": (list(NEGATIVE_MODES), {
        "default": "black image",
        "tooltip": "Negative reference when no image_negative is given: a black image (ComfyUI's usual choice) "
                   "or all-zero normalised pixels (the reference implementation's choice)."}),
    "weight_curve": ("WEIGHT_CURVE", {"tooltip": "From IPAdapter Weight Curve: multiplies the weight over the "
                                                 "sampling steps (e.g. fade out). Not connected: constant."}),
    "attention_mode": (list(ATTENTION_MODES), {
        "default": "decoupled",
        "tooltip": "decoupled: the image attention is added to the text attention (how the adapters were "
                   "trained). joint: Fooocus's formulation, image tokens join the text tokens in one softmax (use "
                   "embeds_scaling 'K+mean(V) w/ C penalty' for Fooocus's scaling; no attn_mask)."}),
    "expand_style": ("BOOLEAN", {"default": False,
                                 "tooltip": "Apply the style image to every layer except the composition one "
                                            "(stronger style), not only to the style layer."}),
    "layer_weights": ("STRING", {"default": "", "multiline": True,
                                 "tooltip": "key:value per layer, separated by commas or new lines (e.g. "
                                            "'3:1, 6:0.5' or 'input_8:1, output_1.3:0.5'); unnamed layers get 0. "
                                            "Keys: transformer index, or block name (input_N, middle, output_N) with "
                                            "an optional .N for one SDXL transformer block. Empty: use weight_type."}),
    # encoding
    "encode_batch_size": ("INT", {"default": 0, "min": 0, "max": 4096,
                                  "tooltip": "Encode the images this many at a time (0: all at once); lowers peak "
                                             "memory for long batches, same result."}),
    "enhance_tiles": ("INT", {"default": 2, "min": 1, "max": 16,
                              "tooltip": "Also encode an N x N grid of tiles of the reference and merge their "
                                         "features, for more detail (1: off)."}),
    "enhance_ratio": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                "tooltip": "Share of the whole-image features beside the tiles' features."}),
    "sharpening": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                             "tooltip": "Contrast-adaptive sharpening of the tiles."}),
    # faces
    "faceid_version": (list(FACEID_V2_OPTIONS), {
        "default": FACEID_V2_OPTIONS[0],
        "tooltip": "FaceID Plus v1 or v2 (the files have identical tensors). 'auto from file name': v2 when the name "
                   "contains 'plusv2', as the old extension decided."}),
    "face_selection": (list(insightface_glue.FACE_SELECTIONS), {
        "tooltip": "Which face when an image holds several: the detector's first (best-scoring) one, or the largest."}),
}

# IPAdapter (the simple node) names three weight types its own way: choice -> the weight type used.
SIMPLE_WEIGHT_TYPES = {"standard": "linear", "prompt is more important": "ease out",
                       "style transfer": "style transfer"}
SIMPLE_WEIGHT_TYPE = (list(SIMPLE_WEIGHT_TYPES), {
    "tooltip": "standard: linear; prompt is more important: ease out; style transfer: style layers only."})

# The weight of the nodes whose weight the old extension capped at 3.
WEIGHT_UP_TO_3 = ("weight", {"max": 3})

# Every image-apply node's optional inputs, in the old extension's order.
APPLY_OPTIONAL = ("image_negative", "attn_mask", "clip_vision", "negative_mode", "weight_curve")

Input = Union[str, tuple]  # a SPECS name, or (name, options to change) / (name, a whole spec)


def _spec(item: Input) -> tuple[str, tuple]:
    if isinstance(item, str):
        return item, SPECS[item]
    name, change = item
    if isinstance(change, tuple):
        return name, change
    kind, options = SPECS[name]
    return name, (kind, {**options, **change})


def input_types(required: Iterable[Input], optional: Iterable[Input] = ()) -> dict:
    """ComfyUI's INPUT_TYPES for the listed inputs (no "optional" section when there is none)."""
    types = {"required": dict(map(_spec, required))}
    optional = dict(map(_spec, optional))
    if optional:
        types["optional"] = optional
    return types


class FromSpecs:
    """A node whose INPUT_TYPES lists REQUIRED / OPTIONAL items (see ``input_types``)."""

    REQUIRED: tuple[Input, ...] = ()
    OPTIONAL: tuple[Input, ...] = ()

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return input_types(cls.REQUIRED, cls.OPTIONAL)
