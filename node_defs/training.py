"""Training (category ipadapter/training): IPAdapter Train, in the style of ComfyUI's own training nodes."""
from __future__ import annotations

import logging
import os
import re

import comfy.utils
import folder_paths

from ..ipadapter.adapter import load_adapter
from ..ipadapter.training.data import from_images, load_dataset, split_captions
from ..ipadapter.training.plot import loss_curve
from ..ipadapter.training.recipe import TRAIN_FAMILIES, Recipe
from ..ipadapter.training.run import train
from ..ipadapter.training.trainer import TrainSettings
from .registry import node_table
from .specs import FromSpecs

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[\w\-. ]+$")


def _report(text: str, node_id) -> None:
    """The current loss under the node's progress bar (where this ComfyUI has progress text)."""
    try:
        from server import PromptServer

        send = getattr(PromptServer.instance, "send_progress_text", None)
        if send is not None and node_id is not None:
            send(text, node_id)
    except Exception:  # headless runs have no server: the progress bar alone is fine
        pass


def output_path(output_name: str) -> str:
    """``models/ipadapter/<output_name>.safetensors`` (``.bin`` when the name ends so)."""
    name = output_name.strip()
    if not name or not _NAME.match(name) or name.startswith("."):
        raise ValueError(f"IPAdapter Train: output_name {output_name!r} must be a plain file name (letters, digits, "
                         "- _ . and spaces), without folders.")
    if not name.lower().endswith((".safetensors", ".bin")):
        name += ".safetensors"
    return os.path.join(folder_paths.get_folder_paths("ipadapter")[0], name)


class IPAdapterTrain(FromSpecs):
    CATEGORY = "ipadapter/training"
    RETURN_TYPES = ("IPADAPTER", "IMAGE")
    RETURN_NAMES = ("ipadapter", "loss_curve")
    FUNCTION = "train"
    DESCRIPTION = ("Trains an IP-Adapter (the reference recipe: only the projection and each layer's to_k_ip / "
                   "to_v_ip learn) on images with captions, saves it to models/ipadapter and outputs it, ready for "
                   "any IPAdapter apply node.")
    REQUIRED = (
        ("model", ("MODEL", {"tooltip": "The SD1.5 or SDXL model to train against (frozen; not changed)."})),
        ("clip", ("CLIP", {"tooltip": "The text encoder that encodes the captions (frozen)."})),
        ("vae", ("VAE", {"tooltip": "Encodes the training images to latents (frozen)."})),
        "clip_vision",
        ("captions", ("STRING", {"multiline": True, "default": "",
                                 "tooltip": "One caption per line, in the order of the images (one line applies to "
                                            "all). Ignored when dataset_path is set."})),
        ("family", (list(TRAIN_FAMILIES), {"tooltip": "basic: 4 tokens from image_embeds; plus: Resampler, 16 tokens "
                                                      "from the penultimate states; plus-face: the same on face crops; "
                                                      "full-face: one token per CLIP token. Ignored when fine-tuning."})),
        ("steps", ("INT", {"default": 200, "min": 1, "max": 1_000_000, "tooltip": "Optimiser steps."})),
        ("batch_size", ("INT", {"default": 1, "min": 1, "max": 256, "tooltip": "Samples per step."})),
        ("learning_rate", ("FLOAT", {"default": Recipe.learning_rate, "min": 1e-7, "max": 1.0, "step": 1e-5,
                                     "round": False, "tooltip": "AdamW learning rate (reference: 1e-4)."})),
        ("seed", ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                          "tooltip": "Decides order, drops, noise and timesteps."})),
        ("resolution", ("INT", {"default": 512, "min": 64, "max": 4096, "step": 64,
                                "tooltip": "Images are resized (short side) and center-cropped to this for the VAE "
                                           "(512 for SD1.5, 1024 for SDXL)."})),
        ("output_name", ("STRING", {"default": "ipadapter_trained",
                                    "tooltip": "File name in models/ipadapter (.safetensors unless it ends in .bin); "
                                               "an existing file of that name is replaced."})),
    )
    OPTIONAL = (
        ("images", ("IMAGE", {"tooltip": "The training images, one caption line each."})),
        ("ipadapter", ("IPADAPTER", {"tooltip": "Fine-tune this adapter instead of training a new one: training "
                                                "starts from exactly its weights."})),
        ("dataset_path", ("STRING", {"default": "",
                                     "tooltip": "Instead of images + captions: a folder of images with same-named "
                                                ".txt captions, or a JSON list [{\"image_file\", \"text\"}]."})),
    )

    def train(self, model, clip, vae, clip_vision, captions, family, steps, batch_size, learning_rate, seed,
              resolution, output_name, images=None, ipadapter=None, dataset_path="", unique_id=None):
        path = output_path(output_name)
        if dataset_path.strip():
            dataset = load_dataset(dataset_path.strip())
        elif images is not None:
            dataset = from_images(images, split_captions(captions) or [""])
        else:
            raise ValueError("IPAdapter Train: connect images (with one caption per line) or set dataset_path.")
        settings = TrainSettings(steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                                 resolution=resolution, cache_encodings=images is not None and not dataset_path.strip())
        bar = comfy.utils.ProgressBar(steps)

        def on_step(done: int, loss: float) -> None:
            bar.update_absolute(done, steps)
            _report(f"step {done}/{steps}  loss {loss:.4f}", unique_id)

        result = train(model, clip, vae, clip_vision, dataset, settings, family=None if ipadapter else family,
                       base=ipadapter, output=path, on_step=on_step)
        log.info("IPAdapter Train: saved %s (final loss %.4f)", result.path, result.losses[-1])
        return (load_adapter(result.path), loss_curve(result.losses))

    @classmethod
    def INPUT_TYPES(cls):
        types = super().INPUT_TYPES()
        types["hidden"] = {"unique_id": "UNIQUE_ID"}
        return types


NODES = node_table(IPAdapterTrain)
