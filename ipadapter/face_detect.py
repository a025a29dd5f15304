"""SCRFD face detection (insightface's ``det_10g.onnx`` / ``scrfd_10g_bnkps.onnx``) with onnxruntime and
numpy only: letterboxing, normalisation, anchor decoding, thresholding and NMS as insightface does them.

The pipeline, for a BGR uint8 image and a detection size (W, H):

1. letterbox: the image is resized, keeping its aspect ratio, to fit W x H (``resize_linear``, which
   reproduces OpenCV's ``cv2.resize`` INTER_LINEAR on uint8 bit for bit) and put in the top-left corner of
   a black W x H canvas; boxes are scaled back by the same factor at the end;
2. the canvas, as RGB float, normalised ``(x - 127.5) / 128``, NCHW, is the network's input;
3. the network's outputs come in groups of ``fmc`` (one per stride): scores, box distances, and
   optionally keypoint offsets. 6 or 9 outputs: strides 8/16/32 with 2 anchors per position; 10 or 15:
   strides 8/16/32/64/128 with 1 anchor (9 and 15 have keypoints). Outputs may carry a batch axis;
4. each position (x, y) of a stride's grid is an anchor centre (x * stride, y * stride) (repeated per
   anchor); boxes are ``centre -/+ distance * stride`` (left, top, right, bottom), landmarks
   ``centre + offset * stride``;
5. candidates scoring >= the threshold (0.5) are sorted by score and greedily suppressed at IoU > 0.4
   (areas counted with insightface's +1 pixel convention).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["SCRFD", "SCRFDLayout", "letterbox", "nms", "resize_linear", "scrfd_layout"]

INPUT_MEAN = 127.5
INPUT_STD = 128.0
DEFAULT_DET_THRESH = 0.5
DEFAULT_NMS_THRESH = 0.4
DEFAULT_DET_SIZE = (640, 640)

_COEF_BITS = 11  # OpenCV's fixed-point resize coefficients: 2048 = 1.0
_COEF_ONE = 1 << _COEF_BITS


# --------------------------------------------------------------------------------------------------
# Resizing (OpenCV INTER_LINEAR on uint8, bit-exact)
# --------------------------------------------------------------------------------------------------
def _linear_taps(dst: int, src: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and fixed-point weights of one axis. Pixel centres are aligned
    (``(d + 0.5) * src / dst - 0.5``, in float32 as OpenCV keeps it); ``clamp`` pins the weights at the
    edges (OpenCV does this horizontally only; vertically it just clips the row indices)."""
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    first = np.floor(pos).astype(np.int64)
    frac = (pos - first.astype(np.float32)).astype(np.float32)
    if clamp:
        low = first < 0
        frac[low], first[low] = 0, 0
        high = first >= src - 1
        frac[high], first[high] = 0, src - 1
    w0 = np.rint((np.float32(1) - frac) * np.float32(_COEF_ONE)).astype(np.int64)
    w1 = np.rint(frac * np.float32(_COEF_ONE)).astype(np.int64)
    return np.clip(first, 0, src - 1), np.clip(first + 1, 0, src - 1), w0, w1


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(image, (width, height))`` for uint8 [H, W, C] (or [H, W]) images: bilinear with
    OpenCV's fixed-point arithmetic (11-bit weights), and a 2x2 box average for an exact halving."""
    src = np.asarray(image)
    if src.dtype != np.uint8:
        raise TypeError(f"resize_linear takes uint8 images, got {src.dtype}")
    squeeze = src.ndim == 2
    if squeeze:
        src = src[..., None]
    in_h, in_w = src.shape[:2]
    if (in_w, in_h) == (width, height):
        out = src.copy()
    elif in_w == 2 * width and in_h == 2 * height:  # OpenCV switches to INTER_AREA here
        x = src.astype(np.int32)
        out = ((x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2] + 2) >> 2).astype(np.uint8)
    else:
        x0, x1, a0, a1 = _linear_taps(width, in_w, clamp=True)
        y0, y1, b0, b1 = _linear_taps(height, in_h, clamp=False)
        x = src.astype(np.int64)
        rows = x[:, x0] * a0[None, :, None] + x[:, x1] * a1[None, :, None]  # [in_h, width, C], scale 2048
        top, bottom = rows[y0] >> 4, rows[y1] >> 4
        out = (((b0[:, None, None] * top) >> 16) + ((b1[:, None, None] * bottom) >> 16) + 2) >> 2
        out = np.clip(out, 0, 255).astype(np.uint8)
    return out[..., 0] if squeeze else out


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """``image`` resized to fit ``size`` = (width, height) with its aspect ratio, top-left on black; and
    the scale factor (resized / original)."""
    in_w, in_h = int(size[0]), int(size[1])
    height, width = image.shape[:2]
    image_ratio = float(height) / width
    if image_ratio > float(in_h) / in_w:
        new_h = in_h
        new_w = max(1, int(new_h / image_ratio))
    else:
        new_w = in_w
        new_h = max(1, int(new_w * image_ratio))
    scale = float(new_h) / height
    canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resize_linear(image, new_w, new_h)
    return canvas, scale


