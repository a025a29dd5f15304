"""Per-frame weight schedules for animations (AnimateDiff cross-fades): IPAdapter Weights and friends.

A *block* is one transition: ``frames`` weights going from the first to the last value of the
``weights`` text along a timing curve (or the values as typed, for ``custom``). With a batch of
reference images the block is repeated per image (``full batch``) or per pair of neighbouring images
(``shift batches``, ``alternate batches``), and ``image_1`` / ``image_2`` list, frame by frame, the image
each weight belongs to and the one it fades into.

Curves are those of the old extension, names included (its ``ease_in`` decelerates and ``ease_out``
accelerates, the reverse of CSS's naming; kept so saved workflows give the same numbers).
"""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import Tensor

from .errors import ScheduleError

# x runs from 0 (first frame of the transition) to 1 (last): weight = start + (end - start) * curve(x).
CURVES: dict[str, Callable[[float], float]] = {
    "linear": lambda x: x,
    "ease_in_out": lambda x: (1 - math.cos(x * math.pi)) / 2,
    "ease_in": lambda x: math.sin(x * math.pi / 2),
    "ease_out": lambda x: 1 - math.cos(x * math.pi / 2),
}
TIMINGS = ("custom", "linear", "ease_in_out", "ease_in", "ease_out", "random")
METHODS = ("full batch", "shift batches", "alternate batches")


@dataclass(frozen=True)
class Strategy:
    """The IPAdapter Weights settings; travels as a dict (``as_dict``) on the WEIGHTS_STRATEGY socket with
    the old extension's keys. ``frame_count`` is the number of reference images (0 without)."""

    weights: str = "1.0, 0.0"
    timing: str = "linear"
    frames: int = 0
    start_frame: int = 0
    end_frame: int = 9999
    add_starting_frames: int = 0
    add_ending_frames: int = 0
    method: str = "full batch"
    frame_count: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Strategy":
        if not isinstance(data, dict):
            raise ScheduleError("weights_strategy must come from an IPAdapter Weights node")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class Schedule:
    weights: list[float]
    weights_invert: list[float]
    total_frames: int
    image_1: Tensor | None
    image_2: Tensor | None


def parse_weights(text: str) -> list[float]:
    """Numbers separated by commas and/or new lines."""
    out = []
    for item in str(text).replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(float(item))
        except ValueError:
            raise ScheduleError(f"IPAdapter Weights: {item!r} is not a number; write weights separated by "
                                f"commas or new lines, e.g. '1.0, 0.0'") from None
    return out


def _rng(s: Strategy) -> random.Random:
    # "random" timing is reproducible: the same settings give the same numbers (the old node drew new
    # ones each time it ran).
    return random.Random(zlib.crc32(repr((s.weights, s.frames, s.start_frame, s.end_frame)).encode()))


def block(s: Strategy) -> list[float]:
    """The weights of one transition."""
    values = parse_weights(s.weights)
    if s.timing == "custom":
        return values or [0.0]
    if s.timing not in CURVES and s.timing != "random":
        raise ScheduleError(f"unknown timing {s.timing!r}; choose one of {', '.join(TIMINGS)}")
    start, end = (values[0], values[-1]) if values else (0.0, 1.0)
    frames = max(s.frames, 2)
    end_frame = min(s.end_frame, frames)
    if s.start_frame >= end_frame:
        raise ScheduleError(
            f"IPAdapter Weights: start_frame ({s.start_frame}) must be lower than end_frame and frames "
            f"(here {end_frame}); the transition happens between start_frame and end_frame.")
    span = end_frame - s.start_frame
    if s.timing == "random":
        rng = _rng(s)
        ramp = [rng.uniform(start, end) for _ in range(span)]
    else:
        curve = CURVES[s.timing]
        ramp = [start + (end - start) * curve(i / (span - 1) if span > 1 else 1.0) for i in range(span)]
        ramp[-1] = end  # exact, whatever the curve's rounding
    return [start] * s.start_frame + ramp + [end] * (frames - end_frame)


def _mirror(values: list[float]) -> list[float]:
    """Each value reflected within the values' own range (1 - w for weights spanning 0..1)."""
    lo, hi = min(values), max(values)
    return [hi - (w - lo) for w in values]


def _segments(method: str, count: int) -> list[tuple[int, int | None, bool]]:
    """(image_1 index, image_2 index or None, inverted block?) per repetition of the block."""
    if method == "full batch":
        return [(i, None, False) for i in range(count)]
    if count < 2:
        raise ScheduleError(f"IPAdapter Weights: '{method}' fades between images and needs at least 2 "
                            f"(got {count}); use 'full batch' for one image.")
    if method == "shift batches":
        return [(i, i + 1, False) for i in range(count - 1)]
    if method == "alternate batches":
        # image_1 always holds the even image of the pair; every second block runs the other way.
        return [(k + (k % 2), k + 1 - (k % 2), bool(k % 2)) for k in range(count - 1)]
    raise ScheduleError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def schedule(s: Strategy, image: Tensor | None = None) -> Schedule:
    """Weights per frame, their mirror (``weights_invert``) and the images per frame."""
    one = block(s)
    image_1 = image_2 = None
    if image is None:
        weights = list(one)
    else:
        segments = _segments(s.method, image.shape[0])
        inverted = _mirror(one)
        weights = [w for _, _, inv in segments for w in (inverted if inv else one)]
        idx_1 = [i for i, _, _ in segments for _ in one]
        image_1 = image[torch.tensor(idx_1, dtype=torch.long)]
        if s.method != "full batch":
            image_2 = image[torch.tensor([j for _, j, _ in segments for _ in one], dtype=torch.long)]
    # Held frames before and after: the first / last weight and image, for both image outputs.
    head, tail = max(s.add_starting_frames, 0), max(s.add_ending_frames, 0)
    weights = [weights[0]] * head + weights + [weights[-1]] * tail
    if image is not None:
        def pad(seq: Tensor) -> Tensor:
            return torch.cat([image[:1].expand(head, *image.shape[1:]), seq,
                              image[-1:].expand(tail, *image.shape[1:])])

        image_1 = pad(image_1)
        image_2 = pad(image_2) if image_2 is not None else None
    return Schedule(weights, _mirror(weights), len(weights), image_1, image_2)


def prompt_schedule(s: Strategy, prompt: str) -> str:
    """A FizzNodes-style schedule: one prompt per reference image, keyed by the frame where its
    transition starts (plus one for the held first and last frames)."""
    prompts = [p for p in prompt.split("\n") if p.strip()]
    count = s.frame_count
    if not prompts or count <= 0:
        return ""
    prompts = (prompts + [prompts[-1]] * count)[:count]
    length = len(block(s))  # frames of one transition (the old node used the frames input, wrong for custom)

    def line(frame: int, text: str) -> str:
        return '"{}": "{}",\n'.format(frame, text.replace("\\", "\\\\").replace('"', '\\"'))

    out = line(0, prompts[0]) if s.add_starting_frames > 0 else ""
    out += "".join(line(i * length + s.add_starting_frames, p) for i, p in enumerate(prompts))
    if s.add_ending_frames > 0:
        out += line(count * length + s.add_starting_frames, prompts[-1])
    return out


def combine_weights(*weights) -> list[float]:
    """Concatenate weight lists (a single float counts as a list of one)."""
    out: list[float] = []
    for w in weights:
        out += [float(x) for x in w] if isinstance(w, (list, tuple)) else [float(w)]
    return out
