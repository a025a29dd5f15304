"""Apply-node variants: batch, style & composition, precise, Mad Scientist, ClipVision Enhancer, tiled, params.

Each node lists its inputs by name (the old extension's order); the specs come from one table, so a
shared input is defined once. The nodes parse their inputs and call the library.
"""
from __future__ import annotations

from ..ipadapter import params as params_lib
from ..ipadapter.apply import Embeds, apply_adapter, apply_style_composition, apply_tiled, encode_for
from ..ipadapter.encode import COMBINE_METHODS
from ..ipadapter.weights import parse_layer_weights
from .common import (ATTN_MASK, CLIP_VISION, COMBINE, END_AT, IMAGE, IMAGE_NEGATIVE, IPADAPTER, MODEL,
                     NEGATIVE_MODE, SCALING, START_AT, WEIGHT_TYPE, unpack, weight_input)
from .core import IPAdapterEmbeds

ENCODE_BATCH_SIZE = ("INT", {"default": 0, "min": 0, "max": 4096,
                             "tooltip": "Encode the images this many at a time (0: all at once); lowers peak memory "
                                        "for long batches, same result."})
PARAMS = ("IPADAPTER_PARAMS", {"tooltip": "From IPAdapter Regional Conditioning (or IPAdapter Combine Params)."})

# Every input an apply variant may have; a node picks names from here, in its widget order.
SPECS = {
    "model": MODEL, "ipadapter": IPADAPTER, "image": IMAGE, "weight": weight_input(-1, 5),
    "weight_type": WEIGHT_TYPE, "combine_embeds": COMBINE, "start_at": START_AT, "end_at": END_AT,
    "embeds_scaling": SCALING, "encode_batch_size": ENCODE_BATCH_SIZE,
    "image_negative": IMAGE_NEGATIVE, "attn_mask": ATTN_MASK, "clip_vision": CLIP_VISION,
    "negative_mode": NEGATIVE_MODE,
    "image_style": ("IMAGE", {"tooltip": "Reference for the style (the style layers)."}),
    "image_composition": ("IMAGE", {"tooltip": "Reference for the composition (the composition layer)."}),
    "weight_style": ("FLOAT", {"default": 1.0, "min": -1, "max": 5, "step": 0.05,
                               "tooltip": "Strength of the style image."}),
    "weight_composition": ("FLOAT", {"default": 1.0, "min": -1, "max": 5, "step": 0.05,
                                     "tooltip": "Strength of the composition image."}),
    "expand_style": ("BOOLEAN", {"default": False,
                                 "tooltip": "Apply the style image to every layer except the composition one "
                                            "(stronger style), not only to the style layer."}),
    "style_boost": ("FLOAT", {"default": 1.0, "min": -5, "max": 5, "step": 0.05,
                              "tooltip": "Weight on the composition layer, where the reference acts as negative "
                                         "guidance to keep its composition out (SDXL: start at 2; SD1.5: -1..1)."}),
    "composition_boost": ("FLOAT", {"default": 0.0, "min": -5, "max": 5, "step": 0.05,
                                    "tooltip": "Weight on the style layers, where the reference acts as negative "
                                               "guidance to keep its style out (0: off; try 0.3)."}),
    "weight_faceidv2": ("FLOAT", {"default": 1.0, "min": -1, "max": 5.0, "step": 0.05,
                                  "tooltip": "FaceID Plus v2 only: strength of the face-structure branch."}),
    "layer_weights": ("STRING", {"default": "", "multiline": True,
                                 "tooltip": "key:value per layer, separated by commas or new lines (e.g. "
                                            "'3:1, 6:0.5' or 'input_8:1, output_1.3:0.5'); unnamed layers get 0. "
                                            "Keys: transformer index, or block name (input_N, middle, output_N) with "
                                            "an optional .N for one SDXL transformer block. Empty: use weight_type."}),
    "insightface": ("INSIGHTFACE", {"tooltip": "For FaceID adapters: from IPAdapter InsightFace Loader."}),
    "enhance_tiles": ("INT", {"default": 2, "min": 1, "max": 16,
                              "tooltip": "Also encode an N x N grid of tiles of the reference and merge their "
                                         "features, for more detail (1: off)."}),
    "enhance_ratio": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                "tooltip": "Share of the whole-image features beside the tiles' features."}),
    "sharpening": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                             "tooltip": "Contrast-adaptive sharpening of the tiles."}),
    "ipadapter_params": PARAMS,
}
_OPTIONAL = ("image_negative", "attn_mask", "clip_vision", "negative_mode")