# --------------------------------------------------------------------------------------------------
# Non-maximum suppression
# --------------------------------------------------------------------------------------------------
def nms(dets: np.ndarray, threshold: float = DEFAULT_NMS_THRESH) -> list[int]:
    """Greedy NMS over ``dets`` [N, 5] (x1, y1, x2, y2, score): indices kept, best first. A box is
    dropped when its IoU with a kept one exceeds ``threshold``; sizes count ``x2 - x1 + 1`` pixels."""
    x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= threshold]
    return keep


# --------------------------------------------------------------------------------------------------
# SCRFD
# --------------------------------------------------------------------------------------------------
class SCRFDLayout(NamedTuple):
    """What a detector's output count says: its strides, anchors per position, and landmarks or not."""

    strides: tuple[int, ...]
    num_anchors: int
    use_kps: bool


_LAYOUTS = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}


def scrfd_layout(num_outputs: int) -> SCRFDLayout:
    if num_outputs not in _LAYOUTS:
        raise ValueError(f"not an SCRFD face detector: {num_outputs} outputs (SCRFD has 6, 9, 10 or 15: scores, "
                         "boxes and optionally landmarks per stride)")
    return SCRFDLayout(*_LAYOUTS[num_outputs])


def _fixed_size(shape: Sequence) -> tuple[int, int] | None:
    """(width, height) when an NCHW input shape fixes both, else None (dynamic)."""
    if shape is None or len(shape) < 4:
        return None
    h, w = shape[2], shape[3]
    if isinstance(h, (int, np.integer)) and isinstance(w, (int, np.integer)) and h > 0 and w > 0:
        return int(w), int(h)
    return None


