"""Apply nodes (categories ipadapter, ipadapter/dev, ipadapter/style_composition, ipadapter/tiled): an image
prompt from reference images. Each node lists its inputs by name from the specs table (node_defs/specs.py),
in the old extension's order; the nodes parse their inputs and call the library."""
from __future__ import annotations

from ..ipadapter.apply import Embeds, apply_adapter, apply_style_composition, apply_tiled, encode_for
from ..ipadapter.unified import Pipeline, adapter_and_encoder
from ..ipadapter.flux import parse_any_layer_weights
from .registry import node_table
from .specs import APPLY_OPTIONAL, SIMPLE_WEIGHT_TYPE, SIMPLE_WEIGHT_TYPES, WEIGHT_UP_TO_3, FromSpecs, input_types


class _Apply(FromSpecs):
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_ipadapter"
    OPTIONAL = APPLY_OPTIONAL
    UNFOLD = False  # Batch nodes: image i and weight i for latent i


class _ImageApply(_Apply):
    """Encode the reference image(s) and apply: the shared body of the image-input nodes."""

    WEIGHT_TYPE: str | None = None  # set: the node's fixed weight type (precise nodes)
    BOOST: str | None = None  # the input that feeds the precise types' boost
    NO_ENCODER: str | None = None  # set: the message when no CLIP vision model comes in

    def apply_ipadapter(self, model, ipadapter, image, weight=1.0, weight_type="linear", combine_embeds="concat",
                        start_at=0.0, end_at=1.0, embeds_scaling="V only", encode_batch_size=0, image_negative=None,
                        attn_mask=None, clip_vision=None, negative_mode="black image", enhance_tiles=1,
                        enhance_ratio=1.0, weight_curve=None, attention_mode="decoupled", **options):
        adapter, clip_vision = adapter_and_encoder(ipadapter, clip_vision)
        if clip_vision is None and self.NO_ENCODER:
            raise ValueError(self.NO_ENCODER)
        embeds = encode_for(adapter, clip_vision, image, image_negative, encode_batch_size, negative_mode,
                            enhance_tiles=enhance_tiles, enhance_ratio=enhance_ratio)
        return (apply_adapter(model, adapter, embeds, weight=weight, weight_type=self.WEIGHT_TYPE or weight_type,
                              combine=combine_embeds, start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling,
                              attn_mask=attn_mask, unfold=self.UNFOLD,
                              boost=options.get(self.BOOST) if self.BOOST else None, weight_curve=weight_curve,
                              attention_mode=attention_mode),)


class IPAdapterSimple(_ImageApply):
    NODE_KEY = "IPAdapter"  # the old extension's key
    REQUIRED = ("model", "ipadapter", "image", WEIGHT_UP_TO_3, "start_at", "end_at",
                ("weight_type", SIMPLE_WEIGHT_TYPE))
    OPTIONAL = ("attn_mask", "clip_vision", "weight_curve")
    NO_ENCODER = ("IPAdapter needs a CLIP vision model: use the IPAdapter Unified Loader (it bundles one) "
                  "or connect clip_vision.")

    def apply_ipadapter(self, model, ipadapter, image, weight, start_at, end_at, weight_type, attn_mask=None,
                        clip_vision=None, weight_curve=None):
        return super().apply_ipadapter(model, ipadapter, image, weight, SIMPLE_WEIGHT_TYPES[weight_type],
                                       start_at=start_at, end_at=end_at, attn_mask=attn_mask, clip_vision=clip_vision,
                                       weight_curve=weight_curve)


class IPAdapterAdvanced(_ImageApply):
    REQUIRED = ("model", "ipadapter", "image", "weight", "weight_type", "combine_embeds", "start_at", "end_at",
                "embeds_scaling")
    OPTIONAL = APPLY_OPTIONAL + ("attention_mode",)


class IPAdapterBatch(_ImageApply):
    REQUIRED = ("model", "ipadapter", "image", "weight", "weight_type", "start_at", "end_at", "embeds_scaling",
                "encode_batch_size")
    UNFOLD = True


