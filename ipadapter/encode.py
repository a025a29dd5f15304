"""Reference images -> CLIP vision embeddings: encoder checks, chunked encoding, negatives, combining (one table
of combine methods, used by the apply nodes and by IPAdapter Combine Embeds)."""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import comfy.clip_vision
import comfy.model_management as mm

from .encoders import known_widths
from .errors import EncoderMismatchError
from .families import AdapterSpec
from .flux_instantx import POOLED_OUTPUT
from .inputs import require_images
from .progress import tracked

# Newer ComfyUI moved clip_preprocess to comfy.clip_model and keeps an alias here.
_clip_preprocess = getattr(comfy.clip_vision, "clip_preprocess", None)
if _clip_preprocess is None:  # pragma: no cover - newer ComfyUI only
    import comfy.clip_model

    _clip_preprocess = comfy.clip_model.clip_preprocess

NEGATIVE_MODES = ("black image", "normalized zeros")
# Vector outputs whose default negative is zeros (as the reference implementations use), not an encoded image.
ZERO_NEGATIVE_OUTPUTS = ("image_embeds", POOLED_OUTPUT)
# Which field of the encoder's output carries the features, by the spec's encoder output name.
_OUTPUT_INDEX = {"image_embeds": 2, "penultimate_hidden_states": 1, "last_hidden_state": 0}


def describe_encoder(output: str, width: int) -> str:
    known = known_widths().encoder(output, width)  # the real encoders and any registered stand-ins
    return known.name.removeprefix("CLIP ") if known is not None else "an encoder no IP-Adapter family uses"


def encoder_widths(clip_vision) -> dict[str, int]:
    """Widths of what the connected encoder gives: penultimate states (hidden) and image_embeds (projection)."""
    model = getattr(clip_vision, "model", None)
    projection = getattr(model, "visual_projection", None)
    weight = getattr(projection, "weight", None)
    norm = getattr(getattr(getattr(model, "vision_model", None), "post_layernorm", None), "weight", None)
    if weight is None and norm is not None:  # SigLIP: hidden states only, no image_embeds
        return {"penultimate_hidden_states": norm.shape[0], "last_hidden_state": norm.shape[0],
                "image_size": getattr(clip_vision, "image_size", 224)}
    if weight is None:
        raise EncoderMismatchError(
            "the connected CLIP_VISION model has no visual projection (it is not a CLIP vision encoder, e.g. "
            "SigLIP or DINOv2); connect the CLIP vision model the IP-Adapter was trained with."
        )
    out_features, in_features = weight.shape
    return {"image_embeds": out_features, "penultimate_hidden_states": in_features,
            "last_hidden_state": in_features, "image_size": getattr(clip_vision, "image_size", 224)}


def check_encoder(spec: AdapterSpec, clip_vision, adapter_name: str) -> None:
    """Fail before anything runs when the encoder does not fit the adapter, naming both."""
    need = spec.encoder
    if need is None:
        return
    if need.output == POOLED_OUTPUT:
        raise EncoderMismatchError(
            f"{adapter_name} needs {need.model}: the vector of SigLIP's attention-pooling head, which ComfyUI's "
            f"Load CLIP Vision leaves out, so this node cannot encode for it. Use IPAdapter SigLIP Pooled Encoder "
            f"(the SigLIP from Load CLIP Vision, the reference image and the SigLIP file, whose head it reads) -> "
            f"IPAdapter Embeds, or IPAdapter Load Embeds with a saved pooled vector ({need.width} wide).")
    have = encoder_widths(clip_vision)
    width = have.get(need.output)
    if width is None:
        raise EncoderMismatchError(
            f"{adapter_name} needs {need.model} image_embeds; the connected encoder has no projection (a SigLIP "
            f"encoder). Load {need.model} with Load CLIP Vision and connect it.")
    if width == need.width and have["image_size"] == need.image_size:
        return
    field = "image_embeds" if need.output == "image_embeds" else "penultimate"
    wanted = f"{need.model} ({field} width {need.width})" if need.key else need.model
    if have["image_size"] != need.image_size:
        wanted += f" at {need.image_size} px"
    gives = f"{width}" + (f" at {have['image_size']} px" if have["image_size"] != need.image_size else "")
    raise EncoderMismatchError(
        f"{adapter_name} needs {wanted}; the connected encoder gives {gives} ({describe_encoder(need.output, width)}). "
        f"Load {need.model} with Load CLIP Vision and connect it, or use an IP-Adapter made for this encoder."
    )


