"""Checks of node inputs that ComfyUI's validation lets through, made once per apply (never per step).

ComfyUI checks a FLOAT against its min/max, which NaN passes (every comparison with NaN is false), and
scripts or other packs call the nodes' functions with any value; an IMAGE may be an empty batch. Either
would otherwise surface as a NaN latent or a bare Python error deep inside the pack.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

from torch import Tensor

__all__ = ["require_finite", "require_images"]


def _values(value) -> Iterable[float]:
    if isinstance(value, Tensor):
        return value.detach().float().flatten().tolist()
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _values(item)]
    return [float(value)]


def require_finite(name: str, value) -> None:
    """ValueError naming the input when ``value`` (a number, a list of numbers such as IPAdapter Weights'
    output, or a tensor) is or holds NaN or an infinity. None (an input left out) passes."""
    if value is None:
        return
    try:
        bad = [v for v in _values(value) if not math.isfinite(v)]
    except (TypeError, ValueError):
        raise ValueError(f"the {name} input must be a number, got {type(value).__name__}") from None
    if bad:
        raise ValueError(f"the {name} input is {bad[0]} (not a finite number); it would make every image NaN. "
                         f"Set {name} to a number (check the node or the math that feeds it).")


def require_images(name: str, image) -> None:
    """ValueError naming the input when ``image`` is not an IMAGE batch [B, H, W, C] with at least one image."""
    if image is None:
        return
    if not isinstance(image, Tensor) or image.ndim != 4:
        shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"the {name} input must be an IMAGE batch [batch, height, width, channels], got {shape}")
    if image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"the {name} input is empty ({image.shape[0]} images of {image.shape[2]}x{image.shape[1]} "
                         "pixels): connect at least one image (an upstream batch or filter node gave none).")
