"""Weights & params nodes. ipadapter/weights: frame-weight schedules for animations (IPAdapter Weights, From
Strategy, Prompt Schedule). ipadapter/params: per-region image prompts (Regional Conditioning, Combine Params,
IPAdapter from Params)."""
from __future__ import annotations

from ..ipadapter import params as params_lib
from ..ipadapter.schedules import METHODS, TIMINGS, Strategy, prompt_schedule, schedule
from ..ipadapter.unified import adapter_and_encoder
from .registry import node_table
from .specs import FromSpecs

_OUTPUTS = ("FLOAT", "FLOAT", "INT", "IMAGE", "IMAGE", "WEIGHTS_STRATEGY")
_OUTPUT_NAMES = ("weights", "weights_invert", "total_frames", "image_1", "image_2", "weights_strategy")
_STRATEGY = ("WEIGHTS_STRATEGY", {"tooltip": "The settings of an IPAdapter Weights node."})
_IMAGE = ("IMAGE", {"tooltip": "Reference images to fade between: each gets a transition, and image_1 / image_2 "
                               "list the image of every frame."})


def _frame(default: int, tooltip: str):
    return ("INT", {"default": default, "min": 0, "max": 9999, "step": 1, "tooltip": tooltip})


def _outputs(strategy: Strategy, image) -> tuple:
    s = schedule(strategy, image)
    return (s.weights, s.weights_invert, s.total_frames, s.image_1, s.image_2, strategy.as_dict())


class _Schedule(FromSpecs):
    """The frame-weight nodes share their outputs (and the reference images they list per frame)."""

    CATEGORY = "ipadapter/weights"
    RETURN_TYPES = _OUTPUTS
    RETURN_NAMES = _OUTPUT_NAMES
    FUNCTION = "weights"
    OPTIONAL = (("image", _IMAGE),)


class IPAdapterWeights(_Schedule):
    REQUIRED = (
        ("weights", ("STRING", {"default": "1.0, 0.0", "multiline": True,
                                "tooltip": "Weights separated by commas or new lines. With a timing other than "
                                           "custom, the first and last value are the start and end."})),
        ("timing", (list(TIMINGS), {"default": "linear",
                                    "tooltip": "Curve from start to end (ease_in slows down towards the end, ease_out "
                                               "speeds up, as in the old extension); custom uses the weights as "
                                               "typed; random draws reproducible values."})),
        ("frames", _frame(0, "Frames of one transition (at least 2).")),
        ("start_frame", _frame(0, "Frame where the transition starts; earlier frames hold the start value.")),
        ("end_frame", _frame(9999, "Frame where the transition ends; later frames hold the end value.")),
        ("add_starting_frames", _frame(0, "Extra frames before everything, holding the first weight and image.")),
        ("add_ending_frames", _frame(0, "Extra frames after everything, holding the last weight and image.")),
        ("method", (list(METHODS), {"default": "full batch",
                                    "tooltip": "full batch: one transition per image; shift batches: image 1 to 2, "
                                               "2 to 3, ...; alternate batches: like shift, every second transition "
                                               "inverted, image_1 holding the even images."})),
    )

    def weights(self, weights="1.0, 0.0", timing="linear", frames=0, start_frame=0, end_frame=9999,
                add_starting_frames=0, add_ending_frames=0, method="full batch", image=None):
        strategy = Strategy(weights, timing, frames, start_frame, end_frame, add_starting_frames, add_ending_frames,
                            method, image.shape[0] if image is not None else 0)
        return _outputs(strategy, image)


class IPAdapterWeightsFromStrategy(_Schedule):
    REQUIRED = (("weights_strategy", _STRATEGY),)

    def weights(self, weights_strategy, image=None):
        return _outputs(Strategy.from_dict(weights_strategy), image)


class IPAdapterPromptScheduleFromWeightsStrategy(FromSpecs):
    CATEGORY = "ipadapter/weights"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompt_schedule",)
    FUNCTION = "prompt_schedule"
    REQUIRED = (
        ("weights_strategy", ("WEIGHTS_STRATEGY", {"tooltip": "The settings of an IPAdapter Weights node that had "
                                                              "reference images."})),
        ("prompt", ("STRING", {"default": "", "multiline": True,
                               "tooltip": "One prompt per line, one line per reference image (the last line repeats "
                                          "when there are fewer)."})),
    )

    def prompt_schedule(self, weights_strategy, prompt=""):
        return (prompt_schedule(Strategy.from_dict(weights_strategy), prompt),)


class IPAdapterFromParams(FromSpecs):
    CATEGORY = "ipadapter/params"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_ipadapter"
    REQUIRED = ("model", "ipadapter", "ipadapter_params", "combine_embeds", "embeds_scaling")
    OPTIONAL = ("image_negative", "clip_vision", "negative_mode")

    def apply_ipadapter(self, model, ipadapter, ipadapter_params, combine_embeds, embeds_scaling,
                        image_negative=None, clip_vision=None, negative_mode="black image"):
        adapter, clip_vision = adapter_and_encoder(ipadapter, clip_vision)
        return (params_lib.apply_params(model, adapter, clip_vision, ipadapter_params, combine=combine_embeds,
                                        embeds_scaling=embeds_scaling, image_negative=image_negative,
                                        negative_mode=negative_mode, unfold=False),)


class IPAdapterRegionalConditioning(FromSpecs):
    CATEGORY = "ipadapter/params"
    RETURN_TYPES = ("IPADAPTER_PARAMS", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("IPADAPTER_PARAMS", "POSITIVE", "NEGATIVE")
    FUNCTION = "conditioning"
    REQUIRED = (
        ("image", {"tooltip": "The image prompt for this region."}),
        ("image_weight", ("FLOAT", {"default": 1.0, "min": -1.0, "max": 3.0, "step": 0.05,
                                    "tooltip": "Strength of the image prompt in this region."})),
        ("prompt_weight", ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05,
                                     "tooltip": "Strength of the text conditionings inside the mask."})),
        "weight_type", "start_at", "end_at",
    )
    OPTIONAL = (
        ("mask", {"tooltip": "The region (white). Without it the image prompt acts everywhere and the "
                             "conditionings pass unchanged."}),
        ("positive", ("CONDITIONING", {"tooltip": "Text conditioning to confine to the region."})),
        ("negative", ("CONDITIONING", {"tooltip": "Negative conditioning to confine to the region."})),
    )

    def conditioning(self, image, image_weight, prompt_weight, weight_type, start_at, end_at, mask=None,
                     positive=None, negative=None):
        region = params_lib.make_params(image, mask, image_weight, weight_type, start_at, end_at)
        return (region, params_lib.set_region(positive, mask, prompt_weight),
                params_lib.set_region(negative, mask, prompt_weight))


_REGIONS = ("IPADAPTER_PARAMS", {"tooltip": "Regions to join; their order is kept."})


class IPAdapterCombineParams(FromSpecs):
    CATEGORY = "ipadapter/params"
    RETURN_TYPES = ("IPADAPTER_PARAMS",)
    FUNCTION = "combine"
    REQUIRED = (("params_1", _REGIONS), ("params_2", _REGIONS))
    OPTIONAL = tuple((f"params_{i}", _REGIONS) for i in range(3, 6))

    def combine(self, params_1, params_2, params_3=None, params_4=None, params_5=None):
        return (params_lib.combine_params(params_1, params_2, params_3, params_4, params_5),)


NODES = node_table(IPAdapterWeights, IPAdapterWeightsFromStrategy, IPAdapterPromptScheduleFromWeightsStrategy,
                   IPAdapterFromParams, IPAdapterRegionalConditioning, IPAdapterCombineParams)
