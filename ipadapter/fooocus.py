"""Fooocus's image prompt (its Image Prompt and FaceSwap modes), reproduced on a ComfyUI MODEL.

What makes it Fooocus's and not the adapters' own (decoupled) formulation:
- joint attention: each image prompt appends its K/V to the text's, one softmax over both (attention.py);
- scaling per layer with C = the layer's width (to_k_ip's output): K * w*C/1280, and only V's token mean
  scaled by w*C/1280 ("K+mean(V) w/ C penalty"; 1280 is SDXL's widest layer: here the adapter's widest);
- weight 0 still appends the tokens; only a prompt past its stop leaves the model as it was;
- the uncond rows use a precomputed negative already in token space (``fooocus_ip_negative.safetensors``,
  tensor ``data`` [1, 16, 2048]), fed to to_k_ip / to_v_ip without the projection model;
- the stop compares Fooocus's progress ``1 - timestep / 999`` (timestep from the model's own sampling) with
  the stop value, so it switches on the same step as in Fooocus;
- the reference is stretched to the encoder's input size (224 x 224), not centre-cropped.
Each reference image is its own image prompt (its own token mean), as Fooocus's image slots are.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .adapter import Adapter
from .apply import Embeds, check_model, compute_dtype, encode_for, joint_layer_weights, make_entry
from .attention import apply_entries
from .curves import WeightCurve
from .image import resize

FOOOCUS_SCALING = "K+mean(V) w/ C penalty"
NEGATIVE_FILE = "fooocus_ip_negative.safetensors"
NEGATIVE_KEY = "data"
_LAST_TIMESTEP = 999.0  # Fooocus divides the UNet's timestep by 999


@dataclass(frozen=True)
class FooocusMode:
    stop: float
    weight: float


# Fooocus's defaults for its image prompt types (modules/flags.py).
MODES: dict[str, FooocusMode] = {"Image Prompt": FooocusMode(stop=0.5, weight=0.6),
                                 "FaceSwap": FooocusMode(stop=0.9, weight=0.75)}
CUSTOM = "custom"
MODE_NAMES = tuple(MODES) + (CUSTOM,)
CROP_CHOICES = ("stretch", "center crop")  # stretch (Fooocus) first: the node's default


def mode_settings(mode: str, weight: float, stop_at: float) -> FooocusMode:
    """A preset's stop and weight, or with ``custom`` the given ones."""
    if mode == CUSTOM:
        return FooocusMode(stop=stop_at, weight=weight)
    if mode not in MODES:
        raise ValueError(f"unknown Fooocus mode {mode!r}; choose one of {', '.join(MODE_NAMES)}")
    return MODES[mode]


def fooocus_progress(model_sampling, sigma: float) -> float:
    """Fooocus's sampling progress at ``sigma``: 1 - t / 999, t the timestep the model's sampling gives the UNet."""
    t = model_sampling.timestep(torch.tensor([sigma], dtype=torch.float32))
    return 1.0 - float(t.flatten()[0]) / _LAST_TIMESTEP


class FooocusStop:
    """The gate of one image prompt: active while Fooocus's progress is below ``stop``.

    Holds a CPU copy of the model's sampling object (a few KB), so the check never touches the GPU; the
    last (sigma, answer) is kept, so the layers of one UNet call evaluate it once.
    """

    def __init__(self, model_sampling, stop: float):
        self.stop = float(stop)
        self._sampling = copy.deepcopy(model_sampling).to("cpu")
        self._last: tuple[float, bool] | None = None

    def active(self, sigma: float) -> bool:
        last = self._last
        if last is not None and last[0] == sigma:
            return last[1]
        answer = fooocus_progress(self._sampling, sigma) < self.stop
        self._last = (sigma, answer)
        return answer


class NegativeFileError(ValueError):
    """A precomputed-negative file that does not fit; the message names the file and the fix."""


def read_negative(path: str | os.PathLike) -> Tensor:
    """The token tensor [1, T, C] stored under ``data`` in a Fooocus negative file."""
    import safetensors.torch

    name = os.path.basename(path)
    try:
        tensors = safetensors.torch.load_file(str(path))
    except Exception as e:  # a .bin or a damaged file: say which
        raise NegativeFileError(f"{name}: cannot read it as a .safetensors file ({e}). The Fooocus negative is "
                                f"{NEGATIVE_FILE}, with one tensor under the key '{NEGATIVE_KEY}'.") from None
    if NEGATIVE_KEY not in tensors:
        raise NegativeFileError(f"{name} has no tensor '{NEGATIVE_KEY}' (it has {', '.join(sorted(tensors)) or 'none'}): "
                                f"it is not a Fooocus negative; choose {NEGATIVE_FILE} or 'none'.")
    data = tensors[NEGATIVE_KEY]
    if data.dim() == 2:
        data = data[None]
    if data.dim() != 3 or data.shape[0] != 1:
        raise NegativeFileError(f"{name}: '{NEGATIVE_KEY}' has shape {list(data.shape)}; a Fooocus negative is "
                                "[1, tokens, width] (SDXL Plus: [1, 16, 2048]).")
    return data


def check_negative(negative: Tensor, tokens: Tensor, adapter: Adapter, name: str) -> None:
    """The negative must have the image prompt's token count and width (16 x 2048 for SDXL Plus)."""
    have, want = tuple(negative.shape[1:]), tuple(tokens.shape[1:])
    if have == want:
        return
    what = "tokens" if have[0] != want[0] else "channels per token"
    raise NegativeFileError(
        f"{name} holds {have[0]} tokens of width {have[1]} but {adapter.name} ({adapter.spec.label}) makes "
        f"{want[0]} tokens of width {want[1]}: the {what} differ. Fooocus's negative fits the SDXL Plus adapters "
        f"(16 x 2048, ip-adapter-plus_sdxl_vit-h / ip-adapter-plus-face_sdxl_vit-h); choose 'none' for other "
        "adapters (the usual black-image negative is used).")


def stretch(image: Tensor, size: int) -> Tensor:
    """Fooocus's preprocessing: the whole image resized to size x size (LANCZOS), aspect ratio not kept."""
    return resize(image, size, "LANCZOS")


def apply_fooocus(model, adapter: Adapter, clip_vision, image: Tensor, *, weight: float, stop: float,
                  negative: Tensor | None = None, negative_name: str = NEGATIVE_FILE, crop: bool = False,
                  mask: Tensor | None = None, weight_curve: WeightCurve | None = None):
    """A clone of ``model`` with one Fooocus image prompt per reference image (joint attention, see above)."""
    check_model(adapter, model)
    if clip_vision is not None and not crop:
        image = stretch(image, clip_vision.image_size)
    embeds = encode_for(adapter, clip_vision, image, mask=mask)
    weights = joint_layer_weights(adapter.spec.arch, "linear", weight)
    negative_tokens = None
    if negative is not None:
        negative_tokens = negative.to(compute_dtype(model))
    gate = FooocusStop(model.get_model_object("model_sampling"), stop)
    entries = []
    for i in range(embeds.cond.shape[0]):
        entry = make_entry(model, adapter, Embeds(embeds.cond[i:i + 1], embeds.uncond), weights,
                           embeds_scaling=FOOOCUS_SCALING, attention_mode="joint", weight_curve=weight_curve,
                           uncond_tokens=negative_tokens, gate=gate)
        if negative_tokens is not None:
            check_negative(negative_tokens, entry.cond, adapter, negative_name)
        entries.append(entry)
    return apply_entries(model, entries, adapter.spec.arch)
