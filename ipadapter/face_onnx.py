"""FaceID face analysis without the insightface package: insightface's ONNX models run directly with
onnxruntime (numpy pre/post-processing in ``face_detect`` and ``face_align``).

FaceID needs two of a model pack's files: the SCRFD face detector and the ArcFace recognition network
(``buffalo_l``: ``det_10g.onnx`` + ``w600k_r50.onnx``; ``antelopev2``, used by Kolors:
``scrfd_10g_bnkps.onnx`` + ``glintr100.onnx``). Which file is which is read from the models themselves,
as insightface does: a detector has 5 or more outputs; a recognition network has one input, a square
image of at least 112 px (a multiple of 16), and one output. The packs' other files (landmarks at 192 px,
gender/age at 96 px) are recognised and left alone.

``OnnxFaceAnalysis`` has the interface the FaceID glue uses from ``insightface.app.FaceAnalysis``:
``prepare(ctx_id, det_thresh=0.5, det_size=(640, 640))`` and ``get(bgr_uint8) -> [OnnxFace]`` whose
``bbox``, ``kps``, ``det_score``, ``embedding`` and ``normed_embedding`` match insightface's.
``load_onnx_face_analysis(model_dir, provider)`` builds one (cached per folder and provider).
"""
from __future__ import annotations

import logging
import mmap
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import FaceModelFilesError
from .face_align import norm_crop
from .face_detect import DEFAULT_DET_SIZE, DEFAULT_DET_THRESH, SCRFD

log = logging.getLogger(__name__)

__all__ = [
    "ArcFaceRecognizer",
    "FACE_MODEL_FILES",
    "FaceModelFilesError",
    "OnnxFace",
    "OnnxFaceAnalysis",
    "classify_onnx_model",
    "create_session",
    "find_face_models",
    "load_onnx_face_analysis",
    "norm_crop",
    "onnx_node_names",
    "onnxruntime_available",
]

# The files each model pack ships for the two tasks FaceID needs (for messages; detection is by content).
FACE_MODEL_FILES = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}
ORT_INSTALL_HINT = "pip install onnxruntime (onnxruntime-gpu for CUDA) into ComfyUI's Python"


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _import_onnxruntime():
    try:
        import onnxruntime  # noqa: PLC0415 (imported on use: the pack loads without it)
    except ImportError as exc:
        raise ImportError(f"FaceID face analysis needs onnxruntime, which is not installed ({exc}). "
                          f"Install it: {ORT_INSTALL_HINT}.") from exc
    return onnxruntime


# --------------------------------------------------------------------------------------------------
# Reading node names from an .onnx file (no onnx package): a minimal protobuf walk
# --------------------------------------------------------------------------------------------------
def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, (start, end)) of the length-delimited fields of one message; others skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield number, (pos, pos + length)
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


_MODEL_GRAPH, _GRAPH_NODE, _NODE_NAME = 7, 1, 3  # ModelProto.graph, GraphProto.node, NodeProto.name


def onnx_node_names(path: str | Path, limit: int = 8) -> list[str]:
    """The names of the first ``limit`` nodes of an ONNX model's graph."""
    names: list[str] = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for number, (g0, g1) in _fields(buf, 0, len(buf)):
            if number != _MODEL_GRAPH:
                continue
            for field, (n0, n1) in _fields(buf, g0, g1):
                if field != _GRAPH_NODE:
                    continue
                name = ""
                for nf, (s0, s1) in _fields(buf, n0, n1):
                    if nf == _NODE_NAME:
                        name = bytes(buf[s0:s1]).decode("utf-8", "replace")
                names.append(name)
                if len(names) >= limit:
                    return names
    return names


