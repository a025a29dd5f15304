"""IPAdapter Fooocus (category ipadapter): Fooocus's Image Prompt / FaceSwap formulation (ipadapter/fooocus.py)."""
from __future__ import annotations

import folder_paths

from ..ipadapter.fooocus import CROP_CHOICES, MODE_NAMES, apply_fooocus, mode_settings, read_negative
from ..ipadapter.unified import adapter_and_encoder
from .registry import node_table
from .specs import FromSpecs, input_types

NO_NEGATIVE = "none"


def _negative_choices() -> list[str]:
    return [NO_NEGATIVE] + [f for f in folder_paths.get_filename_list("ipadapter") if f.endswith(".safetensors")]


class IPAdapterFooocus(FromSpecs):
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_ipadapter"
    REQUIRED = (
        "model", "ipadapter", "image",
        ("mode", (list(MODE_NAMES), {
            "tooltip": "Fooocus's presets: Image Prompt (stop 0.5, weight 0.6) with ip-adapter-plus_sdxl_vit-h, "
                       "FaceSwap (stop 0.9, weight 0.75) with ip-adapter-plus-face_sdxl_vit-h on a face crop. "
                       "custom: the weight and stop_at below (the presets ignore them)."})),
        ("weight", {"default": 0.6, "max": 2.0,
                    "tooltip": "custom mode: Fooocus's weight. 0 is not off: the tokens still join the attention."}),
        ("stop_at", ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                               "tooltip": "custom mode: the image prompt acts while Fooocus's progress "
                                          "(1 - timestep/999) is below this."})),
    )

    OPTIONAL = ("mask", "clip_vision",
                ("crop", (list(CROP_CHOICES), {
                    "tooltip": "stretch: the whole reference resized to the encoder's square, as Fooocus does; "
                               "center crop: ComfyUI's usual square crop."})),
                "weight_curve")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        negative = ("negative_file", (_negative_choices(), {
            "tooltip": "Fooocus's precomputed negative (fooocus_ip_negative.safetensors in models/ipadapter) for the "
                       "uncond rows, as Fooocus uses; none: the usual black-image negative."}))
        return input_types(cls.REQUIRED, (negative,) + cls.OPTIONAL)

    def apply_ipadapter(self, model, ipadapter, image, mode, weight, stop_at, negative_file=NO_NEGATIVE, mask=None,
                        clip_vision=None, crop=CROP_CHOICES[0], weight_curve=None):
        adapter, clip_vision = adapter_and_encoder(ipadapter, clip_vision)
        settings = mode_settings(mode, weight, stop_at)
        negative = None
        if negative_file and negative_file != NO_NEGATIVE:
            negative = read_negative(folder_paths.get_full_path_or_raise("ipadapter", negative_file))
        return (apply_fooocus(model, adapter, clip_vision, image, weight=settings.weight, stop=settings.stop,
                              negative=negative, negative_name=negative_file, crop=crop != CROP_CHOICES[0],
                              mask=mask, weight_curve=weight_curve),)


NODES = node_table(IPAdapterFooocus)
