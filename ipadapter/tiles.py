"""Tiling: IPAdapter Tiled's reference tiles and masks, and the ClipVision Enhancer's tiled features.

IPAdapter Tiled keeps the detail of large or non-square references: the reference is brought to a
256-pixel short side (a near-square one to 512x512, a 2x2 grid), cut into overlapping 256-pixel tiles,
and each tile acts only where its own mask is white. The ClipVision Enhancer instead encodes a grid of
tiles and merges their features back to the shape of one image's features.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .encode import encode_images
from .image import contrast_adaptive_sharpening

TILE = 256  # bigger than CLIP's 224 and a multiple of 8 (latent) and 64 (the UNet's deepest grid)
MAX_ENHANCE_TILES = 16


def _center_crop(t: Tensor, h: int, w: int) -> Tensor:
    """[..., H, W] -> [..., h, w] around the centre (offsets rounded as torchvision's CenterCrop does)."""
    top = int(round((t.shape[-2] - h) / 2.0))
    left = int(round((t.shape[-1] - w) / 2.0))
    return t[..., top:top + h, left:left + w]


def _resize_lanczos(image: Tensor, size_hw: tuple[int, int]) -> Tensor:
    """[B, C, H, W] -> [B, C, h, w] with PIL's Lanczos filter (8-bit, truncated as the old node did)."""
    out = []
    for img in image:
        arr = (img.clamp(0, 1).movedim(0, -1).cpu().numpy() * 255).astype(np.uint8)
        pil = Image.fromarray(arr).resize((size_hw[1], size_hw[0]), resample=Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.asarray(pil).astype(np.float32) / 255.0).movedim(-1, 0))
    return torch.stack(out)


def _resize_mask(mask: Tensor, size_hw: tuple[int, int]) -> Tensor:
    return F.interpolate(mask[:, None], size=size_hw, mode="bicubic", antialias=True, align_corners=False)[:, 0]


def tile_reference(image: Tensor, attn_mask: Tensor | None = None,
                   sharpening: float = 0.0) -> tuple[list[Tensor], list[Tensor]]:
    """Tiles [B, 256, 256, 3] of ``image`` [B, H, W, 3] and one mask [Bm, h, w] per tile, row by row.

    The mask (default: all white) is first brought to the reference's size: it is assumed to have the
    reference's (and the latent's) aspect ratio. Each tile's mask is zero outside the tile and the
    attention mask inside, so tile k conditions only its part of the picture.
    """
    _, oh, ow, _ = image.shape
    mask = torch.ones(1, oh, ow) if attn_mask is None else attn_mask.float().cpu()
    mask = _resize_mask(mask[None] if mask.dim() == 2 else mask, (oh, ow))
    pixels = image.movedim(-1, 1).float().cpu()
    ratio = oh / ow
    if 0.75 < ratio < 1.33:  # nearly square: crop to a square, a 2x2 grid
        side = min(oh, ow)
        pixels, mask = _center_crop(pixels, side, side), _center_crop(mask, side, side)
        size = (2 * TILE, 2 * TILE)
    else:  # short side to one tile, long side in proportion
        size = (TILE, int(TILE * ow / oh)) if oh < ow else (int(TILE * oh / ow), TILE)
    pixels = _resize_lanczos(pixels, size)
    mask = _resize_mask(mask, size)
    if ratio > 4 or ratio < 0.25:  # at most 4 tiles along the long side
        crop = (TILE, 4 * TILE) if oh < ow else (4 * TILE, TILE)
        pixels, mask = _center_crop(pixels, *crop), _center_crop(mask, *crop)
    pixels = pixels.movedim(1, -1)
    if sharpening > 0:
        pixels = contrast_adaptive_sharpening(pixels, sharpening)

    h, w = pixels.shape[1:3]
    origins_y, origins_x = _origins(h), _origins(w)
    tiles, masks = [], []
    for y in origins_y:
        for x in origins_x:
            tiles.append(pixels[:, y:y + TILE, x:x + TILE])
            tile_mask = torch.zeros_like(mask)
            tile_mask[:, y:y + TILE, x:x + TILE] = mask[:, y:y + TILE, x:x + TILE]
            masks.append(tile_mask)
    return tiles, masks


