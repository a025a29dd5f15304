"""Write the example workflows' pictures, all drawn here (no third-party images):

- ``example_workflows/input/*.png``: the reference images the workflows' Load Image nodes name. The pack
  copies each into ComfyUI's input/ folder when it loads, only where no file of that name exists
  (node_defs/example_inputs.py), so a template runs with one click of Run and a user's file is never replaced.
- ``example_workflows/<name>.jpg``: each workflow's template thumbnail (the file name both tested frontends
  read beside ``<name>.json``): the workflow's own graph, drawn from its JSON, under its title.

    .venv/bin/python dev/make_example_assets.py

Run it after dev/make_example_workflows.py when a workflow changes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "example_workflows"
INPUTS = WORKFLOWS / "input"
THUMBNAIL = (400, 300)


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return x / width, y / height


def landscape(width: int = 512, height: int = 384) -> Image.Image:
    """A sunset: a warm sky, a sun, three ranges of hills."""
    x, y = _grid(width, height)
    sky = np.stack([0.98 - 0.3 * y, 0.55 - 0.25 * y, 0.35 + 0.3 * y], -1)
    sun = np.exp(-(((x - 0.7) * width / height) ** 2 + (y - 0.38) ** 2) / 0.006)[..., None]
    pixels = sky * (1 - sun) + np.array([1.0, 0.92, 0.6]) * sun
    hills = ((0.55, (0.45, 0.25, 0.35), 9), (0.68, (0.3, 0.18, 0.3), 6), (0.8, (0.15, 0.1, 0.18), 4))
    for ridge, colour, wave in hills:
        line = ridge + 0.05 * np.sin(x * wave + ridge * 10) + 0.02 * np.sin(x * wave * 3.1)
        pixels = np.where((y > line)[..., None], np.array(colour), pixels)
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def pattern(size: int = 384) -> Image.Image:
    """An abstract tile: interfering rings in blues and teals (a style quite unlike the landscape)."""
    x, y = _grid(size, size)
    rings = np.sin(np.hypot(x - 0.3, y - 0.4) * 40) + np.sin(np.hypot(x - 0.75, y - 0.7) * 28)
    t = (rings[..., None] + 2) / 4
    pixels = np.array([0.05, 0.2, 0.45]) * (1 - t) + np.array([0.4, 0.9, 0.85]) * t
    return Image.fromarray((pixels * 255).astype(np.uint8))


def face(width: int = 384, height: int = 448) -> Image.Image:
    """A drawn portrait (a placeholder: face detectors look for photographs, so replace it with one)."""
    image = Image.new("RGB", (width, height), (200, 215, 230))
    d = ImageDraw.Draw(image)
    cx = width // 2
    d.ellipse((cx - 150, 40, cx + 150, 330), fill=(70, 45, 30))  # hair
    d.rectangle((cx - 40, 300, cx + 40, 380), fill=(230, 190, 160))  # neck
    d.ellipse((cx - 200, 360, cx + 200, 600), fill=(60, 90, 140))  # shoulders
    d.ellipse((cx - 115, 80, cx + 115, 350), fill=(235, 195, 165))  # face
    for side in (-1, 1):
        ex = cx + side * 48
        d.ellipse((ex - 24, 180, ex + 24, 204), fill=(255, 255, 255))
        d.ellipse((ex - 10, 182, ex + 10, 202), fill=(60, 40, 30))
        d.line((ex - 28, 165, ex + 24, 160 + side * 2), fill=(70, 45, 30), width=5)  # brows
    d.polygon([(cx, 200), (cx - 16, 262), (cx + 16, 262)], fill=(215, 170, 140))  # nose
    d.arc((cx - 45, 260, cx + 45, 310), 20, 160, fill=(170, 70, 70), width=6)  # mouth
    return image


REFERENCES = {"ipadapter_reference.png": landscape, "ipadapter_reference_2.png": pattern,
              "ipadapter_face.png": face}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def title_of(name: str) -> str:
    """``ipadapter_layer_sweep`` -> ``IPAdapter: layer sweep``."""
    words = name.removeprefix("ipadapter_").replace("_", " ")
    return f"IPAdapter: {words}"


def thumbnail(name: str, workflow: dict) -> Image.Image:
    """The workflow's graph (nodes at their saved positions, links as lines) under its title; the
    IPAdapter nodes in the pack's colour, Load Image nodes showing the picture they load."""
    width, height = THUMBNAIL
    image = Image.new("RGB", THUMBNAIL, (32, 34, 40))
    d = ImageDraw.Draw(image)
    d.rectangle((0, 0, width, 44), fill=(52, 56, 68))
    d.text((12, 22), title_of(name), fill=(240, 240, 245), font=_font(20), anchor="lm")
    boxes = {n["id"]: (*n["pos"], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in workflow["nodes"]}
    left, top = min(b[0] for b in boxes.values()), min(b[1] for b in boxes.values())
    right, bottom = max(b[2] for b in boxes.values()), max(b[3] for b in boxes.values())
    scale = min((width - 24) / (right - left), (height - 68) / (bottom - top))
    ox = (width - (right - left) * scale) / 2
    oy = 44 + (height - 44 - (bottom - top) * scale) / 2

    def place(b):
        return (ox + (b[0] - left) * scale, oy + (b[1] - top) * scale, ox + (b[2] - left) * scale,
                oy + (b[3] - top) * scale)

    for _, origin, _, target, _, _ in workflow["links"]:
        a, b = place(boxes[origin]), place(boxes[target])
        d.line(((a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)), fill=(120, 125, 140), width=2)
    for node in workflow["nodes"]:
        box = place(boxes[node["id"]])
        ours = node["type"].startswith(("IPAdapter", "IPAAdapter", "PrepImage"))
        d.rounded_rectangle(box, radius=3, fill=(46, 90, 160) if ours else (70, 72, 80), outline=(150, 155, 170))
        if node["type"] == "LoadImage" and node["widgets_values"][0] in REFERENCES:
            inner = tuple(int(v) for v in (box[0] + 3, box[1] + 3, box[2] - 3, box[3] - 3))
            if inner[2] > inner[0] and inner[3] > inner[1]:
                picture = Image.open(INPUTS / node["widgets_values"][0]).convert("RGB")
                image.paste(picture.resize((inner[2] - inner[0], inner[3] - inner[1])), inner[:2])
    return image


def main() -> int:
    INPUTS.mkdir(exist_ok=True)
    for file_name, draw in REFERENCES.items():
        draw().save(INPUTS / file_name, optimize=True)
        print(f"wrote {(INPUTS / file_name).relative_to(REPO)}")
    for path in sorted(WORKFLOWS.glob("*.json")):
        out = path.with_suffix(".jpg")
        thumbnail(path.stem, json.loads(path.read_text())).save(out, quality=85, optimize=True)
        print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
