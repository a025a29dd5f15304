"""FaceID: face embeddings (and their files) and FaceID adapters' inputs and apply pipeline.

FaceID adapters read a 512-d ArcFace embedding of the face (insightface ``normed_embedding``, or the raw
``embedding`` for Portrait-unnorm) instead of, or beside (FaceID-Plus, Kolors), CLIP features of the
aligned face crop. The embeddings come from ``insightface_glue`` (detection) or are given directly
(``FaceEmbeds``, also saved and loaded as files), so FaceID runs without insightface too.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from .adapter import Adapter
from .apply import Embeds, apply_adapter
from .encode import check_encoder, combine_embeds, encode_images, negative_embeds
from .errors import FaceIDError, NoFaceError
from .files import check_tensors, load_tensor_file
from .inputs import require_finite, require_images
from .output_files import write_atomically
from .families import resolve_faceid_v2
from .insightface_glue import DET_SIZES, detect_faces

__all__ = [
    "FACE_EMBEDS_SUFFIX",
    "FaceEmbeds",
    "FaceIDError",
    "NoFaceError",
    "analyze_faces",
    "apply_faceid",
    "crop_size_for",
    "faceid_embeds",
    "kolors_token_transform",
    "load_face_embeds",
    "save_face_embeds",
]

FACE_EMBEDS_SUFFIX = ".face.safetensors"


# --------------------------------------------------------------------------------------------------
# Face embeddings
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceEmbeds:
    """ArcFace embeddings of N faces: ``normed`` [N, E] always; ``raw`` [N, E] (insightface ``embedding``,
    needed by Portrait-unnorm) when known. ``crops`` are the aligned face crops [N, S, S, 3] if any."""

    normed: Tensor
    raw: Tensor | None = None
    crops: Tensor | None = None

    def __post_init__(self):
        if self.normed.ndim != 2:
            raise FaceIDError(f"face embeddings must be [faces, width], got shape {list(self.normed.shape)}")

    @classmethod
    def from_tensor(cls, embeds: Tensor) -> "FaceEmbeds":
        """From a plain tensor [N, E] (or [N, 1, E], as diffusers stores them): taken as raw embeddings
        when their norm is not 1, else as normed ones."""
        embeds = embeds.reshape(-1, embeds.shape[-1]).float()
        norms = embeds.norm(dim=-1, keepdim=True)
        if torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            return cls(embeds)
        return cls(embeds / norms, raw=embeds)

    def __len__(self) -> int:
        return self.normed.shape[0]

    def select(self, field: str, source: str) -> Tensor:
        """``field`` is the spec's ``face_embedding``: "normed_embedding" or "embedding"."""
        if field == "embedding":
            if self.raw is None:
                raise FaceIDError(f"{source} reads the unnormalised face embedding, but these face embeds only "
                                  "hold normalised ones; detect the faces again (insightface) or save raw embeds.")
            return self.raw
        return self.normed


def analyze_faces(analyser, images: Tensor, *, crop_size: int = 224, selection: str = "first",
                  det_sizes: Sequence[int] = DET_SIZES) -> FaceEmbeds:
    """The faces ``insightface_glue.detect_faces`` finds (one per image), as FaceEmbeds with their crops."""
    require_images("image", images)
    return FaceEmbeds(*detect_faces(analyser, images, crop_size=crop_size, selection=selection, det_sizes=det_sizes))


# --------------------------------------------------------------------------------------------------
# Face embeds files
# --------------------------------------------------------------------------------------------------
def save_face_embeds(embeds: FaceEmbeds, path: str | os.PathLike) -> Path:
    """Write ``embeds`` as safetensors (``normed``, ``raw`` when known); no crops."""
    tensors = {"normed": embeds.normed.contiguous().cpu()}
    if embeds.raw is not None:
        tensors["raw"] = embeds.raw.contiguous().cpu()
    path = Path(path)
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "kind": "ipadapter face embeds"}))
    return path


