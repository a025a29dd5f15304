"""Face analysis glue: choosing the backend, finding the model packs, loading them, detecting faces.

Two backends read the same ONNX files from ``models/insightface/models/<name>/``: the insightface
package (optional, what the old extension used) and this pack's own onnxruntime pipeline
(``face_onnx``), which needs only ``pip install onnxruntime``. "auto" takes insightface when it is
installed (the old behaviour) and onnxruntime otherwise.

Everything the old extension did around insightface is here: the ``models/insightface`` folder (also
from extra_model_paths.yaml), the nested ``antelopev2/antelopev2`` folder that unzipping leaves,
detection retried at smaller sizes (640 down to 320), the first detected face (or the largest), and the
aligned crops. Nothing is imported until a face has to be detected: without either package the pack
loads and the FaceID nodes still run from face embeddings given directly. What the embeddings do is
``faceid``'s business.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import importlib.util

import numpy as np
import torch
from torch import Tensor

import folder_paths

from . import face_align, face_onnx
from .errors import FaceIDError, FaceModelMissingError, InsightFaceMissingError, NoFaceError
from .progress import tracked

log = logging.getLogger(__name__)

__all__ = [
    "DET_SIZES",
    "FACE_BACKENDS",
    "FACE_SELECTIONS",
    "INSIGHTFACE_MODELS",
    "PROVIDERS",
    "detect_faces",
    "face_analysis_entry",
    "find_model_dir",
    "import_insightface",
    "insightface_roots",
    "load_face_analysis",
]

INSIGHTFACE_MODELS = ("buffalo_l", "antelopev2")
PROVIDERS = ("CPU", "CUDA", "ROCM", "DirectML", "OpenVINO", "CoreML")
DET_SIZES = tuple(range(640, 256, -64))  # 640, 576, ..., 320: the old extension's retry ladder
FACE_SELECTIONS = ("first", "largest")  # "first" = the detector's best-scoring face (the old behaviour)
# "auto": insightface when installed (what old workflows ran), else the pack's own onnxruntime pipeline.
FACE_BACKENDS = ("auto", "insightface", "onnxruntime")

INSTALL_HINT = (
    "pip install insightface onnxruntime (onnxruntime-gpu for CUDA) into ComfyUI's Python; on Windows, "
    "a prebuilt insightface wheel for your Python version avoids needing a C++ compiler"
)
# Where a model pack may sit under an insightface root: the layout insightface itself uses, then the
# folder left by unzipping antelopev2.zip inside models/antelopev2 (files one level too deep).
_MODEL_SUBDIRS = ("models/{name}", "models/{name}/{name}", "{name}")


# --------------------------------------------------------------------------------------------------
# Import, model folders, loading
# --------------------------------------------------------------------------------------------------
def import_insightface() -> ModuleType:
    """The insightface module, or an error that says what to install."""
    try:
        import insightface  # noqa: PLC0415 (optional dependency, imported on use)
        from insightface.app import FaceAnalysis  # noqa: F401, PLC0415
        from insightface.utils import face_align  # noqa: F401, PLC0415
    except ImportError as exc:
        raise InsightFaceMissingError(
            f"FaceID face detection needs the insightface package, which is not installed ({exc}). "
            f"Install it: {INSTALL_HINT}. Or choose the onnxruntime backend (IPAdapter InsightFace Loader's "
            "`backend`), which needs only `pip install onnxruntime`, or skip detection: connect precomputed face "
            "embeddings to the "
            "FaceID node's face_embeds input (IPAdapter Load Face Embeds)."
        ) from exc
    return insightface


def insightface_roots() -> list[Path]:
    """The registered ``insightface`` model folders (models/insightface plus extra_model_paths.yaml entries)."""
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
    det, rec = face_onnx.FACE_MODEL_FILES.get(name, ("a face detector .onnx", "a recognition .onnx"))
    raise FaceModelMissingError(
        f"insightface model '{name}' not found: no .onnx files in {', '.join(tried) or '(no insightface folder)'}. "
        f"FaceID needs the face detector {det} and the recognition model {rec} of the {name} pack: download "
        f"{name}.zip from the insightface model zoo and unzip it so that the .onnx files are in "
        f"{Path(roots[0]) / 'models' / name if roots else 'models/insightface/models/' + name} "
        "(nothing is downloaded automatically)."
    )


_analysers: dict[tuple[str, str], object] = {}
_analysers_lock = threading.Lock()


def resolve_backend(backend: str = "auto") -> str:
    """"insightface" or "onnxruntime" for a FACE_BACKENDS choice ("auto": insightface when installed)."""
    if backend not in FACE_BACKENDS:
        raise FaceIDError(f"unknown face analysis backend {backend!r}; choose one of {', '.join(FACE_BACKENDS)}")
    if backend != "auto":
        return backend
    return "insightface" if importlib.util.find_spec("insightface") is not None else "onnxruntime"


def _load_insightface(model_name: str, model_dir: Path, provider: str) -> object:
    import_insightface()
    from insightface.app import FaceAnalysis  # noqa: PLC0415

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


def load_face_analysis(model_name: str = "buffalo_l", provider: str = "CPU", roots: Sequence[Path] | None = None,
                       backend: str = "auto") -> object:
    """A face analyser for ``model_name`` (cached per folder, provider and backend), prepared for
    detection at 640 px: ``insightface.app.FaceAnalysis`` or the pack's ``face_onnx.OnnxFaceAnalysis``,
    which answer the same calls. The model folder is checked first, so nothing tries to download."""
    if provider not in PROVIDERS:
        raise FaceIDError(f"unknown insightface provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    chosen = resolve_backend(backend)
    if chosen == "insightface":
        import_insightface()  # before the folder check: the missing package is the first thing to fix
    model_dir = find_model_dir(model_name, roots)
    if chosen == "insightface":
        return _load_insightface(model_name, model_dir, provider)
    return face_onnx.load_onnx_face_analysis(model_dir, provider)


def face_analysis_entry(previous: dict | None, model_name: str, provider: str, backend: str = "auto") -> dict:
    """The ``insightface`` entry of a Unified Loader FaceID pipeline: ``{"provider", "name", "model"}``.

    ``previous`` (the chained pipeline's entry) is returned as is when it holds ``model_name`` loaded for
    ``provider``; otherwise the analyser is loaded with ``load_face_analysis``. A failure (insightface
    not installed, model files missing) does not raise: the entry then has ``"model": None`` and the
    exception under ``"error"``, for the FaceID node to raise only if it has to detect a face, so that
    face embeddings given directly still work without insightface."""
    previous = previous or {}
    if (previous.get("model") is not None and previous.get("provider") == provider and previous.get("name") == model_name
            and previous.get("backend", "auto") == backend):
        return previous
    entry = {"provider": provider, "name": model_name, "backend": backend}
    try:
        return {**entry, "model": load_face_analysis(model_name, provider, backend=backend)}
    except (ImportError, OSError, ValueError) as exc:
        return {**entry, "model": None, "error": exc}


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------
def _to_bgr_uint8(image: Tensor) -> np.ndarray:
    # insightface (OpenCV) expects BGR uint8.
    return np.ascontiguousarray((image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()[..., ::-1])


def _pick(faces: list, selection: str):
    if selection == "largest":
        return max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
    return faces[0]


def _aligner(analyser):
    """The ArcFace crop of the analyser's own package: insightface's for its FaceAnalysis (today's pixels
    exactly), the pack's for the onnxruntime backend (within one grey level of insightface's)."""
    if isinstance(analyser, face_onnx.OnnxFaceAnalysis):
        return face_align.norm_crop
    import_insightface()
    from insightface.utils import face_align as insightface_align  # noqa: PLC0415

    return insightface_align.norm_crop


def detect_faces(analyser, images: Tensor, *, crop_size: int = 224, selection: str = "first",
                 det_sizes: Sequence[int] = DET_SIZES) -> tuple[Tensor, Tensor, Tensor]:
    """Detect one face per image (IMAGE [B, H, W, 3] in 0..1): its ArcFace embedding normalised [B, E]
    and raw [B, E], and its aligned crop.

    Detection is retried at each size of ``det_sizes`` until a face is found. ``selection`` is "first"
    (the detector's first face, as the old extension did) or "largest" (biggest box). The crop is
    insightface's ArcFace alignment at ``crop_size``, returned as RGB IMAGE [B, S, S, 3].
    """
    if selection not in FACE_SELECTIONS:
        raise FaceIDError(f"unknown face selection {selection!r}; choose one of {', '.join(FACE_SELECTIONS)}")
    if crop_size % 112 and crop_size % 128:
        raise FaceIDError(f"face crop size {crop_size} is not possible: insightface aligns to multiples of 112 or 128 "
                          "(224, 256, 336, ...)")
    align = _aligner(analyser)
    normed, raw, crops = [], [], []
    for index in tracked(range(images.shape[0])):
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
        crop = align(bgr, landmark=np.asarray(face.kps), image_size=crop_size)
        crops.append(torch.from_numpy(np.ascontiguousarray(crop[..., ::-1])).float() / 255.0)
    analyser.prepare(ctx_id=0, det_size=(det_sizes[0], det_sizes[0]))  # leave the shared model as loaded
    return torch.stack(normed), torch.stack(raw), torch.stack(crops)