def _origins(length: int) -> list[int]:
    """Tile starts along one side: as few tiles as cover it, overlapping evenly."""
    count = math.ceil(length / TILE)
    overlap = max(0.0, (count * TILE - length) / (count - 1 if count > 1 else 1))
    return [int(i * (TILE - overlap)) for i in range(count)]


# --- ClipVision Enhancer ----------------------------------------------------------------------------
def split_grid(image: Tensor, tiles: int) -> Tensor:
    """[B, H, W, C] -> [B * tiles², H // tiles, W // tiles, C]: each image's grid, row by row, no overlap."""
    _, h, w, _ = image.shape
    th, tw = h // tiles, w // tiles
    parts = [image[:, i * th:(i + 1) * th, j * tw:(j + 1) * tw] for i in range(tiles) for j in range(tiles)]
    return torch.stack(parts, dim=1).flatten(0, 1)


def _stitch_and_pool(grids: Tensor, tiles: int) -> Tensor:
    """[B * tiles², gh, gw, C] (each tile's feature map) -> [B, gh, gw, C]: stitched, average-pooled back."""
    _, gh, gw, c = grids.shape
    stitched = grids.reshape(-1, tiles, tiles, gh, gw, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, tiles * gh, tiles * gw, c)
    return F.adaptive_avg_pool2d(stitched.permute(0, 3, 1, 2), (gh, gw)).permute(0, 2, 3, 1)


def merge_hidden_states(x: Tensor, tiles: int) -> Tensor:
    """Tiles' hidden states [B * tiles², 1 + g², D] -> [B, 1 + g², D]: the patch tokens of all tiles
    stitched into one big grid and pooled back to g x g; the class token is the tiles' mean."""
    n, tokens, d = x.shape
    g = math.isqrt(tokens - 1)
    if g * g != tokens - 1:
        raise ValueError(f"cannot merge hidden states of {tokens} tokens: the patch tokens do not form a square grid")
    cls = x[:, :1].reshape(-1, tiles * tiles, 1, d).mean(dim=1)
    pooled = _stitch_and_pool(x[:, 1:].reshape(n, g, g, d), tiles)
    return torch.cat([cls, pooled.reshape(-1, g * g, d)], dim=1)


def _embeds_grid(width: int) -> tuple[int, int]:
    """The most square (h, w) with h * w = width: 32x32 for 1024-wide image_embeds."""
    h = math.isqrt(width)
    while width % h:
        h -= 1
    return h, width // h


def merge_image_embeds(x: Tensor, tiles: int) -> Tensor:
    """Tiles' image_embeds [B * tiles², D] -> [B, D], each vector laid out as an h x w map (32x32 for
    1024), stitched and pooled like hidden states, as the old extension did. Widths that are not a
    square (bigG's 1280) use the most square h x w instead of failing."""
    h, w = _embeds_grid(x.shape[-1])
    return _stitch_and_pool(x.reshape(x.shape[0], h, w, 1), tiles).reshape(-1, h * w)


def enhance_features(clip_vision, image: Tensor, full: Tensor, output: str, tiles: int, ratio: float,
                     batch_size: int = 0) -> Tensor:
    """ClipVision Enhancer: features of a tiles x tiles grid of each image, merged, added to ``full``.

    One image: [full * ratio, merged] (two embeddings, merged later by combine_embeds or unfold);
    several images: full * ratio + merged * (1 - ratio), one per image (the old extension's rule).
    """
    tiles = min(int(tiles), MAX_ENHANCE_TILES)
    if tiles <= 1:
        return full
    parts = encode_images(clip_vision, split_grid(image, tiles), output, batch_size)
    merged = merge_image_embeds(parts, tiles) if output == "image_embeds" else merge_hidden_states(parts, tiles)
    merged = merged.to(full.dtype)
    if full.shape[0] > 1:
        return full * ratio + merged * (1 - ratio)
    return torch.cat([full * ratio, merged])
