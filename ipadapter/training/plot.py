"""The loss curve as a ComfyUI IMAGE (Pillow): raw loss per step and its running mean."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["loss_curve"]


def loss_curve(losses: Sequence[float], width: int = 512, height: int = 256) -> torch.Tensor:
    """[1, height, width, 3] in 0..1: grey = loss per step, blue = running mean over ~5 % of the steps."""
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    left, right, top, bottom = 48, width - 8, 16, height - 20
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    values = np.asarray([v for v in losses if np.isfinite(v)], dtype=np.float64)
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        hi = hi if hi > lo else lo + 1e-8
        window = max(1, len(values) // 20)
        mean = np.convolve(values, np.ones(window) / window, mode="valid")

        def points(series: np.ndarray, offset: int) -> list[tuple[float, float]]:
            n = max(len(values) - 1, 1)
            return [(left + (i + offset) * (right - left) / n, bottom - (v - lo) * (bottom - top) / (hi - lo))
                    for i, v in enumerate(series)]

        if len(values) > 1:
            draw.line(points(values, 0), fill=(170, 170, 170), width=1)
            draw.line(points(mean, window - 1), fill=(30, 90, 200), width=2)
        draw.text((4, top), f"{hi:.3g}", fill=(0, 0, 0))
        draw.text((4, bottom - 10), f"{lo:.3g}", fill=(0, 0, 0))
        draw.text((left, bottom + 4), f"loss, {len(values)} steps (last {values[-1]:.4g})", fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None]