class _Precise(_ImageApply):
    """Precise style transfer / composition: a fixed weight type, and the input of its boost."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return input_types(("model", "ipadapter", "image", "weight", cls.BOOST, "combine_embeds", "start_at",
                            "end_at", "embeds_scaling"), cls.OPTIONAL)


class IPAdapterPreciseStyleTransfer(_Precise):
    WEIGHT_TYPE, BOOST = "style transfer precise", "style_boost"


class IPAdapterPreciseStyleTransferBatch(IPAdapterPreciseStyleTransfer):
    UNFOLD = True


class IPAdapterPreciseComposition(_Precise):
    WEIGHT_TYPE, BOOST = "composition precise", "composition_boost"


class IPAdapterPreciseCompositionBatch(IPAdapterPreciseComposition):
    UNFOLD = True


class IPAdapterClipVisionEnhancer(_ImageApply):
    CATEGORY = "ipadapter/dev"
    REQUIRED = ("model", "ipadapter", "image", "weight", "weight_type", "combine_embeds", "start_at", "end_at",
                "embeds_scaling", "enhance_tiles", "enhance_ratio")


class IPAdapterClipVisionEnhancerBatch(IPAdapterClipVisionEnhancer):
    REQUIRED = ("model", "ipadapter", "image", "weight", "weight_type", "start_at", "end_at", "embeds_scaling",
                "enhance_tiles", ("enhance_ratio", {"default": 0.5}), "encode_batch_size")
    UNFOLD = True


class IPAdapterMS(_Apply):
    """Mad Scientist: per-layer weights typed in; also takes FaceID adapters (with insightface)."""

    CATEGORY = "ipadapter/dev"
    REQUIRED = ("model", "ipadapter", "image", "weight", "weight_faceidv2", "weight_type", "combine_embeds",
                "start_at", "end_at", "embeds_scaling", "layer_weights")
    OPTIONAL = ("image_negative", "attn_mask", "clip_vision", "insightface", "negative_mode", "weight_curve")

    def apply_ipadapter(self, model, ipadapter, image, weight, weight_faceidv2, weight_type, combine_embeds,
                        start_at, end_at, embeds_scaling, layer_weights="", image_negative=None, attn_mask=None,
                        clip_vision=None, insightface=None, negative_mode="black image", weight_curve=None):
        pipeline = Pipeline.of(ipadapter)
        if insightface is None and pipeline is not None:
            insightface = pipeline.insightface(raise_load_error=False)
        adapter, clip_vision = adapter_and_encoder(ipadapter, clip_vision)
        # Only the precise types survive layer_weights (their token swap still applies): the old rule.
        parsed = parse_any_layer_weights(layer_weights, adapter.spec.arch) or None
        options = dict(weight=weight, weight_type=weight_type, start_at=start_at, end_at=end_at,
                       embeds_scaling=embeds_scaling, attn_mask=attn_mask, layer_weights=parsed,
                       weight_curve=weight_curve)
        if adapter.spec.is_faceid:
            from ..ipadapter import faceid  # FaceID glue loads insightface lazily

            patched, _ = faceid.apply_faceid(model, adapter, image=image, insightface=insightface,
                                             clip_vision=clip_vision, image_negative=image_negative,
                                             weight_faceidv2=weight_faceidv2, combine=combine_embeds, **options)
            return (patched,)
        embeds = encode_for(adapter, clip_vision, image, image_negative, negative_mode=negative_mode)
        return (apply_adapter(model, adapter, embeds, combine=combine_embeds, **options),)


class IPAdapterStyleComposition(_Apply):
    CATEGORY = "ipadapter/style_composition"
    REQUIRED = ("model", "ipadapter", "image_style", "image_composition", "weight_style", "weight_composition",
                "expand_style", ("combine_embeds", {"default": "average"}), "start_at", "end_at", "embeds_scaling")

    def apply_ipadapter(self, model, ipadapter, image_style, image_composition, weight_style, weight_composition,
                        expand_style, start_at, end_at, embeds_scaling, combine_embeds="concat", image_negative=None,
                        attn_mask=None, clip_vision=None, negative_mode="black image", weight_curve=None):
        adapter, clip_vision = adapter_and_encoder(ipadapter, clip_vision)
        style = encode_for(adapter, clip_vision, image_style, image_negative, negative_mode=negative_mode)
        composition = encode_for(adapter, clip_vision, image_composition, negative_mode=negative_mode)
        composition = Embeds(composition.cond, style.uncond)  # one negative for both, as before
        return (apply_style_composition(model, adapter, style, composition, weight_style=weight_style,
                                        weight_composition=weight_composition, expand_style=expand_style,
                                        unfold=self.UNFOLD, combine=combine_embeds, start_at=start_at,
                                        end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask,
                                        weight_curve=weight_curve),)


class IPAdapterStyleCompositionBatch(IPAdapterStyleComposition):
    REQUIRED = ("model", "ipadapter", "image_style", "image_composition", "weight_style", "weight_composition",
                "expand_style", "start_at", "end_at", "embeds_scaling")
    UNFOLD = True


class IPAdapterTiled(_Apply):
    CATEGORY = "ipadapter/tiled"
    RETURN_TYPES = ("MODEL", "IMAGE", "MASK")
    RETURN_NAMES = ("MODEL", "tiles", "masks")
    FUNCTION = "apply_tiled"
    REQUIRED = ("model", "ipadapter", "image", WEIGHT_UP_TO_3, "weight_type", "combine_embeds", "start_at", "end_at",
                "sharpening", "embeds_scaling")

    def apply_tiled(self, model, ipadapter, image, weight, weight_type, start_at, end_at, sharpening,
                    embeds_scaling, combine_embeds="concat", encode_batch_size=0, image_negative=None,
                    attn_mask=None, clip_vision=None, negative_mode="black image", weight_curve=None):
        adapter, clip_vision = adapter_and_encoder(ipadapter, clip_vision)
        return apply_tiled(model, adapter, clip_vision, image, weight=weight, weight_type=weight_type,
                           sharpening=sharpening, attn_mask=attn_mask, image_negative=image_negative,
                           batch_size=encode_batch_size, negative_mode=negative_mode, unfold=self.UNFOLD,
                           combine=combine_embeds, start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling,
                           weight_curve=weight_curve)


class IPAdapterTiledBatch(IPAdapterTiled):
    REQUIRED = ("model", "ipadapter", "image", WEIGHT_UP_TO_3, "weight_type", "start_at", "end_at", "sharpening",
                "embeds_scaling", "encode_batch_size")
    UNFOLD = True


NODES = node_table(IPAdapterSimple, IPAdapterAdvanced, IPAdapterBatch, IPAdapterStyleComposition,
                   IPAdapterStyleCompositionBatch, IPAdapterTiled, IPAdapterTiledBatch, IPAdapterMS,
                   IPAdapterClipVisionEnhancer, IPAdapterClipVisionEnhancerBatch, IPAdapterPreciseStyleTransfer,
                   IPAdapterPreciseStyleTransferBatch, IPAdapterPreciseComposition, IPAdapterPreciseCompositionBatch)