def load_face_embeds(path: str | os.PathLike) -> FaceEmbeds:
    """Read a file written by ``save_face_embeds`` (or any safetensors with one [N, 512] tensor)."""
    name = Path(path).name
    try:
        tensors = dict(load_tensor_file(path))  # safetensors, or a torch file (weights only), by its bytes
        check_tensors(tensors, name, kind="a face embeds file")
    except ValueError as exc:
        raise FaceIDError(str(exc)) from None
    if "normed" in tensors:
        return FaceEmbeds(tensors["normed"].float(), tensors["raw"].float() if "raw" in tensors else None)
    if len(tensors) == 1:
        return FaceEmbeds.from_tensor(next(iter(tensors.values())))
    raise FaceIDError(f"{Path(path).name} holds {sorted(tensors)}, not face embeddings ('normed' / 'raw').")


# --------------------------------------------------------------------------------------------------
# Adapter checks and inputs
# --------------------------------------------------------------------------------------------------
def _require_faceid_node(adapter: Adapter, kolors_node: bool) -> None:
    spec = adapter.spec
    if not spec.is_faceid:
        raise FaceIDError(
            f"{adapter.name} is not a FaceID adapter ({spec.label}); use IPAdapter Advanced (or IPAdapter) for it."
        )
    if spec.is_kolors and not kolors_node:
        raise FaceIDError(f"{adapter.name} is the Kolors FaceID adapter: use the IPAdapter FaceID Kolors node "
                          "(it projects the tokens with the Kolors UNet's encoder_hid_proj).")
    if kolors_node and not spec.is_kolors:
        raise FaceIDError(f"{adapter.name} is not a Kolors adapter ({spec.label}); use the IPAdapter FaceID node.")


def crop_size_for(adapter: Adapter) -> int:
    """The aligned-crop size: the CLIP encoder's input size (224; 336 for Kolors), as the reference
    implementation crops (the old extension cropped SDXL faces at 256 and let CLIP resize them)."""
    enc = adapter.spec.encoder
    return enc.image_size if enc is not None else 224


def _combine(t: Tensor, method: str, unfold: bool) -> Tensor:
    return t if unfold or method == "concat" else combine_embeds(t, method)


def faceid_embeds(adapter: Adapter, faces: FaceEmbeds, *, crops: Tensor | None = None, clip_vision=None,
                  image_negative: Tensor | None = None, combine: str = "concat", unfold: bool = False,
                  v2: bool | None = None, shortcut_scale: float = 1.0,
                  negative_mode: str = "black image") -> Embeds:
    """Projection inputs for a FaceID adapter, combined over the faces as ``combine`` says.

    The negative is zero face embeddings (as the reference and the old extension do); FaceID-Plus also
    encodes the face crops with CLIP (penultimate states) and, for the negative, ``image_negative`` or a
    black image. ``v2`` turns on the Plus v2 shortcut (``id_tokens + shortcut_scale * perceiver``).
    """
    spec = adapter.spec
    face = faces.select(spec.face_embedding, adapter.name)
    if spec.face_embed_dim is not None and face.shape[-1] != spec.face_embed_dim:
        raise FaceIDError(f"{adapter.name} reads {spec.face_embed_dim}-wide face embeddings; the given ones are "
                          f"{face.shape[-1]} wide (another face model?).")
    cond = _combine(face, combine, unfold)
    uncond = torch.zeros_like(cond[:1])
    if spec.projection != "faceid_plus":
        return Embeds(cond, uncond)

    if clip_vision is None:
        raise FaceIDError(f"{adapter.name} (FaceID Plus) also reads CLIP features of the face: connect clip_vision "
                          f"({spec.encoder.model}) or use the Unified Loader FaceID.")
    check_encoder(spec, clip_vision, adapter.name)
    if crops is None:
        raise FaceIDError(f"{adapter.name} (FaceID Plus) needs the face image(s) to encode with CLIP.")
    output = spec.encoder.output
    clip = encode_images(clip_vision, crops, output)
    if clip.shape[0] != face.shape[0]:
        if clip.shape[0] == 1:
            clip = clip.expand(face.shape[0], *clip.shape[1:])
        else:
            raise FaceIDError(f"{face.shape[0]} face embeddings but {clip.shape[0]} face images; give one image per "
                              "face, or a single image for all.")
    clip_uncond = negative_embeds(clip_vision, output, clip, image_negative, negative_mode)[:1]
    shortcut = bool(spec.faceid_v2 if v2 is None else v2)
    extra = {"shortcut": shortcut, "scale": float(shortcut_scale)}
    return Embeds(cond, torch.zeros_like(cond[:1]),
                  cond_extra={"clip_embeds": _combine(clip, combine, unfold), **extra},
                  uncond_extra={"clip_embeds": clip_uncond, **extra})


