"""FaceID: face analysis (insightface, optional), face embeddings, and FaceID adapters' inputs.

FaceID adapters read a 512-d ArcFace embedding of the face (insightface ``normed_embedding``, or the raw
``embedding`` for Portrait-unnorm) instead of, or beside (FaceID-Plus, Kolors), CLIP features of the
aligned face crop. insightface is imported only when a face has to be detected: without it the pack
loads and the FaceID nodes still run from face embeddings given directly (``FaceEmbeds``).

Everything the old extension did around insightface is here: the ``models/insightface`` folder (also
from extra_model_paths.yaml), the nested ``antelopev2/antelopev2`` folder that unzipping leaves,
detection retried at smaller sizes (640 down to 320), the first detected face (or the largest), and the
aligned crops, returned so the user sees which face was used.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .adapter import Adapter
from .apply import Embeds, apply_adapter
from .checkpoint import resolve_faceid_v2
from .encode import check_encoder, combine_embeds, encode_images, negative_embeds

log = logging.getLogger(__name__)

__all__ = [
    "DET_SIZES",
    "FACE_SELECTIONS",
    "FaceEmbeds",
    "FaceIDError",
    "FaceModelMissingError",
    "INSIGHTFACE_MODELS",
    "InsightFaceMissingError",
    "NoFaceError",
    "PROVIDERS",
    "analyze_faces",
    "apply_faceid",
    "faceid_embeds",
    "find_model_dir",
    "import_insightface",
    "kolors_token_transform",
    "load_face_analysis",
    "load_face_embeds",
    "require_non_faceid",
    "save_face_embeds",
]

INSIGHTFACE_MODELS = ("buffalo_l", "antelopev2")
PROVIDERS = ("CPU", "CUDA", "ROCM", "DirectML", "OpenVINO", "CoreML")
DET_SIZES = tuple(range(640, 256, -64))  # 640, 576, ..., 320: the old extension's retry ladder
FACE_SELECTIONS = ("first", "largest")  # "first" = the detector's best-scoring face (the old behaviour)
FACE_EMBEDS_SUFFIX = ".face.safetensors"

INSTALL_HINT = (
    "pip install insightface onnxruntime (onnxruntime-gpu for CUDA) into ComfyUI's Python; on Windows, "
    "a prebuilt insightface wheel for your Python version avoids needing a C++ compiler"
)
# Where a model pack may sit under an insightface root: the layout insightface itself uses, then the
# folder left by unzipping antelopev2.zip inside models/antelopev2 (files one level too deep).
_MODEL_SUBDIRS = ("models/{name}", "models/{name}/{name}", "{name}")


class FaceIDError(ValueError):
    """A FaceID input problem the user can fix (wrong node, missing input, wrong adapter)."""


class InsightFaceMissingError(ImportError):
    pass


class FaceModelMissingError(FileNotFoundError):
    pass


class NoFaceError(ValueError):
    pass


# --------------------------------------------------------------------------------------------------
# insightface: import, model folders, loading
# --------------------------------------------------------------------------------------------------
def import_insightface():
    """The insightface module, or an error that says what to install."""
    try:
        import insightface  # noqa: PLC0415 (optional dependency, imported on use)
        from insightface.app import FaceAnalysis  # noqa: F401, PLC0415
        from insightface.utils import face_align  # noqa: F401, PLC0415
    except ImportError as exc:
        raise InsightFaceMissingError(
            f"FaceID face detection needs the insightface package, which is not installed ({exc}). "
            f"Install it: {INSTALL_HINT}. Or skip detection: connect precomputed face embeddings to the "
            "FaceID node's face_embeds input (IPAdapter Load Face Embeds)."
        ) from exc
    return insightface


def insightface_roots() -> list[Path]:
    """The registered ``insightface`` model folders (models/insightface plus extra_model_paths.yaml entries)."""
    import folder_paths  # noqa: PLC0415

    try:
        return [Path(p) for p in folder_paths.get_folder_paths("insightface")]
    except KeyError:
        return [Path(folder_paths.models_dir) / "insightface"]


def _has_onnx(path: Path) -> bool:
    return path.is_dir() and any(p.suffix == ".onnx" for p in path.iterdir())


def find_model_dir(name: str, roots: Sequence[Path] | None = None) -> Path:
    """The folder holding ``name``'s .onnx files, looked for under every insightface root."""
    roots = list(roots) if roots is not None else insightface_roots()
    tried = []
    for root in roots:
        for pattern in _MODEL_SUBDIRS:
            candidate = Path(root) / pattern.format(name=name)
            tried.append(str(candidate))
            if _has_onnx(candidate):
                if pattern != _MODEL_SUBDIRS[0]:
                    log.info("insightface %s found in %s (not the usual <root>/models/%s); using it", name, candidate, name)
                return candidate
    download = ("insightface downloads buffalo_l itself only when online; ComfyUI here does not download"
                if name == "buffalo_l" else f"{name} is never downloaded automatically")
    raise FaceModelMissingError(
        f"insightface model '{name}' not found: no .onnx files in {', '.join(tried) or '(no insightface folder)'}. "
        f"Download {name}.zip from the insightface model zoo and unzip it so that the .onnx files are in "
        f"{Path(roots[0]) / 'models' / name if roots else 'models/insightface/models/' + name} ({download})."
    )


_analysers: dict[tuple[str, str], object] = {}
_analysers_lock = threading.Lock()