def _run_encoder(clip_vision, pixel_values: Tensor, output: str) -> Tensor:
    # Never build an autograd graph, whoever calls (ComfyUI's executor runs nodes under inference mode,
    # scripts and other packs may not): ComfyUI's CLIP vision forward keeps its graph (weight casts and
    # activations) alive after the output is dropped, so each encode outside no_grad leaked it.
    with torch.no_grad():
        out = clip_vision.model(pixel_values=pixel_values, intermediate_output=-2)
    return out[_OUTPUT_INDEX[output]].to(mm.intermediate_device())


def encode_images(clip_vision, images: Tensor, output: str, batch_size: int = 0, mask: Tensor | None = None) -> Tensor:
    """IMAGE [B, H, W, 3] in 0..1 -> features, encoded ``batch_size`` at a time (0: all at once).

    Images are resized (short side) and center-cropped to the encoder's own input size. A mask
    multiplies the normalised pixels (masked pixels become the dataset mean colour), as the old
    extension's Encoder node did.
    """
    require_images("image", images)  # callers name their own input first; this guards the rest
    mm.load_models_gpu([clip_vision.patcher])
    device = clip_vision.load_device
    size = clip_vision.image_size
    step = batch_size if batch_size > 0 else images.shape[0]
    chunks = []
    for start in tracked(range(0, images.shape[0], step)):
        pixels = _clip_preprocess(images[start:start + step].to(device), size=size, mean=clip_vision.image_mean,
                                  std=clip_vision.image_std, crop=True).float()
        if mask is not None:
            m = F.interpolate(_square_crop(mask.to(device).float())[:, None], size=(size, size), mode="bicubic")
            pixels = pixels * m.clamp(0, 1)[:pixels.shape[0]] if m.shape[0] > 1 else pixels * m.clamp(0, 1)
        chunks.append(_run_encoder(clip_vision, pixels, output))
    return torch.cat(chunks)


def _square_crop(mask: Tensor) -> Tensor:
    h, w = mask.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return mask[..., top:top + s, left:left + s]


def negative_embeds(clip_vision, output: str, like: Tensor, image_negative: Tensor | None = None,
                    mode: str = "black image", batch_size: int = 0) -> Tensor:
    """Features of the negative ("uncond") reference.

    - a negative image, when given, is encoded like the reference;
    - image_embeds adapters otherwise use zero embeddings (as the reference implementation does);
    - hidden-state adapters encode a black image (ComfyUI workflows' default) or, with
      ``mode="normalized zeros"``, an all-zero pixel tensor after CLIP normalisation (the reference's choice).
    """
    if image_negative is not None:
        return encode_images(clip_vision, image_negative, output, batch_size)
    if mode not in NEGATIVE_MODES:
        raise ValueError(f"unknown negative mode {mode!r}; choose one of {NEGATIVE_MODES}")
    if output in ZERO_NEGATIVE_OUTPUTS:
        return torch.zeros_like(like[:1])
    # The default negative is the same for every apply with this encoder: encode it once. Returning the
    # same tensor also lets the adapter reuse its projection (see Adapter.project_cached).
    cached = _default_negatives.setdefault(clip_vision, {})
    if (output, mode) not in cached:
        cached[(output, mode)] = _encode_default_negative(clip_vision, output, mode)
    return cached[(output, mode)]


