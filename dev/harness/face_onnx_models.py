"""Tiny stand-ins for insightface's face models, as real ONNX files, and synthetic face images.

No face model can be downloaded here, so the tests build their own, with the input/output names, shapes
and layouts insightface expects, small enough to export in a second:

* ``TinySCRFD``: an SCRFD-shaped detector. Input ``input.1`` [1, 3, H, W] (H, W dynamic, as det_10g);
  outputs, without a batch axis like det_10g (rank 2) or with one (rank 3): scores [N, 1] for strides
  8/16/32, then box distances [N, 4], then landmark offsets [N, 10] (N = H/s * W/s * anchors, anchors of
  a position adjacent). Its weights are chosen so that it finds "faces": the score map is a
  centre-surround filter of the brightness at each stride, so a bright disk about three cells across
  scores high there; boxes and landmarks are offset towards the bright mass (brightness gradients), so
  the outputs vary continuously and NMS has overlapping candidates to merge. Variants: 5 strides with one
  anchor (15 outputs), no landmarks (6 / 10 outputs), a fixed 640 x 640 input.
* ``TinyArcFace``: ``input.1`` [N, 3, 112, 112] -> [N, 512] (two strided convolutions and a linear
  layer, seeded). A variant renames the first nodes ``_minusscalar0`` / ``_mulscalar0``, which is how
  insightface recognises an MXNet-converted model that normalises inside the graph.
* ``face_image``: a dark textured background with bright face disks (darker eyes and mouth) at given
  centres and radii, as BGR uint8.

``ensure_face_models()`` builds the files once into ``<repo>/.cache/fixtures/face_onnx/<hash>/`` (the
hash covers this file and the torch version, like ``model_tree``'s cache) and returns that folder:

* ``buffalo_l/det_10g.onnx``, ``buffalo_l/w600k_r50.onnx`` (plus ``buffalo_l/genderage.onnx``, a 96 px
  attribute-shaped model insightface ignores for FaceID, as in the real pack);
* ``antelopev2/scrfd_10g_bnkps.onnx`` (batched outputs), ``antelopev2/glintr100.onnx``;
* ``variants/``: ``det_5strides.onnx``, ``det_nokps.onnx``, ``det_static640.onnx``,
  ``rec_mxnet.onnx``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from harness import REPO_ROOT
from harness.dims import TINY_FACE_EMBED
from harness.model_tree import locked

CACHE_ROOT = REPO_ROOT / ".cache" / "fixtures" / "face_onnx"
FORMAT = 1
OPSET = 17  # loads in onnxruntime 1.x and in insightface (which only reads the graph with onnx)
EMBED_DIM = 512

# insightface template at 112 px, relative to the face centre, in units of the face's box size.
_TEMPLATE = (np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                       [70.7299, 92.2041]], dtype=np.float32) - 56.0) / 112.0


def _torch():
    import torch  # noqa: PLC0415

    return torch


def _tiny_scrfd_class():
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    class TinySCRFD(nn.Module):
        def __init__(self, strides=(8, 16, 32), anchors=2, kps=True, batched=False):
            super().__init__()
            self.strides, self.anchors, self.kps, self.batched = tuple(strides), anchors, kps, batched
            grad = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
            self.register_buffer("kx", grad.reshape(1, 1, 3, 3))
            self.register_buffer("ky", grad.t().contiguous().reshape(1, 1, 3, 3))
            self.register_buffer("template", torch.from_numpy(_TEMPLATE.copy()))

        def _flat(self, t, width):
            # [1, A, C, h, w] -> [h*w*A, C] (position-major, anchors adjacent), with a batch axis if asked
            t = t.permute(0, 3, 4, 1, 2).reshape(-1, width)
            return t.unsqueeze(0) if self.batched else t

        def forward(self, x):
            bright = (x.mean(dim=1, keepdim=True) * 128.0 + 127.5) / 255.0
            scores, boxes, points = [], [], []
            for stride in self.strides:
                cells = F.avg_pool2d(bright, stride, stride)
                centre = F.avg_pool2d(cells, 3, 1, 1, count_include_pad=True)
                block = F.avg_pool2d(cells, 7, 1, 3, count_include_pad=True)
                surround = (block * 49.0 - centre * 9.0) / 40.0
                gx = F.conv2d(centre, self.kx, padding=1)
                gy = F.conv2d(centre, self.ky, padding=1)
                logit = 24.0 * (centre - surround - 0.36)
                anchor_scores, anchor_boxes, anchor_points = [], [], []
                for a in range(self.anchors):
                    half = 1.9 + 0.25 * a + 0.4 * (centre - 0.5)
                    shift_x, shift_y = 2.5 * gx, 2.5 * gy
                    anchor_scores.append(torch.sigmoid(logit - 0.7 * a))
                    anchor_boxes.append(torch.cat([half - shift_x, half - shift_y, half + shift_x, half + shift_y], 1))
                    side = 2.0 * half
                    tilt = 0.6 * (gx - gy)
                    pts = []
                    for k in range(5):
                        tx, ty = float(self.template[k, 0]), float(self.template[k, 1])
                        pts.append(side * tx + shift_x - tilt * ty)
                        pts.append(side * ty + shift_y + tilt * tx)
                    anchor_points.append(torch.cat(pts, 1))
                scores.append(self._flat(torch.stack(anchor_scores, 1), 1))
                boxes.append(self._flat(torch.stack(anchor_boxes, 1), 4))
                points.append(self._flat(torch.stack(anchor_points, 1), 10))
            return tuple(scores + boxes + (points if self.kps else []))

    return TinySCRFD


def _tiny_arcface_class():
    torch = _torch()
    nn = torch.nn

    class TinyArcFace(nn.Module):
        def __init__(self, seed=0, size=112, width=EMBED_DIM):
            super().__init__()
            gen = torch.Generator().manual_seed(seed)
            self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.pool = nn.AvgPool2d(4)
            self.fc = nn.Linear(16 * (size // 16) ** 2, width)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim > 1 else 0.1))

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            return self.fc(self.pool(x).flatten(1)) * 4.0

    return TinyArcFace


def _tiny_attribute_class():
    torch = _torch()

    class TinyAttribute(torch.nn.Module):  # genderage.onnx's shape: [N, 3, 96, 96] -> [N, 3]
        def forward(self, x):
            return x.mean(dim=(2, 3))

    return TinyAttribute


def _export(model, example, path: Path, output_names, dynamic_axes, input_name="input.1") -> None:
    torch = _torch()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    model.eval()
    with torch.no_grad(), warnings_silenced():
        torch.onnx.export(model, example, buf, dynamo=False, opset_version=OPSET, input_names=[input_name],
                          output_names=list(output_names), dynamic_axes=dynamic_axes)
    path.write_bytes(buf.getvalue())


@contextlib.contextmanager
def warnings_silenced():
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_scrfd(path: Path, *, strides=(8, 16, 32), anchors=2, kps=True, batched=False, static=None) -> Path:
    """Write a ``TinySCRFD`` to ``path``; ``static`` = (width, height) fixes the input size."""
    torch = _torch()
    model = _tiny_scrfd_class()(strides, anchors, kps, batched)
    w, h = static or (640, 640)
    groups = ["score", "bbox"] + (["kps"] if kps else [])
    names = [f"{group}_{stride}" for group in groups for stride in strides]  # scores, boxes, landmarks
    dynamic = {} if static else {"input.1": {2: "?", 3: "?"}}
    for name in names:
        dynamic[name] = {1: "n"} if batched else {0: "n"}
    if static:
        dynamic = {name: axes for name, axes in dynamic.items() if name != "input.1"}
    _export(model, torch.zeros(1, 3, h, w), path, names, dynamic)
    return path


def export_arcface(path: Path, *, seed=0, mxnet_names=False, width=EMBED_DIM) -> Path:
    """Write a ``TinyArcFace`` (``input.1`` [N, 3, 112, 112] -> ``embedding`` [N, width], 512 as released)
    to ``path``."""
    torch = _torch()
    _export(_tiny_arcface_class()(seed, width=width), torch.zeros(1, 3, 112, 112), path, ["embedding"],
            {"input.1": {0: "None"}, "embedding": {0: "None"}})
    if mxnet_names:
        import onnx  # noqa: PLC0415 (test-only)

        model = onnx.load(str(path))
        model.graph.node[0].name = "_minusscalar0"
        model.graph.node[1].name = "_mulscalar0"
        onnx.save(model, str(path))
    return path


def export_attribute(path: Path) -> Path:
    torch = _torch()
    _export(_tiny_attribute_class()(), torch.zeros(1, 3, 96, 96), path, ["fc1"], {"input.1": {0: "None"}})
    return path


def _build(root: Path) -> dict:
    files = {
        "buffalo_l/det_10g.onnx": lambda p: export_scrfd(p),
        "buffalo_l/w600k_r50.onnx": lambda p: export_arcface(p, seed=0),
        "buffalo_l/genderage.onnx": export_attribute,
        "antelopev2/scrfd_10g_bnkps.onnx": lambda p: export_scrfd(p, batched=True),
        "antelopev2/glintr100.onnx": lambda p: export_arcface(p, seed=1),
        "variants/det_5strides.onnx": lambda p: export_scrfd(p, strides=(8, 16, 32, 64, 128), anchors=1),
        "variants/det_nokps.onnx": lambda p: export_scrfd(p, kps=False),
        "variants/det_static640.onnx": lambda p: export_scrfd(p, static=(640, 640)),
        "variants/rec_mxnet.onnx": lambda p: export_arcface(p, seed=2, mxnet_names=True),
        # Packs whose embedding has the tiny FaceID adapters' face width, for end-to-end FaceID runs.
        "tiny_width/buffalo_l/det_10g.onnx": lambda p: export_scrfd(p),
        "tiny_width/buffalo_l/w600k_r50.onnx": lambda p: export_arcface(p, seed=0, width=TINY_FACE_EMBED),
        "tiny_width/antelopev2/scrfd_10g_bnkps.onnx": lambda p: export_scrfd(p, batched=True),
        "tiny_width/antelopev2/glintr100.onnx": lambda p: export_arcface(p, seed=1, width=TINY_FACE_EMBED),
    }
    for rel, make in files.items():
        make(root / rel)
    return {"version": fixture_version(), "files": sorted(files)}


def fixture_version() -> str:
    torch = _torch()
    h = hashlib.sha256(f"format {FORMAT} torch {torch.__version__} opset {OPSET}".encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def ensure_face_models() -> Path:
    """Build the face model files for this version unless cached; return their folder."""
    target = CACHE_ROOT / fixture_version()
    manifest = target / "manifest.json"
    if not manifest.exists():
        with locked(CACHE_ROOT / f"{target.name}.lock"):
            if not manifest.exists():
                tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=CACHE_ROOT))
                try:
                    (tmp / "manifest.json").write_text(json.dumps(_build(tmp), indent=2))
                    os.chmod(tmp, 0o755)
                    if target.exists():
                        shutil.rmtree(target)
                    os.replace(tmp, target)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                for old in CACHE_ROOT.iterdir():  # keep only this version
                    if old.is_dir() and old != target and not old.name.startswith("."):
                        shutil.rmtree(old, ignore_errors=True)
                        (CACHE_ROOT / f"{old.name}.lock").unlink(missing_ok=True)
    return target


def copy_pack(src: Path, dst: Path, renames: dict[str, str] | None = None) -> Path:
    """Copy a model folder's .onnx files to ``dst`` (hard links when possible), renaming as given."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in Path(src).glob("*.onnx"):
        target = dst / (renames or {}).get(f.name, f.name)
        try:
            os.link(f, target)
        except OSError:
            shutil.copyfile(f, target)
    return dst


