"""Attention masks: resample a pixel-space mask to the token grid of every UNet block."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_grid(seq_len: int, latent_hw: tuple[int, int], activations_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """Height and width of the token grid a block with ``seq_len`` tokens works on.

    ComfyUI >= 0.3.28 reports the block's activation size directly. Otherwise follow the UNet's
    downsampling (stride-2 convolutions round up) from the latent size until the token count matches.
    """
    if activations_hw is not None and activations_hw[0] * activations_hw[1] == seq_len:
        return activations_hw
    h, w = latent_hw
    while h * w > seq_len:
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != seq_len:
        raise ValueError(f"cannot place {seq_len} attention tokens on a latent of {latent_hw[0]}x{latent_hw[1]}")
    return h, w


MASK_INTERPOLATIONS = ("bilinear", "bicubic")


def resample_mask(mask: torch.Tensor, grid: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """[B, H, W] mask -> [B, h*w, 1] weights on the token grid.

    "bilinear" is what the old extension did (the default, so old workflows keep their images);
    "bicubic" is the reference (diffusers) choice, which can over/undershoot [0, 1] near edges.
    """
    m = F.interpolate(mask[:, None].float(), size=grid, mode=mode, align_corners=False)
    return m.flatten(1)[..., None]
