"""ComfyUI node classes: parse inputs, call the ipadapter library, return outputs.

Class keys, input names, order, types, defaults and outputs follow ComfyUI_IPAdapter_plus 2.0.0 so
saved workflows load unchanged; inputs added here come last and are optional.
"""
from __future__ import annotations

import folder_paths

from .ipadapter.adapter import Adapter, load_adapter
from .ipadapter.apply import Embeds, apply_adapter, encode_for
from .ipadapter.encode import COMBINE_METHODS, NEGATIVE_MODES, check_encoder, encode_images, negative_embeds
from .ipadapter.image import CROP_POSITIONS, INTERPOLATIONS, prep_for_clip_vision
from .ipadapter.paths import register_model_folders
from .ipadapter.weights import EMBEDS_SCALING, WEIGHT_TYPES

register_model_folders()

# Shared input specs: one definition of each list and range.
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


class IPAdapterModelLoader:
    CATEGORY = "ipadapter/loaders"
    RETURN_TYPES = ("IPADAPTER",)
    FUNCTION = "load_ipadapter_model"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ipadapter_file": (folder_paths.get_filename_list("ipadapter"), {
            "tooltip": "An IP-Adapter checkpoint in models/ipadapter; its family is read from its tensors."})}}

    def load_ipadapter_model(self, ipadapter_file):
        return (load_adapter(folder_paths.get_full_path_or_raise("ipadapter", ipadapter_file)),)


class IPAdapterAdvanced:
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_ipadapter"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",), "ipadapter": IPADAPTER, "image": ("IMAGE",),
                "weight": weight_input(-1, 5), "weight_type": WEIGHT_TYPE, "combine_embeds": COMBINE,
                "start_at": START_AT, "end_at": END_AT, "embeds_scaling": SCALING,
            },
            "optional": {
                "image_negative": ("IMAGE",), "attn_mask": ATTN_MASK, "clip_vision": CLIP_VISION,
                "negative_mode": NEGATIVE_MODE,
            },
        }

    def apply_ipadapter(self, model, ipadapter, image, weight, weight_type, combine_embeds, start_at, end_at,
                        embeds_scaling, image_negative=None, attn_mask=None, clip_vision=None,
                        negative_mode="black image", unfold=False, encode_batch_size=0):
        adapter, clip_vision = unpack(ipadapter, clip_vision)
        embeds = encode_for(adapter, clip_vision, image, image_negative, encode_batch_size, negative_mode)
        return (apply_adapter(model, adapter, embeds, weight=weight, weight_type=weight_type, combine=combine_embeds,
                              start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling,
                              attn_mask=attn_mask, unfold=unfold),)


class IPAdapterSimple:
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_ipadapter"
    WEIGHT_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",), "ipadapter": IPADAPTER, "image": ("IMAGE",), "weight": weight_input(-1, 3),
                "start_at": START_AT, "end_at": END_AT, "weight_type": (list(cls.WEIGHT_TYPES),),
            },
            "optional": {"attn_mask": ATTN_MASK, "clip_vision": CLIP_VISION},
        }

    def apply_ipadapter(self, model, ipadapter, image, weight, start_at, end_at, weight_type, attn_mask=None,
                        clip_vision=None):
        adapter, clip_vision = unpack(ipadapter, clip_vision)
        if clip_vision is None:
            raise ValueError("IPAdapter needs a CLIP vision model: use the IPAdapter Unified Loader (it bundles one) "
                             "or connect clip_vision.")
        embeds = encode_for(adapter, clip_vision, image)
        return (apply_adapter(model, adapter, embeds, weight=weight, weight_type=self.WEIGHT_TYPES[weight_type],
                              start_at=start_at, end_at=end_at, attn_mask=attn_mask),)


class IPAdapterEncoder:
    CATEGORY = "ipadapter/embeds"
    RETURN_TYPES = ("EMBEDS", "EMBEDS")
    RETURN_NAMES = ("pos_embed", "neg_embed")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"ipadapter": IPADAPTER, "image": ("IMAGE",), "weight": weight_input(-1, 3, 0.01)},
            "optional": {"mask": ("MASK",), "clip_vision": CLIP_VISION, "negative_mode": NEGATIVE_MODE},
        }

    def encode(self, ipadapter, image, weight, mask=None, clip_vision=None, negative_mode="black image"):
        adapter, clip_vision = unpack(ipadapter, clip_vision)
        embeds = encode_for(adapter, clip_vision, image, negative_mode=negative_mode, mask=mask)
        pos = embeds.cond * weight if weight != 1 else embeds.cond
        return (pos, embeds.uncond)


class IPAdapterEmbeds:
    CATEGORY = "ipadapter/embeds"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_ipadapter"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",), "ipadapter": IPADAPTER, "pos_embed": ("EMBEDS",), "weight": weight_input(-1, 3),
                "weight_type": WEIGHT_TYPE, "start_at": START_AT, "end_at": END_AT, "embeds_scaling": SCALING,
            },
            "optional": {"neg_embed": ("EMBEDS",), "attn_mask": ATTN_MASK, "clip_vision": CLIP_VISION,
                         "negative_mode": NEGATIVE_MODE},
        }

    def apply_ipadapter(self, model, ipadapter, pos_embed, weight, weight_type, start_at, end_at, embeds_scaling,
                        neg_embed=None, attn_mask=None, clip_vision=None, negative_mode="black image", unfold=False):
        adapter, clip_vision = unpack(ipadapter, clip_vision)
        if neg_embed is None:
            output = adapter.spec.encoder.output
            if output != "image_embeds" and clip_vision is None:
                raise ValueError(f"{adapter.name}: without neg_embed the negative is encoded from a black image; "
                                 "connect clip_vision or neg_embed.")
            if clip_vision is not None:
                check_encoder(adapter.spec, clip_vision, adapter.name)
            neg_embed = negative_embeds(clip_vision, output, pos_embed, mode=negative_mode)
        return (apply_adapter(model, adapter, Embeds(pos_embed, neg_embed), weight=weight, weight_type=weight_type,
                              start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask,
                              unfold=unfold),)


class PrepImageForClipVision:
    CATEGORY = "ipadapter/utils"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "prep_image"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",), "interpolation": (list(INTERPOLATIONS),), "crop_position": (list(CROP_POSITIONS),
                {"default": "center"}),
                "sharpening": ("FLOAT", {"default": 0.0, "min": 0, "max": 1, "step": 0.05}),
            },
            "optional": {"size": ("INT", {"default": 224, "min": 64, "max": 1024, "step": 8,
                                          "tooltip": "224 for most encoders, 336 for ViT-L-336 (Kolors)."})},
        }

    def prep_image(self, image, interpolation="LANCZOS", crop_position="center", sharpening=0.0, size=224):
        return (prep_for_clip_vision(image, interpolation, crop_position, sharpening, size),)


NODE_CLASS_MAPPINGS = {
    "IPAdapter": IPAdapterSimple,
    "IPAdapterAdvanced": IPAdapterAdvanced,
    "IPAdapterModelLoader": IPAdapterModelLoader,
    "IPAdapterEncoder": IPAdapterEncoder,
    "IPAdapterEmbeds": IPAdapterEmbeds,
    "PrepImageForClipVision": PrepImageForClipVision,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "IPAdapter": "IPAdapter",
    "IPAdapterAdvanced": "IPAdapter Advanced",
    "IPAdapterModelLoader": "IPAdapter Model Loader",
    "IPAdapterEncoder": "IPAdapter Encoder",
    "IPAdapterEmbeds": "IPAdapter Embeds",
    "PrepImageForClipVision": "Prep Image For ClipVision",
}