def load_face_analysis(model_name: str = "buffalo_l", provider: str = "CPU", roots: Sequence[Path] | None = None):
    """An ``insightface.app.FaceAnalysis`` for ``model_name`` (cached per folder and provider), prepared
    for detection at 640 px. The model folder is checked first, so insightface never tries to download."""
    if provider not in PROVIDERS:
        raise FaceIDError(f"unknown insightface provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    import_insightface()
    from insightface.app import FaceAnalysis  # noqa: PLC0415

    model_dir = find_model_dir(model_name, roots)
    key = (str(model_dir), provider)
    with _analysers_lock:
        if key in _analysers:
            return _analysers[key]
        try:
            # An absolute folder as the name: insightface uses it as is (no download, no nesting rules).
            analyser = FaceAnalysis(name=str(model_dir), root=str(model_dir.parent),
                                    providers=[f"{provider}ExecutionProvider"])
            analyser.prepare(ctx_id=0, det_size=(DET_SIZES[0], DET_SIZES[0]))
        except Exception as exc:  # insightface asserts when no detection model loads
            raise FaceModelMissingError(
                f"insightface could not load '{model_name}' from {model_dir}: {type(exc).__name__}: {exc}. "
                f"The folder must hold the model pack's .onnx files (a detection model included), unmodified."
            ) from exc
        _analysers[key] = analyser
        return analyser


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


def _to_bgr_uint8(image: Tensor) -> np.ndarray:
    # insightface (OpenCV) expects BGR uint8.
    return np.ascontiguousarray((image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()[..., ::-1])


def _pick(faces: list, selection: str):
    if selection == "largest":
        return max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
    return faces[0]


def analyze_faces(analyser, images: Tensor, *, crop_size: int = 224, selection: str = "first",
                  det_sizes: Sequence[int] = DET_SIZES) -> FaceEmbeds:
    """Detect one face per image (IMAGE [B, H, W, 3] in 0..1): embeddings and aligned crops.

    Detection is retried at each size of ``det_sizes`` until a face is found. ``selection`` is "first"
    (the detector's first face, as the old extension did) or "largest" (biggest box). The crop is
    insightface's ArcFace alignment at ``crop_size``, returned as RGB IMAGE [B, S, S, 3].
    """
    if selection not in FACE_SELECTIONS:
        raise FaceIDError(f"unknown face selection {selection!r}; choose one of {', '.join(FACE_SELECTIONS)}")
    if crop_size % 112 and crop_size % 128:
        raise FaceIDError(f"face crop size {crop_size} is not possible: insightface aligns to multiples of 112 or 128 "
                          "(224, 256, 336, ...)")
    import_insightface()
    from insightface.utils import face_align  # noqa: PLC0415

    normed, raw, crops = [], [], []
    for index in range(images.shape[0]):
        bgr = _to_bgr_uint8(images[index])
        faces, used = [], None
        for size in det_sizes:
            analyser.prepare(ctx_id=0, det_size=(size, size))
            faces = analyser.get(bgr)
            if faces:
                used = size
                break
        if not faces:
            raise NoFaceError(
                f"no face found in image {index} of {images.shape[0]} ({images.shape[2]}x{images.shape[1]} px), "
                f"tried detection sizes {', '.join(map(str, det_sizes))}. Use an image where the face is "
                "larger and clearly visible (frontal, well lit), or crop it to the face."
            )
        if used != det_sizes[0]:
            log.info("insightface: face in image %d found at detection size %d", index, used)
        face = _pick(faces, selection)
        emb = torch.as_tensor(np.asarray(face.embedding, dtype=np.float32))
        normed.append(emb / emb.norm())
        raw.append(emb)
        crop = face_align.norm_crop(bgr, landmark=np.asarray(face.kps), image_size=crop_size)
        crops.append(torch.from_numpy(np.ascontiguousarray(crop[..., ::-1])).float() / 255.0)
    analyser.prepare(ctx_id=0, det_size=(det_sizes[0], det_sizes[0]))  # leave the shared model as loaded
    return FaceEmbeds(torch.stack(normed), torch.stack(raw), torch.stack(crops))


# --------------------------------------------------------------------------------------------------
# Face embeds files
# --------------------------------------------------------------------------------------------------
def save_face_embeds(embeds: FaceEmbeds, path: str | os.PathLike) -> Path:
    """Write ``embeds`` as safetensors (``normed``, ``raw`` when known); no crops."""
    from safetensors.torch import save_file  # noqa: PLC0415

    tensors = {"normed": embeds.normed.contiguous().cpu()}
    if embeds.raw is not None:
        tensors["raw"] = embeds.raw.contiguous().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", "kind": "ipadapter face embeds"})
    return path


def load_face_embeds(path: str | os.PathLike) -> FaceEmbeds:
    """Read a file written by ``save_face_embeds`` (or any safetensors with one [N, 512] tensor)."""
    from safetensors.torch import load_file  # noqa: PLC0415

    tensors = load_file(str(path))
    if "normed" in tensors:
        return FaceEmbeds(tensors["normed"].float(), tensors["raw"].float() if "raw" in tensors else None)
    if len(tensors) == 1:
        return FaceEmbeds.from_tensor(next(iter(tensors.values())))
    raise FaceIDError(f"{Path(path).name} holds {sorted(tensors)}, not face embeddings ('normed' / 'raw').")


# --------------------------------------------------------------------------------------------------
# Adapter checks and inputs
# --------------------------------------------------------------------------------------------------
def require_non_faceid(adapter: Adapter, node: str = "this node") -> None:
    """Non-FaceID nodes call this: a FaceID adapter there gets a message naming the node to use."""
    spec = adapter.spec
    if not spec.is_faceid:
        return
    use = "IPAdapter FaceID Kolors" if spec.is_kolors else "IPAdapter FaceID (or IPAdapter FaceID Batch)"
    raise FaceIDError(
        f"{adapter.name} is a FaceID adapter ({spec.label}): it needs a face embedding, which {node} does not "
        f"compute. Use the {use} node with an IPAdapter InsightFace Loader (or face_embeds)."
    )


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