def _specs(names, overrides) -> dict:
    return {name: overrides.get(name, SPECS.get(name)) for name in names}


class _Variant:
    """Inputs from REQUIRED / OPTIONAL names (SPECS, with per-node OVERRIDES)."""

    CATEGORY = "ipadapter"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_ipadapter"
    REQUIRED: tuple[str, ...] = ()
    OPTIONAL: tuple[str, ...] = _OPTIONAL
    OVERRIDES: dict = {}
    UNFOLD = False  # Batch nodes: image i and weight i for latent i

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _specs(cls.REQUIRED, cls.OVERRIDES), "optional": _specs(cls.OPTIONAL, cls.OVERRIDES)}


class _ImageApply(_Variant):
    """Encode the reference image(s) and apply: the shared body of the image-input variants."""

    WEIGHT_TYPE: str | None = None  # set: the node's fixed weight type (precise nodes)
    BOOST: str | None = None  # the input that feeds the precise types' boost

    def apply_ipadapter(self, model, ipadapter, image, weight=1.0, weight_type="linear", combine_embeds="concat",
                        start_at=0.0, end_at=1.0, embeds_scaling="V only", encode_batch_size=0, image_negative=None,
                        attn_mask=None, clip_vision=None, negative_mode="black image", enhance_tiles=1,
                        enhance_ratio=1.0, **options):
        adapter, clip_vision = unpack(ipadapter, clip_vision)
        embeds = encode_for(adapter, clip_vision, image, image_negative, encode_batch_size, negative_mode,
                            enhance_tiles=enhance_tiles, enhance_ratio=enhance_ratio)
        return (apply_adapter(model, adapter, embeds, weight=weight, weight_type=self.WEIGHT_TYPE or weight_type,
                              combine=combine_embeds, start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling,
                              attn_mask=attn_mask, unfold=self.UNFOLD,
                              boost=options.get(self.BOOST) if self.BOOST else None),)


class IPAdapterBatch(_ImageApply):
    REQUIRED = ("model", "ipadapter", "image", "weight", "weight_type", "start_at", "end_at", "embeds_scaling",
                "encode_batch_size")
    UNFOLD = True


class IPAdapterPreciseStyleTransfer(_ImageApply):
    REQUIRED = ("model", "ipadapter", "image", "weight", "style_boost", "combine_embeds", "start_at", "end_at",
                "embeds_scaling")
    WEIGHT_TYPE, BOOST = "style transfer precise", "style_boost"


class IPAdapterPreciseStyleTransferBatch(IPAdapterPreciseStyleTransfer):
    UNFOLD = True


class IPAdapterPreciseComposition(_ImageApply):
    REQUIRED = ("model", "ipadapter", "image", "weight", "composition_boost", "combine_embeds", "start_at", "end_at",
                "embeds_scaling")
    WEIGHT_TYPE, BOOST = "composition precise", "composition_boost"


class IPAdapterPreciseCompositionBatch(IPAdapterPreciseComposition):
    UNFOLD = True


class IPAdapterClipVisionEnhancer(_ImageApply):
    CATEGORY = "ipadapter/dev"
    REQUIRED = ("model", "ipadapter", "image", "weight", "weight_type", "combine_embeds", "start_at", "end_at",
                "embeds_scaling", "enhance_tiles", "enhance_ratio")


class IPAdapterClipVisionEnhancerBatch(IPAdapterClipVisionEnhancer):
    REQUIRED = ("model", "ipadapter", "image", "weight", "weight_type", "start_at", "end_at", "embeds_scaling",
                "enhance_tiles", "enhance_ratio", "encode_batch_size")
    OVERRIDES = {"enhance_ratio": ("FLOAT", {**SPECS["enhance_ratio"][1], "default": 0.5})}
    UNFOLD = True


