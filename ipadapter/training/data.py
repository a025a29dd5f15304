"""Training samples: an image and its caption.

Sources: an IMAGE batch with one caption per image (the node), a folder of images with same-named ``.txt``
captions, or the reference's JSON list ``[{"image_file": ..., "text": ...}]`` (image paths relative to the
JSON's folder or an ``image_root``). A bad entry (unreadable image, missing caption, missing file) is
reported with its path and skipped; a dataset with no usable entry is refused with the reasons.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["Dataset", "Sample", "from_folder", "from_images", "from_json", "load_dataset", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Sample:
    caption: str
    source: str  # path (or "image i of the batch"), for messages
    image: torch.Tensor | None = None  # [H, W, 3] in 0..1; None: read from ``source`` when used

    def load(self) -> torch.Tensor:
        return self.image if self.image is not None else read_image(self.source)


@dataclass(frozen=True)
class Dataset:
    samples: tuple[Sample, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (path, reason)

    def __len__(self) -> int:
        return len(self.samples)


def read_image(path: str) -> torch.Tensor:
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb)


def _check_image(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        return f"unreadable image ({exc.__class__.__name__}: {exc})"
    return None


def _finish(samples: list[Sample], skipped: list[tuple[str, str]], where: str) -> Dataset:
    for path, reason in skipped:
        log.warning("IPAdapter training: skipped %s: %s", path, reason)
    if not samples:
        reasons = "; ".join(f"{p}: {r}" for p, r in skipped[:5]) or "no image files found"
        raise ValueError(f"IPAdapter training: no usable sample in {where} ({reasons}). Each image needs a caption: "
                         "a same-named .txt file, or an entry {\"image_file\": ..., \"text\": ...} in the JSON list.")
    return Dataset(tuple(samples), tuple(skipped))


def from_folder(folder: str | os.PathLike) -> Dataset:
    """Every image in ``folder`` (recursively) with its same-named ``.txt`` caption."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"IPAdapter training: dataset folder {root} does not exist")
    samples, skipped = [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        caption_file = path.with_suffix(".txt")
        if not caption_file.is_file():
            skipped.append((str(path), f"no caption file {caption_file.name}"))
            continue
        problem = _check_image(path)
        if problem:
            skipped.append((str(path), problem))
            continue
        samples.append(Sample(caption_file.read_text(encoding="utf-8", errors="replace").strip(), str(path)))
    return _finish(samples, skipped, str(root))


def from_json(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> Dataset:
    """The reference's list ``[{"image_file": ..., "text": ...}]``."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"IPAdapter training: {path} is not a readable JSON list: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError(f"IPAdapter training: {path} must hold a list of {{\"image_file\", \"text\"}} entries")
    root = Path(image_root) if image_root is not None else path.parent
    samples, skipped = [], []
    for i, entry in enumerate(entries):
        name = entry.get("image_file") if isinstance(entry, dict) else None
        where = f"{path} entry {i}" + (f" ({name})" if name else "")
        if not name:
            skipped.append((where, "no image_file"))
            continue
        text = entry.get("text")
        if not isinstance(text, str):
            skipped.append((where, "no text caption"))
            continue
        image = root / name
        problem = "file not found" if not image.is_file() else _check_image(image)
        if problem:
            skipped.append((str(image), problem))
            continue
        samples.append(Sample(text, str(image)))
    return _finish(samples, skipped, str(path))


def load_dataset(source: str | os.PathLike, image_root: str | os.PathLike | None = None) -> Dataset:
    """A folder, or a .json list."""
    return from_json(source, image_root) if str(source).lower().endswith(".json") else from_folder(source)


def from_images(images: torch.Tensor, captions: Sequence[str]) -> Dataset:
    """An IMAGE batch [B, H, W, 3] and one caption per image (a single caption applies to all)."""
    captions = list(captions)
    n = images.shape[0]
    if len(captions) == 1 and n > 1:
        captions = captions * n
    if len(captions) != n:
        raise ValueError(f"IPAdapter Train: {n} images but {len(captions)} caption lines; write one caption per "
                         "line, in the order of the images (or a single line for all of them).")
    return Dataset(tuple(Sample(c, f"image {i} of the batch", images[i]) for i, c in enumerate(captions)))


def split_captions(text: str) -> list[str]:
    """One caption per non-empty line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def batches(dataset: Dataset, batch_size: int, generator: torch.Generator,
            on_bad: Callable[[Sample, Exception], None] | None = None):
    """Endless shuffled batches of (sample, image); an image that fails to load is reported and skipped."""
    while True:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        batch = []
        for i in order:
            sample = dataset.samples[i]
            try:
                batch.append((sample, sample.load()))
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                log.warning("IPAdapter training: skipped %s: %s", sample.source, exc)
                if on_bad is not None:
                    on_bad(sample, exc)
                continue
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch and len(dataset) < batch_size:  # a dataset smaller than a batch: repeat it
            while len(batch) < batch_size:
                batch.append(batch[len(batch) % len(dataset)])
            yield batch
