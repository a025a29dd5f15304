"""Frame-weight schedules for animations: IPAdapter Weights, From Strategy, Prompt Schedule, Combine Weights."""
from __future__ import annotations

from ..ipadapter.schedules import METHODS, TIMINGS, Strategy, combine_weights, prompt_schedule, schedule

_OUTPUTS = ("FLOAT", "FLOAT", "INT", "IMAGE", "IMAGE", "WEIGHTS_STRATEGY")
_OUTPUT_NAMES = ("weights", "weights_invert", "total_frames", "image_1", "image_2", "weights_strategy")
_IMAGE = ("IMAGE", {"tooltip": "Reference images to fade between: each gets a transition, and image_1 / image_2 "
                               "list the image of every frame."})


def _frame(default: int, tooltip: str):
    return ("INT", {"default": default, "min": 0, "max": 9999, "step": 1, "tooltip": tooltip})


def _outputs(strategy: Strategy, image) -> tuple:
    s = schedule(strategy, image)
    return (s.weights, s.weights_invert, s.total_frames, s.image_1, s.image_2, strategy.as_dict())


class IPAdapterWeights:
    CATEGORY = "ipadapter/weights"
    RETURN_TYPES = _OUTPUTS
    RETURN_NAMES = _OUTPUT_NAMES
    FUNCTION = "weights"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "weights": ("STRING", {"default": "1.0, 0.0", "multiline": True,
                                       "tooltip": "Weights separated by commas or new lines. With a timing other "
                                                  "than custom, the first and last value are the start and end."}),
                "timing": (list(TIMINGS), {"default": "linear",
                                           "tooltip": "Curve from start to end (ease_in slows down towards the end, "
                                                      "ease_out speeds up, as in the old extension); custom uses "
                                                      "the weights as typed; random draws reproducible values."}),
                "frames": _frame(0, "Frames of one transition (at least 2)."),
                "start_frame": _frame(0, "Frame where the transition starts; earlier frames hold the start value."),
                "end_frame": _frame(9999, "Frame where the transition ends; later frames hold the end value."),
                "add_starting_frames": _frame(0, "Extra frames before everything, holding the first weight and image."),
                "add_ending_frames": _frame(0, "Extra frames after everything, holding the last weight and image."),
                "method": (list(METHODS), {"default": "full batch",
                                           "tooltip": "full batch: one transition per image; shift batches: image "
                                                      "1 to 2, 2 to 3, ...; alternate batches: like shift, every "
                                                      "second transition inverted, image_1 holding the even images."}),
            },
            "optional": {"image": _IMAGE},
        }

    def weights(self, weights="1.0, 0.0", timing="linear", frames=0, start_frame=0, end_frame=9999,
                add_starting_frames=0, add_ending_frames=0, method="full batch", image=None):
        strategy = Strategy(weights, timing, frames, start_frame, end_frame, add_starting_frames, add_ending_frames,
                            method, image.shape[0] if image is not None else 0)
        return _outputs(strategy, image)


class IPAdapterWeightsFromStrategy:
    CATEGORY = "ipadapter/weights"
    RETURN_TYPES = _OUTPUTS
    RETURN_NAMES = _OUTPUT_NAMES
    FUNCTION = "weights"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"weights_strategy": ("WEIGHTS_STRATEGY", {"tooltip": "The settings of an IPAdapter Weights node."})},
            "optional": {"image": _IMAGE},
        }

    def weights(self, weights_strategy, image=None):
        return _outputs(Strategy.from_dict(weights_strategy), image)


class IPAdapterPromptScheduleFromWeightsStrategy:
    CATEGORY = "ipadapter/weights"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompt_schedule",)
    FUNCTION = "prompt_schedule"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "weights_strategy": ("WEIGHTS_STRATEGY", {"tooltip": "The settings of an IPAdapter Weights node that "
                                                                 "had reference images."}),
            "prompt": ("STRING", {"default": "", "multiline": True,
                                  "tooltip": "One prompt per line, one line per reference image (the last line "
                                             "repeats when there are fewer)."}),
        }}

    def prompt_schedule(self, weights_strategy, prompt=""):
        return (prompt_schedule(Strategy.from_dict(weights_strategy), prompt),)


class IPAdapterCombineWeights:
    CATEGORY = "ipadapter/utils"
    RETURN_TYPES = ("FLOAT", "INT")
    RETURN_NAMES = ("weights", "count")
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls):
        spec = {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05}
        return {"required": {
            "weights_1": ("FLOAT", {**spec, "tooltip": "A weight, or a list of weights from IPAdapter Weights."}),
            "weights_2": ("FLOAT", {**spec, "tooltip": "Appended after weights_1."}),
        }}

    def combine(self, weights_1, weights_2):
        weights = combine_weights(weights_1, weights_2)
        return (weights, len(weights))


NODES = {
    "IPAdapterWeights": (IPAdapterWeights, "IPAdapter Weights"),
    "IPAdapterWeightsFromStrategy": (IPAdapterWeightsFromStrategy, "IPAdapter Weights From Strategy"),
    "IPAdapterPromptScheduleFromWeightsStrategy": (IPAdapterPromptScheduleFromWeightsStrategy,
                                                   "Prompt Schedule From Weights Strategy"),
    "IPAdapterCombineWeights": (IPAdapterCombineWeights, "IPAdapter Combine Weights"),
}
