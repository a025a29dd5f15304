"""A synthetic ``fooocus_ip_negative.safetensors``: Fooocus's precomputed uncond tokens for the SDXL Plus adapters.

The real file holds one tensor under ``data``, shape [1, 16, 2048] (16 Resampler tokens at SDXL's context
width), already in the adapter's token space. The synthetic one has the same key and token count, with the
context width of ``scale`` ("full": 2048, "tiny": the tiny SDXL's); values ~ N(0, 1) like LayerNorm output.
Kept out of the hashed fixture tree (model_tree.py): tests write it where they need it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from harness.dims import FULL_UNET, TINY_UNET

FILENAME = "fooocus_ip_negative.safetensors"
KEY = "data"
TOKENS = 16  # the SDXL Plus adapters' Resampler queries


def negative_tokens(scale: str = "tiny", seed: int = 0, tokens: int = TOKENS) -> torch.Tensor:
    width = {"tiny": TINY_UNET, "full": FULL_UNET}[scale]["sdxl"].context_dim
    return torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(1000 + seed))


def write_negative(path: str | Path, scale: str = "tiny", seed: int = 0, tokens: int = TOKENS,
                   key: str = KEY) -> Path:
    import safetensors.torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({key: negative_tokens(scale, seed, tokens).contiguous()}, str(path))
    return path
