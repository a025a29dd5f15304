"""Utility nodes (category ipadapter/utils): image prep for the encoder, noise images, joining weight lists."""
from __future__ import annotations

from ..ipadapter.image import CROP_POSITIONS, INTERPOLATIONS, prep_for_clip_vision
from ..ipadapter.noise import NOISE_TYPES, make_noise
from ..ipadapter.schedules import combine_weights
from .registry import node_table
from .specs import FromSpecs

_CATEGORY = "ipadapter/utils"


class PrepImageForClipVision(FromSpecs):
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "prep_image"
    REQUIRED = (
        ("image", {"tooltip": "Image(s) to square and resize for the CLIP vision encoder."}),
        ("interpolation", (list(INTERPOLATIONS), {"tooltip": "Resampling filter (PIL)."})),
        ("crop_position", (list(CROP_POSITIONS), {"tooltip": "Which square to keep, or pad to a square with black."})),
        ("sharpening", {"tooltip": "Contrast-adaptive sharpening after resizing."}),
    )
    OPTIONAL = (("size", ("INT", {"default": 224, "min": 64, "max": 1024, "step": 8,
                                  "tooltip": "224 for most encoders, 336 for ViT-L-336 (Kolors)."})),)

    def prep_image(self, image, interpolation="LANCZOS", crop_position="top", sharpening=0.0, size=224):
        return (prep_for_clip_vision(image, interpolation, crop_position, sharpening, size),)


class IPAdapterNoise(FromSpecs):
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make_noise"
    REQUIRED = (
        ("type", (list(NOISE_TYPES), {"tooltip": "fade: mix towards noise; dissolve: replace pixels; "
                                                 "gaussian: add noise; shuffle: distort and flip the image."})),
        ("strength", ("FLOAT", {"default": 1.0, "min": 0, "max": 1, "step": 0.05,
                                "tooltip": "How much noise (0: the image unchanged, except for shuffle)."})),
        ("blur", ("INT", {"default": 0, "min": 0, "max": 32, "step": 1,
                          "tooltip": "Gaussian blur kernel size in pixels (even sizes are rounded up)."})),
    )
    OPTIONAL = (("image_optional", ("IMAGE", {
        "tooltip": "Image to add noise to (center square, resized to 224 px); black when not connected."})),)

    def make_noise(self, type, strength, blur, image_optional=None):  # noqa: A002 (the old input name)
        return (make_noise(type, strength, blur, image_optional),)


class IPAdapterCombineWeights(FromSpecs):
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("FLOAT", "INT")
    RETURN_NAMES = ("weights", "count")
    FUNCTION = "combine"
    REQUIRED = (
        ("weights_1", ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                 "tooltip": "A weight, or a list of weights from IPAdapter Weights."})),
        ("weights_2", ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                 "tooltip": "Appended after weights_1."})),
    )

    def combine(self, weights_1, weights_2):
        weights = combine_weights(weights_1, weights_2)
        return (weights, len(weights))


NODES = node_table(PrepImageForClipVision, IPAdapterNoise, IPAdapterCombineWeights)
