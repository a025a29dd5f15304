"""Embeds nodes (category ipadapter/embeds): encode references to features, apply features, combine, save, load."""
from __future__ import annotations

import torch

from ..ipadapter.apply import Embeds, apply_adapter, encode_for
from ..ipadapter.embeds_file import SUFFIX, load_embeds, save_embeds
from ..ipadapter.encode import EMBEDS_COMBINE_METHODS, combine_embeds, negative_for_embeds, stack_embeds
from ..ipadapter.flux import parse_any_layer_weights
from ..ipadapter.output_files import file_version, input_file, input_files, next_output_file
from ..ipadapter.unified import adapter_and_encoder
from .registry import node_table
from .specs import WEIGHT_UP_TO_3, FromSpecs

_CATEGORY = "ipadapter/embeds"


class IPAdapterEncoder(FromSpecs):
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("EMBEDS", "EMBEDS")
    RETURN_NAMES = ("pos_embed", "neg_embed")
    FUNCTION = "encode"
    REQUIRED = ("ipadapter", "image", ("weight", {"max": 3, "step": 0.01}))
    OPTIONAL = ("mask", "clip_vision", "negative_mode")

    def encode(self, ipadapter, image, weight, mask=None, clip_vision=None, negative_mode="black image"):
        adapter, clip_vision = adapter_and_encoder(ipadapter, clip_vision)
        embeds = encode_for(adapter, clip_vision, image, negative_mode=negative_mode, mask=mask)
        pos = embeds.cond * weight if weight != 1 else embeds.cond
        return (pos, embeds.uncond)


class IPAdapterSigLIPPooledEncoder(FromSpecs):
    """SigLIP's pooled vector (for InstantX's FLUX.1-dev IP-Adapter): ComfyUI's SigLIP tokens + the file's
    attention-pooling head (``ipadapter/siglip_pool.py``). The negative is zeros."""

    CATEGORY = _CATEGORY
    RETURN_TYPES = ("EMBEDS", "EMBEDS")
    RETURN_NAMES = ("pos_embed", "neg_embed")
    FUNCTION = "encode"
    REQUIRED = ("clip_vision", "image", ("clip_name", (
        "COMBO", {"options": [], "tooltip": "The SigLIP file loaded by Load CLIP Vision: its pooling head is read "
                                           "from it (ComfyUI's loader leaves the head out)."})))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        import folder_paths

        types = super().INPUT_TYPES()
        _, options = types["required"]["clip_name"]
        types["required"]["clip_name"] = (folder_paths.get_filename_list("clip_vision"),
                                            {"tooltip": options["tooltip"]})
        return types

    def encode(self, clip_vision, image, clip_name):
        import folder_paths

        from ..ipadapter.siglip_pool import pooled_embeds

        pooled = pooled_embeds(clip_vision, image, folder_paths.get_full_path_or_raise("clip_vision", clip_name))
        return (pooled, torch.zeros_like(pooled[:1]))


class IPAdapterEmbeds(FromSpecs):
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_ipadapter"
    REQUIRED = ("model", "ipadapter", "pos_embed", WEIGHT_UP_TO_3, "weight_type", "start_at", "end_at",
                "embeds_scaling")
    # layer_weights: per-layer (per-block on Flux / SD3.5) strengths as on Mad Scientist, for adapters that only
    # take embeds (InstantX FLUX's pooled SigLIP); empty keeps weight_type.
    OPTIONAL = ("neg_embed", "attn_mask", "clip_vision", "negative_mode", "weight_curve", "layer_weights")
    UNFOLD = False

    def apply_ipadapter(self, model, ipadapter, pos_embed, weight, weight_type, start_at, end_at, embeds_scaling,
                        neg_embed=None, attn_mask=None, clip_vision=None, negative_mode="black image",
                        weight_curve=None, layer_weights=""):
        adapter, clip_vision = adapter_and_encoder(ipadapter, clip_vision)
        if neg_embed is None:
            neg_embed = negative_for_embeds(adapter.spec, adapter.name, clip_vision, pos_embed, negative_mode)
        return (apply_adapter(model, adapter, Embeds(pos_embed, neg_embed), weight=weight, weight_type=weight_type,
                              start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask,
                              unfold=self.UNFOLD, weight_curve=weight_curve,
                              layer_weights=parse_any_layer_weights(layer_weights, adapter.spec.arch) or None),)


class IPAdapterEmbedsBatch(IPAdapterEmbeds):
    """IPAdapter Embeds with embedding i (and weight i) for latent i."""

    UNFOLD = True


class IPAdapterCombineEmbeds(FromSpecs):
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("EMBEDS",)
    FUNCTION = "batch"
    REQUIRED = (
        ("embed1", ("EMBEDS", {"tooltip": "Features from IPAdapter Encoder (or Load Embeds)."})),
        ("method", (list(EMBEDS_COMBINE_METHODS), {
            "tooltip": "concat keeps every image; add / average / norm average / max / min merge them "
                       "element-wise into one; subtract takes the first minus the mean of the others."})),
    )
    OPTIONAL = tuple((f"embed{i}", ("EMBEDS", {"tooltip": "More features, same encoder as embed1."}))
                     for i in range(2, 6))

    def batch(self, embed1, method, **more):
        given = [("embed1", embed1)] + [(k, more[k]) for k in sorted(more) if more[k] is not None]
        return (combine_embeds(stack_embeds(given), method),)


class IPAdapterSaveEmbeds(FromSpecs):
    CATEGORY = _CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    REQUIRED = (
        ("embeds", ("EMBEDS", {"tooltip": "Features to save (from IPAdapter Encoder)."})),
        ("filename_prefix", ("STRING", {"default": "IP_embeds",
                                        "tooltip": "Saved as output/<prefix>_00001.ipadpt; move the file to "
                                                   "input/ to load it with IPAdapter Load Embeds."})),
    )

    def save(self, embeds, filename_prefix):
        out = next_output_file(filename_prefix, SUFFIX)
        save_embeds(embeds, out.path)
        return {"ui": {"embeds": [{"filename": out.filename, "subfolder": out.subfolder, "type": "output"}]}}


class IPAdapterLoadEmbeds:
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("EMBEDS",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"embeds": (input_files(SUFFIX), {
            "tooltip": "An .ipadpt file anywhere under ComfyUI's input/ folder."})}}

    @classmethod
    def IS_CHANGED(cls, embeds):
        try:
            return file_version(input_file(embeds, "IPAdapter Load Embeds", SUFFIX))
        except (OSError, ValueError):
            return ""  # load() raises the clear error

    def load(self, embeds):
        return (load_embeds(input_file(embeds, "IPAdapter Load Embeds", SUFFIX)),)


NODES = node_table(IPAdapterEncoder, IPAdapterSigLIPPooledEncoder, IPAdapterEmbeds, IPAdapterEmbedsBatch, IPAdapterCombineEmbeds,
                   IPAdapterSaveEmbeds, IPAdapterLoadEmbeds)