class SCRFD:
    """An SCRFD detector on an onnxruntime ``InferenceSession``.

    ``detect(bgr, det_size)`` returns (dets [N, 5] float32: x1, y1, x2, y2, score, best first;
    kps [N, 5, 2] float32 or None for detectors without landmarks), in the image's pixel coordinates.
    A detector with a fixed input size always runs at that size, whatever ``det_size`` says.
    """

    taskname = "detection"

    def __init__(self, session, *, det_thresh: float = DEFAULT_DET_THRESH, nms_thresh: float = DEFAULT_NMS_THRESH):
        self.session = session
        inputs, outputs = session.get_inputs(), session.get_outputs()
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape
        self.output_names = [o.name for o in outputs]
        self.layout = scrfd_layout(len(outputs))
        self.fmc = len(self.layout.strides)
        self.batched = len(outputs[0].shape) == 3
        self.fixed_size = _fixed_size(self.input_shape)
        self.det_thresh = float(det_thresh)
        self.nms_thresh = float(nms_thresh)
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    @property
    def use_kps(self) -> bool:
        return self.layout.use_kps

    def _anchor_centres(self, rows: int, cols: int, stride: int) -> np.ndarray:
        key = (rows, cols, stride)
        centres = self._centres.get(key)
        if centres is None:
            ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
            centres = np.repeat(centres, self.layout.num_anchors, axis=0)  # anchors of a position are adjacent
            if len(self._centres) < 100:
                self._centres[key] = centres
        return centres

    def _run(self, canvas: np.ndarray) -> list[np.ndarray]:
        blob = (canvas[..., ::-1].astype(np.float32) - np.float32(INPUT_MEAN)) * np.float32(1.0 / INPUT_STD)
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])
        outs = self.session.run(self.output_names, {self.input_name: blob})
        return [o[0] if self.batched else o for o in outs]

    def _candidates(self, image: np.ndarray, size: tuple[int, int], threshold: float):
        canvas, scale = letterbox(image, size)
        outs = self._run(canvas)
        in_h, in_w = canvas.shape[:2]
        scores_all, boxes_all, kps_all = [], [], []
        for i, stride in enumerate(self.layout.strides):
            scores = outs[i].reshape(-1)
            centres = self._anchor_centres(in_h // stride, in_w // stride, stride)
            keep = np.nonzero(scores >= threshold)[0]
            dist = outs[i + self.fmc].reshape(-1, 4)[keep] * stride
            c = centres[keep]
            boxes = np.stack([c[:, 0] - dist[:, 0], c[:, 1] - dist[:, 1],
                              c[:, 0] + dist[:, 2], c[:, 1] + dist[:, 3]], axis=-1)
            scores_all.append(scores[keep])
            boxes_all.append(boxes)
            if self.use_kps:
                offsets = outs[i + 2 * self.fmc].reshape(-1, 10)[keep].reshape(-1, 5, 2) * stride
                kps_all.append(c[:, None, :] + offsets)
        scores = np.concatenate(scores_all).astype(np.float32)
        boxes = np.concatenate(boxes_all).reshape(-1, 4) / scale
        dets = np.concatenate([boxes, scores[:, None]], axis=1).astype(np.float32)
        kps = np.concatenate(kps_all).reshape(-1, 5, 2) / scale if self.use_kps else None
        order = np.argsort(-scores, kind="stable")
        return dets[order], (kps[order].astype(np.float32) if kps is not None else None)

    def detect(self, image: np.ndarray, det_size: tuple[int, int] | Sequence[tuple[int, int]] = DEFAULT_DET_SIZE,
               det_thresh: float | None = None):
        """Faces in ``image`` (BGR uint8 [H, W, 3]). ``det_size`` is one (width, height) or a list of them:
        candidates of every size are pooled before NMS."""
        threshold = self.det_thresh if det_thresh is None else float(det_thresh)
        sizes = [self.fixed_size] if self.fixed_size is not None else _sizes(det_size)
        dets_list, kps_list = [], []
        for size in sizes:
            dets, kps = self._candidates(image, size, threshold)
            if len(dets):
                dets_list.append(dets)
                kps_list.append(kps)
        if not dets_list:
            return np.empty((0, 5), np.float32), (np.empty((0, 5, 2), np.float32) if self.use_kps else None)
        dets = np.concatenate(dets_list)
        kps = np.concatenate(kps_list) if self.use_kps else None
        order = np.argsort(-dets[:, 4], kind="stable")
        dets = dets[order]
        kps = kps[order] if kps is not None else None
        keep = nms(dets, self.nms_thresh)
        return dets[keep], (kps[keep] if kps is not None else None)


def _sizes(det_size) -> list[tuple[int, int]]:
    if det_size is None:
        return [DEFAULT_DET_SIZE]
    sizes = np.asarray(det_size, dtype=np.int64).reshape(-1, 2)
    out: list[tuple[int, int]] = []
    for w, h in sizes.tolist():
        if w <= 0 or h <= 0:
            raise ValueError(f"detection size must be positive, got {(w, h)}")
        if (w, h) not in out:
            out.append((w, h))
    return out
