"""Per-layer tuning nodes. ipadapter/weights: IPAdapter Layer Weights (one layer_weights text for several apply
nodes). ipadapter/dev: IPAdapter Layer Sweep (a list of models, one layer group each, so one KSampler renders
them all) and IPAdapter Sweep Grid (their images as one labelled grid)."""
from __future__ import annotations

from ..ipadapter.apply import apply_adapter, block_streams, encode_for
from ..ipadapter.grid import labelled_grid
from ..ipadapter.flux import DIT_ARCH_NAMES, parse_any_layer_weights
from ..ipadapter.layers import ARCH_NAMES
from ..ipadapter.progress import tracked
from ..ipadapter.sweep import GROUPINGS, MODES, sweep_entries
from ..ipadapter.unified import adapter_and_encoder
from .registry import node_table
from .specs import APPLY_OPTIONAL, FromSpecs


def check_layer_weights(text: str) -> str:
    """``text`` unchanged when it parses for at least one architecture (the UNets' layers, or Flux / SD3.5
    blocks as the sweep writes them); else every parser's message."""
    errors = []
    for arch, name in (*ARCH_NAMES.items(), *DIT_ARCH_NAMES.items()):
        try:
            parse_any_layer_weights(text, arch)
            return text
        except ValueError as err:
            errors.append(f"{name}: {err}")
    raise ValueError("IPAdapter Layer Weights: the text is valid for no model.\n" + "\n".join(errors))


class IPAdapterLayerWeights(FromSpecs):
    CATEGORY = "ipadapter/weights"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("layer_weights",)
    FUNCTION = "layer_weights"
    REQUIRED = ("layer_weights",)

    def layer_weights(self, layer_weights=""):
        return (check_layer_weights(layer_weights),)


class IPAdapterLayerSweep(FromSpecs):
    CATEGORY = "ipadapter/dev"
    RETURN_TYPES = ("MODEL", "STRING", "STRING")
    RETURN_NAMES = ("MODEL", "labels", "layer_weights")
    OUTPUT_IS_LIST = (True, True, True)
    FUNCTION = "sweep"
    REQUIRED = (
        "model", "ipadapter", "image", "weight",
        ("grouping", (list(GROUPINGS), {
            "tooltip": "each layer: one entry per transformer index (SD1.5: 16, SDXL: 11; Flux / SD3.5: per "
                       "block); input / middle / output: one entry per UNet section (Flux / SD3.5: per half of "
                       "each block stream, the regions of the experimental style / composition maps)."})),
        ("mode", (list(MODES), {
            "tooltip": "only this group: the adapter acts on that group alone; all but this group: everywhere "
                       "except there (shows what the group takes away)."})),
        "combine_embeds", "start_at", "end_at", "embeds_scaling",
    )
    OPTIONAL = APPLY_OPTIONAL

    def sweep(self, model, ipadapter, image, weight, grouping, mode, combine_embeds, start_at, end_at,
              embeds_scaling, image_negative=None, attn_mask=None, clip_vision=None, negative_mode="black image",
              weight_curve=None):
        adapter, clip_vision = adapter_and_encoder(ipadapter, clip_vision)
        entries = sweep_entries(adapter.spec.arch, grouping, mode, block_streams(model, adapter))
        embeds = encode_for(adapter, clip_vision, image, image_negative, negative_mode=negative_mode)
        models = []
        for entry in tracked(entries):
            if entry.layers:
                models.append(apply_adapter(
                    model, adapter, embeds, weight=weight, layer_weights=entry.weights(),
                    combine=combine_embeds, start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling,
                    attn_mask=attn_mask, weight_curve=weight_curve))
            else:
                models.append(model)
        return models, [e.label for e in entries], [e.layer_weights() for e in entries]


class IPAdapterSweepGrid(FromSpecs):
    CATEGORY = "ipadapter/dev"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "grid"
    INPUT_IS_LIST = True
    REQUIRED = (
        ("images", ("IMAGE", {"tooltip": "The decoded images of the sweep (a list: one per model)."})),
        ("columns", ("INT", {"default": 0, "min": 0, "max": 64,
                             "tooltip": "Cells per row (0: as square as possible)."})),
        ("font_size", ("INT", {"default": 0, "min": 0, "max": 256,
                               "tooltip": "Label height in pixels (0: scaled to the image width)."})),
    )
    OPTIONAL = (("labels", ("STRING", {"forceInput": True,
                                       "tooltip": "One label per image: the sweep's labels output."})),)

    def grid(self, images, columns, font_size, labels=None):
        return (labelled_grid(images, list(labels or []), columns[0], font_size[0]),)


NODES = node_table(IPAdapterLayerWeights, IPAdapterLayerSweep, IPAdapterSweepGrid)
