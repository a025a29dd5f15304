"""Input specs and helpers shared by the node classes: one definition of each list and range."""
from __future__ import annotations

from ..ipadapter.adapter import Adapter
from ..ipadapter.encode import COMBINE_METHODS, NEGATIVE_MODES
from ..ipadapter.weights import EMBEDS_SCALING, WEIGHT_TYPES

START_AT = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                      "tooltip": "Fraction of sampling at which the image prompt starts acting."})
END_AT = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                    "tooltip": "Fraction of sampling after which the image prompt stops acting."})
WEIGHT_TYPE = (list(WEIGHT_TYPES), {"tooltip": "How the weight is spread over the UNet's layers."})
COMBINE = (list(COMBINE_METHODS), {"tooltip": "How several reference images are merged before projection."})
SCALING = (list(EMBEDS_SCALING), {"tooltip": "How the weight scales the image branch: its output (V only) or its keys/values."})
NEGATIVE_MODE = (list(NEGATIVE_MODES), {
    "default": "black image",
    "tooltip": "Negative reference when no image_negative is given: a black image (ComfyUI's usual choice) "
               "or all-zero normalised pixels (the reference implementation's choice)."})
IPADAPTER = ("IPADAPTER", {"tooltip": "From IPAdapter Model Loader (or a Unified Loader)."})
MODEL = ("MODEL", {"tooltip": "The SD1.5 or SDXL model to patch; the input model itself is not changed."})
IMAGE = ("IMAGE", {"tooltip": "The reference image(s). Several images are combined as combine_embeds says."})
IMAGE_NEGATIVE = ("IMAGE", {"tooltip": "Optional negative reference (default: a black image, or zeros for basic models)."})
EMBEDS = ("EMBEDS", {"tooltip": "Encoder features from IPAdapter Encoder (or Load Embeds)."})
ATTN_MASK = ("MASK", {"tooltip": "Where the image prompt acts (white) and where not (black); any size with the latent's aspect ratio."})
CLIP_VISION = ("CLIP_VISION", {"tooltip": "The CLIP vision encoder the adapter was trained with."})


def weight_input(low: float, high: float, step: float = 0.05):
    return ("FLOAT", {"default": 1.0, "min": low, "max": high, "step": step,
                      "tooltip": "Strength of the image prompt."})


def unpack(ipadapter, clip_vision=None):
    """An IPADAPTER is an Adapter, or a Unified Loader pipeline dict that also carries the encoder."""
    if isinstance(ipadapter, dict) and "ipadapter" in ipadapter:
        clip_vision = clip_vision if clip_vision is not None else ipadapter.get("clipvision", {}).get("model")
        ipadapter = ipadapter["ipadapter"]["model"]
    if not isinstance(ipadapter, Adapter):
        raise TypeError("the ipadapter input must come from IPAdapter Model Loader or a Unified Loader")
    return ipadapter, clip_vision
