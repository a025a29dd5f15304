"""ArcFace face alignment without OpenCV or scikit-image: the 5-point template, a closed-form similarity
fit (Umeyama), and a bilinear affine warp that reproduces ``cv2.warpAffine``'s default behaviour.

``norm_crop(bgr, landmark, image_size)`` is a drop-in for insightface's ``face_align.norm_crop``:

* the template is ArcFace's 112 px five points (eye centres, nose tip, mouth corners), scaled by
  ``image_size / 112`` for multiples of 112 (224, 336, ...), or by ``image_size / 128`` and shifted right
  by ``8 * ratio`` for multiples of 128 (256, ...);
* the landmarks are mapped onto it by the least-squares similarity (rotation, uniform scale,
  translation; no reflection), solved in closed form from the SVD of the 2x2 cross-covariance
  (Umeyama 1991), in float64;
* the crop samples the source at the inverse-mapped position of every output pixel, bilinearly, with
  zeros outside the image (``cv2.warpAffine(img, M, (S, S), borderValue=0)``). OpenCV 4.11+ computes
  this in float32 (coordinates ``fma(M0, x, y*M1 + M2)``, then two horizontal lerps and one vertical
  lerp, rounded half to even); the same arithmetic is done here (float32 fused multiply-adds emulated in
  float64), so crops agree with OpenCV's to the last bit for all but about 0.02 % of the pixels, which
  differ by one grey level.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ARCFACE_TEMPLATE", "arcface_template", "estimate_norm", "invert_affine", "norm_crop",
           "umeyama_similarity", "warp_affine"]

# ArcFace's alignment target at 112x112: left eye, right eye, nose tip, left and right mouth corner (x, y).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def arcface_template(image_size: int = 112) -> np.ndarray:
    """The five template points for an ``image_size`` crop (a multiple of 112 or of 128)."""
    image_size = int(image_size)
    if image_size <= 0 or (image_size % 112 and image_size % 128):
        raise ValueError(f"face crop size {image_size} is not possible: the ArcFace template scales to multiples "
                         "of 112 or 128 (112, 224, 256, 336, ...)")
    if image_size % 112 == 0:
        return ARCFACE_TEMPLATE * (image_size / 112.0)
    ratio = image_size / 128.0
    points = ARCFACE_TEMPLATE * ratio
    points[:, 0] += 8.0 * ratio
    return points


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix (float64) of the similarity ``x -> c R x + t`` (R a rotation) that best maps ``src``
    onto ``dst`` in the least-squares sense, in closed form (Umeyama 1991, eqs. 38-43). Points are [N, 2].

    The point statistics (means, cross-covariance and its SVD, variance) are taken at the points'
    precision: float32 landmarks and template give float32 statistics, as scikit-image's
    ``SimilarityTransform`` (which insightface uses) does, so the two agree to float64 round-off."""
    src, dst = np.asarray(src), np.asarray(dst)
    work = np.float32 if src.dtype == np.float32 and dst.dtype == np.float32 else np.float64
    src, dst = src.astype(work).reshape(-1, 2), dst.astype(work).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"need matching point sets of at least 2 points, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n  # eq. 38: the 2x2 cross-covariance
    signs = np.ones(2)  # eq. 39: a reflection would fit better -> take the best rotation instead
    if np.linalg.det(cov) < 0:
        signs[1] = -1.0
    u, sv, vt = np.linalg.svd(cov)
    rank = int(np.count_nonzero(sv > sv.max() * 2 * np.finfo(float).eps))
    if rank == 0:
        return np.full((2, 3), np.nan)
    if rank == 1 and np.linalg.det(u) * np.linalg.det(vt) > 0:  # eq. 43 (collinear points)
        rotation = u @ vt
    elif rank == 1:
        rotation = u @ np.diag([1.0, -1.0]) @ vt
    else:
        rotation = u @ np.diag(signs) @ vt  # eq. 40
    scale = 1.0 / src_c.var(axis=0).sum() * (sv @ signs)  # eq. 42
    matrix = np.empty((2, 3))
    matrix[:, 2] = dst_mean - scale * (rotation @ src_mean)  # eq. 41
    matrix[:, :2] = rotation * scale
    return matrix


def estimate_norm(landmark: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The 2x3 similarity (float64) that takes the five face landmarks onto the ArcFace template."""
    landmark = np.asarray(landmark, dtype=np.float32)
    if landmark.shape != (5, 2):
        raise ValueError(f"ArcFace alignment needs 5 landmarks (x, y), got shape {landmark.shape}")
    return umeyama_similarity(landmark, arcface_template(image_size))


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine map (as OpenCV inverts it: float64, a singular map gives zeros)."""
    m = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    inv_det = 1.0 / det if det != 0 else 0.0
    a, b = m[1, 1] * inv_det, -m[0, 1] * inv_det
    c, d = -m[1, 0] * inv_det, m[0, 0] * inv_det
    return np.array([[a, b, -a * m[0, 2] - b * m[1, 2]],
                     [c, d, -c * m[0, 2] - d * m[1, 2]]])


def _fma32(a, b, c) -> np.ndarray:
    """float32 ``a * b + c`` with one rounding (the float32 product is exact in float64)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(np.float32)


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int], border_value: float = 0.0) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, size, borderValue=border_value)`` (bilinear, constant border):
    output pixel (x, y) samples ``image`` at ``inverse(matrix) @ (x, y, 1)``. ``size`` is (width, height);
    ``image`` is [H, W] or [H, W, C], uint8 (rounded, saturated) or float (returned as float32)."""
    src = np.asarray(image)
    squeeze = src.ndim == 2
    if squeeze:
        src = src[..., None]
    height, width = src.shape[:2]
    out_w, out_h = int(size[0]), int(size[1])
    inv = invert_affine(matrix)

    xs = np.arange(out_w, dtype=np.float32)[None, :]
    ys = np.arange(out_h, dtype=np.float64)
    row_x = (ys * inv[0, 1] + inv[0, 2]).astype(np.float32)[:, None]
    row_y = (ys * inv[1, 1] + inv[1, 2]).astype(np.float32)[:, None]
    sx = _fma32(np.float32(inv[0, 0]), xs, row_x)
    sy = _fma32(np.float32(inv[1, 0]), xs, row_y)
    fx, fy = np.floor(sx), np.floor(sy)
    ax = (sx - fx)[..., None]
    ay = (sy - fy)[..., None]
    # Clamp before the int cast (points far outside would overflow); they read the border anyway.
    x0 = np.clip(fx, -2, width).astype(np.int64)
    y0 = np.clip(fy, -2, height).astype(np.int64)

    padded = np.full((height + 4, width + 4, src.shape[2]), border_value, dtype=np.float32)
    padded[2:-2, 2:-2] = src

    def tap(dy: int, dx: int) -> np.ndarray:
        return padded[y0 + dy + 2, x0 + dx + 2]

    p00, p01, p10, p11 = tap(0, 0), tap(0, 1), tap(1, 0), tap(1, 1)
    top = _fma32(ax, p01 - p00, p00)
    bottom = _fma32(ax, p11 - p10, p10)
    value = _fma32(ay, bottom - top, top)
    if src.dtype == np.uint8:
        value = np.clip(np.rint(value), 0, 255).astype(np.uint8)
    return value[..., 0] if squeeze else value


def norm_crop(img: np.ndarray, landmark: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The face aligned to the ArcFace template, ``image_size`` square (insightface's ``norm_crop``)."""
    matrix = estimate_norm(landmark, image_size)
    return warp_affine(img, matrix, (image_size, image_size), border_value=0.0)
