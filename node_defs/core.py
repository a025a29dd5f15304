"""The core nodes: model loader, the simple and advanced apply nodes, encoder / embeds, image prep."""
from __future__ import annotations

import folder_paths

from ..ipadapter.adapter import load_adapter
from ..ipadapter.apply import Embeds, apply_adapter, encode_for
from ..ipadapter.encode import check_encoder, negative_embeds
from ..ipadapter.image import CROP_POSITIONS, INTERPOLATIONS, prep_for_clip_vision
from .common import (ATTN_MASK, CLIP_VISION, COMBINE, EMBEDS, END_AT, IMAGE, IMAGE_NEGATIVE, IPADAPTER, MODEL,
                     NEGATIVE_MODE, SCALING, START_AT, WEIGHT_TYPE, unpack, weight_input)


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
                "model": MODEL, "ipadapter": IPADAPTER, "image": IMAGE,
                "weight": weight_input(-1, 5), "weight_type": WEIGHT_TYPE, "combine_embeds": COMBINE,
                "start_at": START_AT, "end_at": END_AT, "embeds_scaling": SCALING,
            },
            "optional": {
                "image_negative": IMAGE_NEGATIVE, "attn_mask": ATTN_MASK, "clip_vision": CLIP_VISION,
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
                "model": MODEL, "ipadapter": IPADAPTER, "image": IMAGE, "weight": weight_input(-1, 3),
                "start_at": START_AT, "end_at": END_AT, "weight_type": (list(cls.WEIGHT_TYPES), {
                    "tooltip": "standard: linear; prompt is more important: ease out; style transfer: style layers only."}),
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
            "required": {"ipadapter": IPADAPTER, "image": IMAGE, "weight": weight_input(-1, 3, 0.01)},
            "optional": {"mask": ("MASK", {"tooltip": "Masks the reference in the encoder's input (masked pixels become neutral)."}),
                         "clip_vision": CLIP_VISION, "negative_mode": NEGATIVE_MODE},
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
                "model": MODEL, "ipadapter": IPADAPTER, "pos_embed": EMBEDS, "weight": weight_input(-1, 3),
                "weight_type": WEIGHT_TYPE, "start_at": START_AT, "end_at": END_AT, "embeds_scaling": SCALING,
            },
            "optional": {"neg_embed": ("EMBEDS", {"tooltip": "Negative features (default: from a black image, or zeros)."}),
                         "attn_mask": ATTN_MASK, "clip_vision": CLIP_VISION,
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
                "image": ("IMAGE", {"tooltip": "Image(s) to square and resize for the CLIP vision encoder."}),
                "interpolation": (list(INTERPOLATIONS), {"tooltip": "Resampling filter (PIL)."}),
                "crop_position": (list(CROP_POSITIONS), {"tooltip": "Which square to keep, or pad to a square with black."}),
                "sharpening": ("FLOAT", {"default": 0.0, "min": 0, "max": 1, "step": 0.05,
                                         "tooltip": "Contrast-adaptive sharpening after resizing."}),
            },
            "optional": {"size": ("INT", {"default": 224, "min": 64, "max": 1024, "step": 8,
                                          "tooltip": "224 for most encoders, 336 for ViT-L-336 (Kolors)."})},
        }

    def prep_image(self, image, interpolation="LANCZOS", crop_position="top", sharpening=0.0, size=224):
        return (prep_for_clip_vision(image, interpolation, crop_position, sharpening, size),)


NODES = {
    "IPAdapterModelLoader": (IPAdapterModelLoader, "IPAdapter Model Loader"),
    "IPAdapter": (IPAdapterSimple, "IPAdapter"),
    "IPAdapterAdvanced": (IPAdapterAdvanced, "IPAdapter Advanced"),
    "IPAdapterEncoder": (IPAdapterEncoder, "IPAdapter Encoder"),
    "IPAdapterEmbeds": (IPAdapterEmbeds, "IPAdapter Embeds"),
    "PrepImageForClipVision": (PrepImageForClipVision, "Prep Image For ClipVision"),
}