def kolors_token_transform(model, weight_kolors: float) -> Callable[[Tensor], Tensor]:
    """Kolors FaceID tokens have the text encoder's width (4096); the Kolors UNet's ``encoder_hid_proj``
    (4096 -> 2048) maps them to the context width, scaled by ``weight_kolors`` (weight and bias, as the old
    extension did)."""
    proj = getattr(model.get_model_object("diffusion_model"), "encoder_hid_proj", None)
    if proj is None or not hasattr(proj, "weight"):
        raise FaceIDError(
            "Kolors FaceID needs a Kolors model: the connected UNet has no encoder_hid_proj (the Linear that maps "
            "ChatGLM's 4096-wide features to the UNet's 2048). Load the model with a Kolors loader "
            "(e.g. ComfyUI-Kolors-MZ) and connect that MODEL."
        )

    def transform(tokens: Tensor) -> Tensor:
        weight = proj.weight.to(tokens.device, tokens.dtype)
        if weight.shape[1] != tokens.shape[-1]:
            raise FaceIDError(f"the model's encoder_hid_proj takes {weight.shape[1]}-wide features; the Kolors FaceID "
                              f"tokens are {tokens.shape[-1]} wide.")
        bias = proj.bias.to(tokens.device, tokens.dtype) if getattr(proj, "bias", None) is not None else None
        with torch.no_grad():
            return F.linear(tokens, weight, bias) * weight_kolors

    return transform


def apply_faceid(model, adapter: Adapter, *, image: Tensor | None = None, face_embeds: FaceEmbeds | None = None,
                 insightface=None, clip_vision=None, image_negative: Tensor | None = None,
                 weight: float = 1.0, weight_faceidv2: float = 1.0, weight_kolors: float | None = None,
                 faceid_version: str = "auto from file name", face_selection: str = "first",
                 combine: str = "concat", unfold: bool = False, **apply_kwargs) -> tuple[object, Tensor]:
    """Patch a clone of ``model`` with a FaceID adapter; return it and the face images used.

    Faces come from ``face_embeds`` when given (``image`` is then taken as the face crop(s) for FaceID
    Plus), else from ``insightface`` run on ``image``. ``weight_kolors`` is not None only for the Kolors
    node. ``apply_kwargs`` go to ``apply_adapter`` (weight_type, start_at, end_at, embeds_scaling, ...).
    """
    kolors = weight_kolors is not None
    _require_faceid_node(adapter, kolors)
    require_images("image", image)
    require_images("image_negative", image_negative)
    require_finite("weight_faceidv2", weight_faceidv2)
    require_finite("weight_kolors", weight_kolors)
    spec = adapter.spec
    v2 = spec.faceid_v2 if spec.faceid_v2 is not None else resolve_faceid_v2(faceid_version, adapter.source)

    if face_embeds is None:
        if insightface is None:
            raise FaceIDError(
                f"{adapter.name} is a FaceID adapter: connect an IPAdapter InsightFace Loader to `insightface` "
                "(or use the Unified Loader FaceID), or connect precomputed `face_embeds`."
            )
        if image is None:
            raise FaceIDError("connect the reference image(s) with the face.")
        face_embeds = analyze_faces(insightface, image, crop_size=crop_size_for(adapter), selection=face_selection)
        crops = face_embeds.crops
    else:
        crops = face_embeds.crops if face_embeds.crops is not None else image

    embeds = faceid_embeds(adapter, face_embeds, crops=crops, clip_vision=clip_vision, image_negative=image_negative,
                           combine=combine, unfold=unfold, v2=v2, shortcut_scale=weight_faceidv2)
    transform = kolors_token_transform(model, weight_kolors) if kolors else None
    patched = apply_adapter(model, adapter, embeds, weight=weight, combine="concat", unfold=unfold,
                            token_transform=transform, **apply_kwargs)
    face_image = crops if crops is not None else torch.zeros(1, 64, 64, 3)
    return patched, face_image
