"""Image preparation for CLIP vision: square crop or pad, resize, contrast-adaptive sharpening."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

INTERPOLATIONS = ("LANCZOS", "BICUBIC", "HAMMING", "BILINEAR", "BOX", "NEAREST")
CROP_POSITIONS = ("top", "bottom", "left", "right", "center", "pad")


def square(image: Tensor, position: str) -> Tensor:
    """[B, H, W, C] -> square [B, S, S, C]: a crop at ``position``, or black padding for "pad"."""
    _, h, w, _ = image.shape
    if position == "pad":
        s = max(h, w)
        top, left = (s - h) // 2, (s - w) // 2
        # Pad to exactly s x s (the old node could leave the image 1 px off square on odd differences).
        return F.pad(image, (0, 0, left, s - w - left, top, s - h - top))
    s = min(h, w)
    y = {"top": 0, "bottom": h - s}.get(position, (h - s) // 2)
    x = {"left": 0, "right": w - s}.get(position, (w - s) // 2)
    return image[:, y:y + s, x:x + s]


def resize(image: Tensor, size: int, interpolation: str) -> Tensor:
    """Resize every image of a batch with PIL's filter ``interpolation``.

    The 8-bit conversion truncates (``x * 255`` cast to uint8), as torchvision's ``ToPILImage`` does:
    the old extension's node converted that way, and saved workflows must give the same pixels.
    """
    method = Image.Resampling[interpolation]
    out = []
    for img in image:
        arr = (img.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
        pil = Image.fromarray(arr).resize((size, size), resample=method)
        out.append(torch.from_numpy(np.asarray(pil).astype(np.float32) / 255.0))
    return torch.stack(out)


def contrast_adaptive_sharpening(image: Tensor, amount: float) -> Tensor:
    """AMD's CAS filter on [B, H, W, C] in 0..1: sharpens more where local contrast is low."""
    img = F.pad(image.movedim(-1, 1), (1, 1, 1, 1), mode="replicate")
    a, b, c = img[..., :-2, :-2], img[..., :-2, 1:-1], img[..., :-2, 2:]
    d, e, f = img[..., 1:-1, :-2], img[..., 1:-1, 1:-1], img[..., 1:-1, 2:]
    g, h, i = img[..., 2:, :-2], img[..., 2:, 1:-1], img[..., 2:, 2:]
    cross = torch.stack([b, d, e, f, h])
    mn = cross.min(0).values
    mx = cross.max(0).values
    mn = mn + torch.stack([mn, a, c, g, i]).min(0).values
    mx = mx + torch.stack([mx, a, c, g, i]).max(0).values
    amp = torch.sqrt(torch.clamp(torch.minimum(mn, 2 - mx) / mx.clamp(min=1e-5), 0, 1))
    w = -amp * (amount * (1 / 5 - 1 / 8) + 1 / 8)
    out = ((b + d + f + h) * w + e) / (1 + 4 * w)
    return out.clamp(0, 1).movedim(1, -1)


def prep_for_clip_vision(image: Tensor, interpolation: str = "LANCZOS", crop_position: str = "center",
                         sharpening: float = 0.0, size: int = 224) -> Tensor:
    out = resize(square(image, crop_position), size, interpolation)
    if sharpening > 0:
        out = contrast_adaptive_sharpening(out, sharpening)
    return out