# --------------------------------------------------------------------------------------------------
# Synthetic face images
# --------------------------------------------------------------------------------------------------
def face_image(width: int, height: int, faces, seed: int = 0) -> np.ndarray:
    """BGR uint8 [height, width, 3]: a dark, mildly textured background and, for each (cx, cy, radius)
    of ``faces``, a bright disk with darker eyes and mouth (a little warm-tinted, so channels differ)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    image = 25.0 + 12.0 * rng.random((height, width, 1), dtype=np.float32) + np.array([4.0, 0.0, -4.0], np.float32)
    image = np.broadcast_to(image, (height, width, 3)).copy()
    for cx, cy, r in faces:
        dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        disk = np.clip(r + 0.5 - dist, 0.0, 1.0)[..., None]  # anti-aliased edge
        skin = np.array([170.0, 195.0, 225.0], np.float32) + 10.0 * np.sin(xx / 5.0 + yy / 7.0)[..., None]
        image = image * (1 - disk) + skin * disk
        for ex, ey, er in ((-0.35, -0.15, 0.12), (0.35, -0.15, 0.12), (0.0, 0.4, 0.15)):
            spot = np.clip(er * r + 0.5 - np.sqrt((xx - cx - ex * r) ** 2 + (yy - cy - ey * r) ** 2), 0, 1)[..., None]
            image = image * (1 - 0.6 * spot) + 40.0 * 0.6 * spot
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