class IPAdapterMS(_ImageApply):
    """Mad Scientist: per-layer weights typed in; also takes FaceID adapters (with insightface)."""

    CATEGORY = "ipadapter/dev"
    REQUIRED = ("model", "ipadapter", "image", "weight", "weight_faceidv2", "weight_type", "combine_embeds",
                "start_at", "end_at", "embeds_scaling", "layer_weights")
    OPTIONAL = ("image_negative", "attn_mask", "clip_vision", "insightface", "negative_mode")

    def apply_ipadapter(self, model, ipadapter, image, weight, weight_faceidv2, weight_type, combine_embeds,
                        start_at, end_at, embeds_scaling, layer_weights="", image_negative=None, attn_mask=None,
                        clip_vision=None, insightface=None, negative_mode="black image"):
        if insightface is None and isinstance(ipadapter, dict):
            insightface = (ipadapter.get("insightface") or {}).get("model")
        adapter, clip_vision = unpack(ipadapter, clip_vision)
        # Only the precise types survive layer_weights (their token swap still applies): the old rule.
        parsed = parse_layer_weights(layer_weights, adapter.spec.arch) or None
        options = dict(weight=weight, weight_type=weight_type, start_at=start_at, end_at=end_at,
                       embeds_scaling=embeds_scaling, attn_mask=attn_mask, layer_weights=parsed)
        if adapter.spec.is_faceid:
            from ..ipadapter import faceid  # FaceID glue loads insightface lazily

            patched, _ = faceid.apply_faceid(model, adapter, image=image, insightface=insightface,
                                             clip_vision=clip_vision, image_negative=image_negative,
                                             weight_faceidv2=weight_faceidv2, combine=combine_embeds, **options)
            return (patched,)
        embeds = encode_for(adapter, clip_vision, image, image_negative, negative_mode=negative_mode)
        return (apply_adapter(model, adapter, embeds, combine=combine_embeds, **options),)


class IPAdapterStyleComposition(_Variant):
    CATEGORY = "ipadapter/style_composition"
    REQUIRED = ("model", "ipadapter", "image_style", "image_composition", "weight_style", "weight_composition",
                "expand_style", "combine_embeds", "start_at", "end_at", "embeds_scaling")
    OVERRIDES = {"combine_embeds": (list(COMBINE_METHODS), {**COMBINE[1], "default": "average"})}

    def apply_ipadapter(self, model, ipadapter, image_style, image_composition, weight_style, weight_composition,
                        expand_style, start_at, end_at, embeds_scaling, combine_embeds="concat", image_negative=None,
                        attn_mask=None, clip_vision=None, negative_mode="black image"):
        adapter, clip_vision = unpack(ipadapter, clip_vision)
        style = encode_for(adapter, clip_vision, image_style, image_negative, negative_mode=negative_mode)
        composition = encode_for(adapter, clip_vision, image_composition, negative_mode=negative_mode)
        composition = Embeds(composition.cond, style.uncond)  # one negative for both, as before
        return (apply_style_composition(model, adapter, style, composition, weight_style=weight_style,
                                        weight_composition=weight_composition, expand_style=expand_style,
                                        unfold=self.UNFOLD, combine=combine_embeds, start_at=start_at,
                                        end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask),)


class IPAdapterStyleCompositionBatch(IPAdapterStyleComposition):
    REQUIRED = ("model", "ipadapter", "image_style", "image_composition", "weight_style", "weight_composition",
                "expand_style", "start_at", "end_at", "embeds_scaling")
    UNFOLD = True


class IPAdapterTiled(_Variant):
    CATEGORY = "ipadapter/tiled"
    RETURN_TYPES = ("MODEL", "IMAGE", "MASK")
    RETURN_NAMES = ("MODEL", "tiles", "masks")
    FUNCTION = "apply_tiled"
    REQUIRED = ("model", "ipadapter", "image", "weight", "weight_type", "combine_embeds", "start_at", "end_at",
                "sharpening", "embeds_scaling")
    OVERRIDES = {"weight": weight_input(-1, 3)}

    def apply_tiled(self, model, ipadapter, image, weight, weight_type, start_at, end_at, sharpening,
                    embeds_scaling, combine_embeds="concat", encode_batch_size=0, image_negative=None,
                    attn_mask=None, clip_vision=None, negative_mode="black image"):
        adapter, clip_vision = unpack(ipadapter, clip_vision)
        return apply_tiled(model, adapter, clip_vision, image, weight=weight, weight_type=weight_type,
                           sharpening=sharpening, attn_mask=attn_mask, image_negative=image_negative,
                           batch_size=encode_batch_size, negative_mode=negative_mode, unfold=self.UNFOLD,
                           combine=combine_embeds, start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling)


class IPAdapterTiledBatch(IPAdapterTiled):
    REQUIRED = ("model", "ipadapter", "image", "weight", "weight_type", "start_at", "end_at", "sharpening",
                "embeds_scaling", "encode_batch_size")
    UNFOLD = True


class IPAdapterEmbedsBatch(IPAdapterEmbeds):
    """IPAdapter Embeds with embedding i (and weight i) for latent i."""

    def apply_ipadapter(self, **inputs):
        return super().apply_ipadapter(**inputs, unfold=True)