# --------------------------------------------------------------------------------------------------
# Which model is which
# --------------------------------------------------------------------------------------------------
def classify_onnx_model(session) -> str | None:
    """insightface's task for a model, from its inputs and outputs: "detection", "recognition",
    "landmark", "attribute", "swapper", or None."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(outputs) >= 5:
        return "detection"
    shape = list(inputs[0].shape) if inputs else []
    if len(shape) != 4:
        return None
    h, w = shape[2], shape[3]
    if not (isinstance(h, int) and isinstance(w, int)):
        return None
    if (h, w) == (192, 192):
        return "landmark"
    if (h, w) == (96, 96):
        return "attribute"
    if len(inputs) == 2 and (h, w) == (128, 128):
        return "swapper"
    if h == w and h >= 112 and h % 16 == 0:
        return "recognition"
    return None


def _providers(provider: str | Sequence[str] | None) -> list[str]:
    ort = _import_onnxruntime()
    available = ort.get_available_providers()
    wanted = [provider] if isinstance(provider, str) or provider is None else list(provider)
    names = []
    for p in wanted:
        p = "CPU" if p is None else str(p)
        name = p if p.endswith("ExecutionProvider") else f"{p}ExecutionProvider"
        if name not in available:
            log.warning("onnxruntime has no %s here (available: %s); using the CPU", name, ", ".join(available))
            continue
        names.append(name)
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")
    return names


def _session(path: Path, providers: list[str]):
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def create_session(path: str | Path, provider: str | Sequence[str] | None = "CPU"):
    """An onnxruntime ``InferenceSession`` for ``path`` on ``provider`` (falling back to the CPU)."""
    return _session(Path(path), _providers(provider))


def _missing_message(model_dir: Path, missing: str, found: dict[str, list[str]]) -> str:
    name = model_dir.name
    det, rec = FACE_MODEL_FILES.get(name, FACE_MODEL_FILES["buffalo_l"])
    seen = ", ".join(f"{f} ({task})" for task, files in found.items() for f in files) or "no .onnx files"
    return (f"FaceID face models '{name}' are incomplete: no {missing} model in {model_dir} (found: {seen}). "
            f"FaceID needs two files of the {name} pack there: the face detector ({det}, SCRFD) and the "
            f"recognition model ({rec}, ArcFace). Download {name}.zip from the insightface model zoo and unzip it "
            f"into ComfyUI/models/insightface/models/{name}/ so that the .onnx files sit directly in that folder.")


def find_face_models(model_dir: str | Path, provider: str | Sequence[str] | None = "CPU"):
    """The detector and recognition sessions of a model folder: ``(det_path, det_session, rec_path,
    rec_session)``, each the first file (sorted by name) that insightface would route to that task."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        name = model_dir.name
        det, rec = FACE_MODEL_FILES.get(name, FACE_MODEL_FILES["buffalo_l"])
        raise FaceModelFilesError(
            f"FaceID face model folder not found: {model_dir}. Download {name}.zip from the insightface model zoo "
            f"and unzip it into ComfyUI/models/insightface/models/{name}/; FaceID needs its face detector ({det}) "
            f"and recognition model ({rec}).")
    providers = _providers(provider)
    found: dict[str, list[str]] = {}
    chosen: dict[str, tuple[Path, object]] = {}
    for path in sorted(model_dir.glob("*.onnx")):
        try:
            session = _session(path, providers)
        except Exception as exc:  # a truncated download, not an ONNX file
            raise FaceModelFilesError(f"{path} is not a loadable ONNX model ({type(exc).__name__}: {exc}); "
                                      "download it again.") from exc
        task = classify_onnx_model(session) or "unknown"
        found.setdefault(task, []).append(path.name)
        if task in ("detection", "recognition") and task not in chosen:
            chosen[task] = (path, session)
    for task in ("detection", "recognition"):
        if task not in chosen:
            raise FaceModelFilesError(_missing_message(model_dir, task, found))
    (det_path, det_session), (rec_path, rec_session) = chosen["detection"], chosen["recognition"]
    return det_path, det_session, rec_path, rec_session