_default_negatives: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _encode_default_negative(clip_vision, output: str, mode: str) -> Tensor:
    size = clip_vision.image_size
    if mode == "black image":
        return encode_images(clip_vision, torch.zeros(1, size, size, 3), output)
    mm.load_models_gpu([clip_vision.patcher])
    return _run_encoder(clip_vision, torch.zeros(1, 3, size, size, device=clip_vision.load_device), output)


def negative_for_embeds(spec: AdapterSpec, adapter_name: str, clip_vision, like: Tensor,
                        mode: str = "black image") -> Tensor:
    """The negative for precomputed features ``like`` (IPAdapter Embeds without neg_embed): zeros for
    image_embeds adapters, else the default negative image, which needs the encoder."""
    output = spec.encoder.output
    if output not in ZERO_NEGATIVE_OUTPUTS and clip_vision is None:
        raise ValueError(f"{adapter_name}: without neg_embed the negative is encoded from a black image; "
                         "connect clip_vision or neg_embed.")
    if clip_vision is not None and output != POOLED_OUTPUT:  # a pooled negative is zeros: no encoder runs
        check_encoder(spec, clip_vision, adapter_name)
    return negative_embeds(clip_vision, output, like, mode=mode)


@dataclass(frozen=True)
class CombineMethod:
    """How N reference embeddings [N, ...] become one [1, ...] (``concat`` keeps all N)."""

    combine: Callable[[Tensor], Tensor]
    # The apply nodes' combine_embeds offers fewer methods than Combine Embeds: the old extension's lists.
    on_apply_nodes: bool = True


def _norm_average(embeds: Tensor) -> Tensor:
    # Kept as the old extension computed it: normalised across the batch axis, per feature.
    return (embeds / embeds.norm(dim=0, keepdim=True)).mean(dim=0, keepdim=True)


COMBINE_TABLE: dict[str, CombineMethod] = {
    "concat": CombineMethod(lambda embeds: embeds),
    "add": CombineMethod(lambda embeds: embeds.sum(dim=0, keepdim=True)),
    "subtract": CombineMethod(lambda embeds: embeds[:1] - embeds[1:].mean(dim=0, keepdim=True)),
    "average": CombineMethod(lambda embeds: embeds.mean(dim=0, keepdim=True)),
    "norm average": CombineMethod(_norm_average),
    "max": CombineMethod(lambda embeds: embeds.max(dim=0, keepdim=True).values, on_apply_nodes=False),
    "min": CombineMethod(lambda embeds: embeds.min(dim=0, keepdim=True).values, on_apply_nodes=False),
}
COMBINE_METHODS = tuple(name for name, method in COMBINE_TABLE.items() if method.on_apply_nodes)
EMBEDS_COMBINE_METHODS = tuple(COMBINE_TABLE)  # IPAdapter Combine Embeds offers every method


def combine_embeds(embeds: Tensor, method: str) -> Tensor:
    """Combine N reference embeddings [N, ...] into one [1, ...] (``concat`` keeps all N)."""
    if embeds.shape[0] == 1:  # one embedding is its own combination, whatever the method (checked first, as before)
        return embeds
    if method not in COMBINE_TABLE:
        raise ValueError(f"unknown combine method {method!r}; choose one of {EMBEDS_COMBINE_METHODS}")
    return COMBINE_TABLE[method].combine(embeds)


def stack_embeds(named: Sequence[tuple[str, Tensor]]) -> Tensor:
    """Concatenate embeddings given as (input name, tensor) along the batch axis, on the first one's device
    and dtype, after checking they come from the same kind of encoder (the names go in the message)."""
    first_name, first = named[0]
    for name, embeds in named[1:]:
        if embeds.shape[1:] != first.shape[1:]:
            raise ValueError(
                f"IPAdapter Combine Embeds: {name} has features of shape {list(embeds.shape[1:])} but "
                f"{first_name} has {list(first.shape[1:])}; all inputs must come from the same kind of "
                "IP-Adapter encoder.")
    return torch.cat([embeds.to(first.device, first.dtype) for _, embeds in named])