class IPAdapterFromParams(_Variant):
    CATEGORY = "ipadapter/params"
    REQUIRED = ("model", "ipadapter", "ipadapter_params", "combine_embeds", "embeds_scaling")
    OPTIONAL = ("image_negative", "clip_vision", "negative_mode")

    def apply_ipadapter(self, model, ipadapter, ipadapter_params, combine_embeds, embeds_scaling,
                        image_negative=None, clip_vision=None, negative_mode="black image"):
        adapter, clip_vision = unpack(ipadapter, clip_vision)
        return (params_lib.apply_params(model, adapter, clip_vision, ipadapter_params, combine=combine_embeds,
                                        embeds_scaling=embeds_scaling, image_negative=image_negative,
                                        negative_mode=negative_mode, unfold=self.UNFOLD),)


class IPAdapterRegionalConditioning:
    CATEGORY = "ipadapter/params"
    RETURN_TYPES = ("IPADAPTER_PARAMS", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("IPADAPTER_PARAMS", "POSITIVE", "NEGATIVE")
    FUNCTION = "conditioning"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The image prompt for this region."}),
                "image_weight": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 3.0, "step": 0.05,
                                           "tooltip": "Strength of the image prompt in this region."}),
                "prompt_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05,
                                            "tooltip": "Strength of the text conditionings inside the mask."}),
                "weight_type": WEIGHT_TYPE, "start_at": START_AT, "end_at": END_AT,
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "The region (white). Without it the image prompt acts everywhere and "
                                             "the conditionings pass unchanged."}),
                "positive": ("CONDITIONING", {"tooltip": "Text conditioning to confine to the region."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative conditioning to confine to the region."}),
            },
        }

    def conditioning(self, image, image_weight, prompt_weight, weight_type, start_at, end_at, mask=None,
                     positive=None, negative=None):
        region = params_lib.make_params(image, mask, image_weight, weight_type, start_at, end_at)
        return (region, params_lib.set_region(positive, mask, prompt_weight),
                params_lib.set_region(negative, mask, prompt_weight))


class IPAdapterCombineParams:
    CATEGORY = "ipadapter/params"
    RETURN_TYPES = ("IPADAPTER_PARAMS",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls):
        spec = ("IPADAPTER_PARAMS", {"tooltip": "Regions to join; their order is kept."})
        return {"required": {"params_1": spec, "params_2": spec},
                "optional": {"params_3": spec, "params_4": spec, "params_5": spec}}

    def combine(self, params_1, params_2, params_3=None, params_4=None, params_5=None):
        return (params_lib.combine_params(params_1, params_2, params_3, params_4, params_5),)


NODES: dict[str, tuple[type, str]] = {
    "IPAdapterBatch": (IPAdapterBatch, "IPAdapter Batch (Adv.)"),
    "IPAdapterStyleComposition": (IPAdapterStyleComposition, "IPAdapter Style & Composition SDXL"),
    "IPAdapterStyleCompositionBatch": (IPAdapterStyleCompositionBatch, "IPAdapter Style & Composition Batch SDXL"),
    "IPAdapterTiled": (IPAdapterTiled, "IPAdapter Tiled"),
    "IPAdapterTiledBatch": (IPAdapterTiledBatch, "IPAdapter Tiled Batch"),
    "IPAdapterEmbedsBatch": (IPAdapterEmbedsBatch, "IPAdapter Embeds Batch"),
    "IPAdapterMS": (IPAdapterMS, "IPAdapter Mad Scientist"),
    "IPAdapterClipVisionEnhancer": (IPAdapterClipVisionEnhancer, "IPAdapter ClipVision Enhancer"),
    "IPAdapterClipVisionEnhancerBatch": (IPAdapterClipVisionEnhancerBatch, "IPAdapter ClipVision Enhancer Batch"),
    "IPAdapterFromParams": (IPAdapterFromParams, "IPAdapter from Params"),
    "IPAdapterPreciseStyleTransfer": (IPAdapterPreciseStyleTransfer, "IPAdapter Precise Style Transfer"),
    "IPAdapterPreciseStyleTransferBatch": (IPAdapterPreciseStyleTransferBatch,
                                           "IPAdapter Precise Style Transfer Batch"),
    "IPAdapterPreciseComposition": (IPAdapterPreciseComposition, "IPAdapter Precise Composition"),
    "IPAdapterPreciseCompositionBatch": (IPAdapterPreciseCompositionBatch, "IPAdapter Precise Composition Batch"),
    "IPAdapterRegionalConditioning": (IPAdapterRegionalConditioning, "IPAdapter Regional Conditioning"),
    "IPAdapterCombineParams": (IPAdapterCombineParams, "IPAdapter Combine Params"),
}