# --------------------------------------------------------------------------------------------------
# Recognition (ArcFace)
# --------------------------------------------------------------------------------------------------
class ArcFaceRecognizer:
    """ArcFace on an onnxruntime session: aligned BGR uint8 face -> raw embedding.

    Input normalisation as insightface decides it: models converted from MXNet normalise inside the
    graph (a Sub and a Mul among the first 8 nodes) and take raw 0..255 pixels; the others take
    ``(x - 127.5) / 127.5``. Channels are swapped to RGB.
    """

    taskname = "recognition"

    def __init__(self, session, model_path: str | Path | None = None):
        self.session = session
        names = onnx_node_names(model_path) if model_path is not None else []
        has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
        has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
        self.input_mean, self.input_std = (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = inp.shape
        self.input_size = (int(inp.shape[3]), int(inp.shape[2]))  # (width, height)
        outputs = session.get_outputs()
        if len(outputs) != 1:
            raise ValueError(f"a recognition model has one output, this one has {len(outputs)}")
        self.output_names = [outputs[0].name]

    def get_feat(self, aligned_bgr: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Raw embeddings [N, D] of aligned face crops (BGR uint8, the model's input size)."""
        faces = [aligned_bgr] if isinstance(aligned_bgr, np.ndarray) and aligned_bgr.ndim == 3 else list(aligned_bgr)
        for face in faces:
            if tuple(face.shape[1::-1]) != self.input_size:
                raise ValueError(f"aligned face is {face.shape[1]}x{face.shape[0]}, the model takes "
                                 f"{self.input_size[0]}x{self.input_size[1]}")
        x = np.stack([f[..., ::-1] for f in faces]).astype(np.float32)
        blob = (x - np.float32(self.input_mean)) * np.float32(1.0 / self.input_std)
        blob = np.ascontiguousarray(blob.transpose(0, 3, 1, 2))
        return self.session.run(self.output_names, {self.input_name: blob})[0]

    def get(self, img: np.ndarray, face: "OnnxFace") -> np.ndarray:
        aligned = norm_crop(img, landmark=face.kps, image_size=self.input_size[0])
        face.embedding = self.get_feat(aligned).flatten()
        return face.embedding


# --------------------------------------------------------------------------------------------------
# The analyser
# --------------------------------------------------------------------------------------------------
class OnnxFace:
    """A detected face: ``bbox`` [4] (x1, y1, x2, y2), ``kps`` [5, 2], ``det_score``, ``embedding`` [D]
    (raw ArcFace output) and ``normed_embedding`` (unit length), as insightface's ``Face``."""

    def __init__(self, bbox, kps, det_score, embedding=None):
        self.bbox = bbox
        self.kps = kps
        self.det_score = det_score
        self.embedding = embedding

    @property
    def embedding_norm(self):
        return None if self.embedding is None else float(np.linalg.norm(self.embedding))

    @property
    def normed_embedding(self):
        return None if self.embedding is None else self.embedding / np.linalg.norm(self.embedding)

    def __getitem__(self, key):  # insightface's Face is also a dict
        return getattr(self, key)

    def __repr__(self) -> str:
        box = ", ".join(f"{v:.1f}" for v in np.asarray(self.bbox).tolist())
        return f"OnnxFace(bbox=[{box}], det_score={float(self.det_score):.3f})"


class OnnxFaceAnalysis:
    """Face detection + recognition with onnxruntime, duck-typed like ``insightface.app.FaceAnalysis``."""

    def __init__(self, model_dir: str | Path, provider: str | Sequence[str] | None = "CPU"):
        self.model_dir = Path(model_dir)
        det_path, det_session, rec_path, rec_session = find_face_models(self.model_dir, provider)
        self.model_files = {"detection": det_path, "recognition": rec_path}
        self.det_model = SCRFD(det_session)
        self.rec_model = ArcFaceRecognizer(rec_session, rec_path)
        self.models = {"detection": self.det_model, "recognition": self.rec_model}
        self.det_thresh = DEFAULT_DET_THRESH
        self.det_size: tuple[int, int] | list[tuple[int, int]] = DEFAULT_DET_SIZE

    def prepare(self, ctx_id: int = 0, det_thresh: float = DEFAULT_DET_THRESH, det_size=DEFAULT_DET_SIZE) -> None:
        """Detection threshold and size (width, height), or a list of sizes pooled before NMS; None or
        (0, 0) means 640. ``ctx_id`` < 0 runs on the CPU."""
        if ctx_id is not None and ctx_id < 0:
            for model in self.models.values():
                model.session.set_providers(["CPUExecutionProvider"])
        if det_size is None or (np.ndim(det_size) == 1 and tuple(int(v) for v in det_size) == (0, 0)):
            det_size = DEFAULT_DET_SIZE
        self.det_thresh = float(det_thresh)
        self.det_size = det_size
        self.det_model.det_thresh = self.det_thresh

    def get(self, img: np.ndarray, max_num: int = 0) -> list[OnnxFace]:
        """The faces in ``img`` (BGR uint8 [H, W, 3]), best detection score first, with embeddings."""
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"face analysis takes BGR uint8 images [H, W, 3], got {img.dtype} {list(img.shape)}")
        dets, kpss = self.det_model.detect(img, self.det_size)
        if max_num and len(dets) > max_num:
            dets, kpss = dets[:max_num], (kpss[:max_num] if kpss is not None else None)
        faces = []
        for i in range(dets.shape[0]):
            face = OnnxFace(bbox=dets[i, :4], kps=None if kpss is None else kpss[i], det_score=dets[i, 4])
            if face.kps is None:
                raise FaceModelFilesError(
                    f"the face detector {self.model_files['detection'].name} gives no landmarks, which the alignment "
                    "for the face embedding needs; use the model pack's own detector (det_10g.onnx or "
                    "scrfd_10g_bnkps.onnx).")
            self.rec_model.get(img, face)
            faces.append(face)
        return faces


_analysers: dict[tuple[str, tuple[str, ...]], OnnxFaceAnalysis] = {}
_analysers_lock = threading.Lock()


def load_onnx_face_analysis(model_dir: str | Path, provider: str | Sequence[str] | None = "CPU") -> OnnxFaceAnalysis:
    """An ``OnnxFaceAnalysis`` on the models in ``model_dir`` (e.g. ``models/insightface/models/buffalo_l``),
    cached per folder and provider, prepared for detection at 640 px. ``provider`` is an onnxruntime
    execution provider ("CPU", "CUDA", "ROCM", "DirectML", "OpenVINO", "CoreML" or its full name); one
    that is not available falls back to the CPU."""
    model_dir = Path(model_dir).expanduser()
    key_providers = (provider,) if isinstance(provider, str) or provider is None else tuple(provider)
    key = (str(model_dir.resolve() if model_dir.exists() else model_dir), tuple(map(str, key_providers)))
    with _analysers_lock:
        analyser = _analysers.get(key)
        if analyser is None:
            analyser = OnnxFaceAnalysis(model_dir, provider)
            analyser.prepare(ctx_id=0, det_size=DEFAULT_DET_SIZE)
            _analysers[key] = analyser
        return analyser
