"""Lay images out as one labelled grid image (the IPAdapter Sweep Grid node): each cell is an image with its
label drawn above it in a strip of its own, so a label never hides part of a picture."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
GAP = 4  # pixels between cells


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # the fixed bitmap font


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _as_pil(image: torch.Tensor) -> Image.Image:
    array = (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return Image.fromarray(array)


def labelled_grid(images: list[torch.Tensor], labels: list[str], columns: int = 0,
                  font_size: int = 0) -> torch.Tensor:
    """One [1, H, W, 3] image holding every image of ``images`` (each [B, H, W, C] or [H, W, C]; the
    images of a batch each get a cell, labelled ``label #i``) with its label above it.

    ``columns`` 0 picks a near-square layout; ``font_size`` 0 scales the text with the cell width.
    Missing labels are left blank; cells smaller than the largest are centred on white.
    """
    cells: list[tuple[Image.Image, str]] = []
    for i, batch in enumerate(images):
        batch = batch[None] if batch.dim() == 3 else batch
        label = labels[i] if i < len(labels) else ""
        for j in range(batch.shape[0]):
            cells.append((_as_pil(batch[j]), label if batch.shape[0] == 1 else f"{label} #{j + 1}"))
    if not cells:
        raise ValueError("IPAdapter Sweep Grid got no images: connect the decoded images of the sweep")
    width = max(c.width for c, _ in cells)
    height = max(c.height for c, _ in cells)
    size = font_size or max(10, width // 14)
    font = _font(size)
    strip = int(size * 1.5) + 2
    cols = columns if columns > 0 else math.ceil(math.sqrt(len(cells)))
    cols = min(cols, len(cells))
    rows = math.ceil(len(cells) / cols)
    grid = Image.new("RGB", (cols * width + (cols - 1) * GAP, rows * (height + strip) + (rows - 1) * GAP), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for k, (cell, label) in enumerate(cells):
        x = (k % cols) * (width + GAP)
        y = (k // cols) * (height + strip + GAP)
        text = _fit(draw, label, font, width - 4)
        draw.text((x + width // 2, y + strip // 2), text, fill=TEXT, font=font, anchor="mm")
        grid.paste(cell, (x + (width - cell.width) // 2, y + strip + (height - cell.height) // 2))
    return torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255.0)[None]
