"""Noise images for the negative reference (``image_negative``), as IPAdapter Noise makes them.

The base is a black square, or the input image center-cropped to a square and resized (bicubic). The
random numbers come from a generator seeded with the base image's pixel sum, so the same input always
gives the same noise, and ComfyUI's global random state is left alone.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

SIZE = 224
SEED_MODULUS = 1_000_000_007
# Shuffle: elastic distortion strength (pixels of displacement at the image scale) and smoothness.
ELASTIC_ALPHA = 75.0
ELASTIC_MAX_SIGMA = 3.5


def base_image(image: Tensor | None, size: int = SIZE) -> Tensor:
    """[B, H, W, C] -> [B, size, size, 3]: centre square, bicubic resize with antialiasing; None -> black."""
    if image is None:
        return torch.zeros(1, size, size, 3)
    x = image[..., :3].float().cpu().movedim(-1, 1)
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = int(round((h - s) / 2)), int(round((w - s) / 2))
    x = x[..., top:top + s, left:left + s]
    if s != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return x.movedim(1, -1)


def image_seed(image: Tensor) -> int:
    """The old node's seed: the pixel sum, truncated, modulo a large prime."""
    return int(image.sum().item()) % SEED_MODULUS


def _gaussian_kernel(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: Tensor, kernel_size: int, sigma: float | None = None) -> Tensor:
    """Separable Gaussian blur of [B, C, H, W] with reflected borders. Default sigma as torchvision's:
    0.3 * ((k - 1) / 2 - 1) + 0.8."""
    if kernel_size <= 1:
        return x
    sigma = sigma if sigma is not None else 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    k = _gaussian_kernel(kernel_size, sigma).to(x)
    c = x.shape[1]
    pad = kernel_size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)


def elastic(x: Tensor, alpha: float, sigma: float, gen: torch.Generator) -> Tensor:
    """Elastic distortion of [B, C, H, W]: a random displacement field (uniform in -1..1, smoothed with a
    Gaussian of ``sigma`` px, scaled by ``alpha`` / size in normalised coordinates), one for the batch."""
    h, w = x.shape[-2:]
    fields = []
    for scale in (alpha / h, alpha / w):  # x displacement, then y (as torchvision orders them)
        d = torch.rand(1, 1, h, w, generator=gen) * 2 - 1
        if sigma > 0:
            d = gaussian_blur(d, int(8 * sigma + 1) | 1, sigma)
        fields.append(d * scale)
    displacement = torch.cat(fields, 1).permute(0, 2, 3, 1)  # [1, H, W, 2]
    ys = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None] + displacement
    return F.grid_sample(x, grid.expand(x.shape[0], -1, -1, -1), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def _fade(img: Tensor, s: float, gen: torch.Generator) -> Tensor:
    return img * (1 - s) + torch.rand(img.shape, generator=gen) * s


def _dissolve(img: Tensor, s: float, gen: torch.Generator) -> Tensor:
    mask = (torch.rand(img.shape, generator=gen) < s).float()
    return img * (1 - mask) + torch.rand(img.shape, generator=gen) * mask


def _gaussian(img: Tensor, s: float, gen: torch.Generator) -> Tensor:
    return img + torch.randn(img.shape, generator=gen) * s


def _shuffle(img: Tensor, s: float, gen: torch.Generator) -> Tensor:
    x = elastic(img.movedim(-1, 1), ELASTIC_ALPHA, (1 - s) * ELASTIC_MAX_SIGMA, gen)
    x = x.flip(-1, -2).movedim(1, -1)  # flipped vertically and horizontally
    n = torch.randn(x.shape, generator=gen) * (s * 0.75)
    return x * (1 - n) + n


NOISE_TYPES: dict[str, Callable[[Tensor, float, torch.Generator], Tensor]] = {
    "fade": _fade,  # mix towards uniform noise
    "dissolve": _dissolve,  # replace a fraction `strength` of the values with uniform noise
    "gaussian": _gaussian,  # add Gaussian noise
    "shuffle": _shuffle,  # distort, flip, then modulate with Gaussian noise
}


def make_noise(kind: str, strength: float, blur: int = 0, image: Tensor | None = None, size: int = SIZE) -> Tensor:
    """A noise IMAGE [B, size, size, 3] in 0..1 (B = the input batch, 1 without an input)."""
    if kind not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {kind!r}; choose one of {', '.join(NOISE_TYPES)}")
    if image is not None and (image.dim() != 4 or image.shape[-1] < 3):
        raise ValueError(f"IPAdapter Noise: image_optional must be an IMAGE [batch, height, width, 3]; "
                         f"got shape {list(image.shape)}")
    base = base_image(image, size)
    gen = torch.Generator().manual_seed(image_seed(base))
    out = NOISE_TYPES[kind](base, float(strength), gen).clamp(0, 1)
    if blur > 0:
        kernel = blur if blur % 2 else blur + 1  # odd kernels only
        out = gaussian_blur(out.movedim(-1, 1), kernel).movedim(1, -1)
    return out


__all__ = ["NOISE_TYPES", "SIZE", "base_image", "elastic", "gaussian_blur", "image_seed", "make_noise"]
