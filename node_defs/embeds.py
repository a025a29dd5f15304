"""Embeds utilities: combine, save and load encoder features; noise images for the negative reference."""
from __future__ import annotations

import os

import torch

import folder_paths

from ..ipadapter.embeds_file import SUFFIX, load_embeds, save_embeds
from ..ipadapter.encode import COMBINE_METHODS, combine_embeds
from ..ipadapter.noise import NOISE_TYPES, make_noise

COMBINE_EMBEDS_METHODS = COMBINE_METHODS + ("max", "min")


class IPAdapterCombineEmbeds:
    CATEGORY = "ipadapter/embeds"
    RETURN_TYPES = ("EMBEDS",)
    FUNCTION = "batch"

    @classmethod
    def INPUT_TYPES(cls):
        more = {f"embed{i}": ("EMBEDS", {"tooltip": "More features, same encoder as embed1."}) for i in range(2, 6)}
        return {
            "required": {
                "embed1": ("EMBEDS", {"tooltip": "Features from IPAdapter Encoder (or Load Embeds)."}),
                "method": (list(COMBINE_EMBEDS_METHODS), {
                    "tooltip": "concat keeps every image; add / average / norm average / max / min merge them "
                               "element-wise into one; subtract takes the first minus the mean of the others."}),
            },
            "optional": more,
        }

    def batch(self, embed1, method, **more):
        given = [("embed1", embed1)] + [(k, more[k]) for k in sorted(more) if more[k] is not None]
        for name, e in given[1:]:
            if e.shape[1:] != embed1.shape[1:]:
                raise ValueError(
                    f"IPAdapter Combine Embeds: {name} has features of shape {list(e.shape[1:])} but embed1 has "
                    f"{list(embed1.shape[1:])}; all inputs must come from the same kind of IP-Adapter encoder.")
        embeds = torch.cat([e.to(embed1.device, embed1.dtype) for _, e in given])
        return (combine_embeds(embeds, method),)


class IPAdapterSaveEmbeds:
    CATEGORY = "ipadapter/embeds"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "embeds": ("EMBEDS", {"tooltip": "Features to save (from IPAdapter Encoder)."}),
            "filename_prefix": ("STRING", {"default": "IP_embeds",
                                           "tooltip": "Saved as output/<prefix>_00001.ipadpt; move the file to "
                                                      "input/ to load it with IPAdapter Load Embeds."}),
        }}

    def save(self, embeds, filename_prefix):
        output_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        file = f"{name}_{counter:05}{SUFFIX}"
        save_embeds(embeds, os.path.join(folder, file))
        return {"ui": {"embeds": [{"filename": file, "subfolder": subfolder, "type": "output"}]}}


def _embeds_files() -> list[str]:
    root = folder_paths.get_input_directory()
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
                  for f in files if f.endswith(SUFFIX))


class IPAdapterLoadEmbeds:
    CATEGORY = "ipadapter/embeds"
    RETURN_TYPES = ("EMBEDS",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"embeds": (_embeds_files(), {
            "tooltip": "An .ipadpt file anywhere under ComfyUI's input/ folder."})}}

    @classmethod
    def IS_CHANGED(cls, embeds):
        path = folder_paths.get_annotated_filepath(embeds)
        return os.path.getmtime(path) if os.path.exists(path) else ""

    def load(self, embeds):
        path = folder_paths.get_annotated_filepath(embeds)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"IPAdapter Load Embeds: {embeds} is not in {folder_paths.get_input_directory()}; "
                                    "put .ipadpt files there (saved ones are in output/).")
        return (load_embeds(path),)


class IPAdapterNoise:
    CATEGORY = "ipadapter/utils"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make_noise"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "type": (list(NOISE_TYPES), {"tooltip": "fade: mix towards noise; dissolve: replace pixels; "
                                                        "gaussian: add noise; shuffle: distort and flip the image."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0, "max": 1, "step": 0.05,
                                       "tooltip": "How much noise (0: the image unchanged, except for shuffle)."}),
                "blur": ("INT", {"default": 0, "min": 0, "max": 32, "step": 1,
                                 "tooltip": "Gaussian blur kernel size in pixels (even sizes are rounded up)."}),
            },
            "optional": {"image_optional": ("IMAGE", {
                "tooltip": "Image to add noise to (center square, resized to 224 px); black when not connected."})},
        }

    def make_noise(self, type, strength, blur, image_optional=None):  # noqa: A002 (the old input name)
        return (make_noise(type, strength, blur, image_optional),)


NODES = {
    "IPAdapterCombineEmbeds": (IPAdapterCombineEmbeds, "IPAdapter Combine Embeds"),
    "IPAdapterSaveEmbeds": (IPAdapterSaveEmbeds, "IPAdapter Save Embeds"),
    "IPAdapterLoadEmbeds": (IPAdapterLoadEmbeds, "IPAdapter Load Embeds"),
    "IPAdapterNoise": (IPAdapterNoise, "IPAdapter Noise"),
}
