"""Weight curves over sampling: a multiplier of an adapter's per-layer weights that changes with progress.

A curve is a list of keyframes (progress 0..1, multiplier) joined by linear, ease or step interpolation.
During sampling it is read from the current sigma once per UNet call (``BoundCurve.at``): the keyframes'
progress values are turned into sigmas with the model's own ``percent_to_sigma`` when the adapter is
applied, so a keyframe switches on exactly the step where ``start_at`` / ``end_at`` at that progress would
switch, with every sampler and scheduler. Between keyframes the fraction is read from a table of the same
mapping, inverted.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable

# f runs from 0 (at the left keyframe) to 1 (at the right one): value = left + (right - left) * f'.
INTERPOLATIONS: dict[str, Callable[[float], float]] = {
    "linear": lambda f: f,
    "ease": lambda f: (1 - math.cos(f * math.pi)) / 2,  # slow at both keyframes
    "step": lambda f: 0.0,  # hold the left keyframe's value up to the next keyframe
}

PRESETS: dict[str, tuple[tuple[float, float], ...]] = {
    "fade out": ((0.0, 1.0), (1.0, 0.0)),  # strong early (composition), weak late (details from the prompt)
    "fade in": ((0.0, 0.0), (1.0, 1.0)),
    "bell": ((0.0, 0.0), (0.5, 1.0), (1.0, 0.0)),
    "constant": ((0.0, 1.0),),
}
CUSTOM = "custom"
CURVE_PRESETS = tuple(PRESETS) + (CUSTOM,)


class CurveError(ValueError):
    """A weight curve that cannot be read; the message names the input and gives an example."""


@dataclass(frozen=True)
class WeightCurve:
    """Keyframes sorted by progress (unique), and how to interpolate between them."""

    keyframes: tuple[tuple[float, float], ...]
    interpolation: str = "linear"

    def __post_init__(self):
        if not self.keyframes:
            raise CurveError("a weight curve needs at least one keyframe, e.g. '0:1, 1:0'")
        if self.interpolation not in INTERPOLATIONS:
            raise CurveError(f"unknown interpolation {self.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        progress = [p for p, _ in self.keyframes]
        if progress != sorted(set(progress)):
            raise CurveError("weight curve keyframes must have distinct progress values in increasing order")
        if not all(0.0 <= p <= 1.0 for p in progress):
            raise CurveError("weight curve keyframes need a progress between 0 and 1")

    def segment_value(self, i: int, fraction: float) -> float:
        """The value between keyframe i and i + 1 at ``fraction`` (0..1) of the way."""
        left, right = self.keyframes[i][1], self.keyframes[i + 1][1]
        return left + (right - left) * INTERPOLATIONS[self.interpolation](fraction)

    def at_progress(self, p: float) -> float:
        """The multiplier at sampling progress ``p`` (0: first step, 1: end); constant beyond the ends."""
        progress = [k for k, _ in self.keyframes]
        i = bisect.bisect_right(progress, p) - 1
        if i < 0:
            return self.keyframes[0][1]
        if i >= len(progress) - 1:
            return self.keyframes[-1][1]
        return self.segment_value(i, (p - progress[i]) / (progress[i + 1] - progress[i]))


def parse_keyframes(text: str) -> tuple[tuple[float, float], ...]:
    """``progress:multiplier`` pairs separated by commas or new lines, e.g. ``0:1, 0.6:0.3, 1:0``; sorted."""
    pairs = []
    for raw in str(text).replace("\n", ",").split(","):
        entry = raw.strip()
        if not entry:
            continue
        p, sep, v = entry.partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append((float(p), float(v)))
        except ValueError:
            raise CurveError(f"IPAdapter Weight Curve: keyframe {entry!r} is not progress:multiplier; write e.g. "
                             "'0:1, 0.5:0.4, 1:0' (progress 0..1 from the first step to the last)") from None
    pairs.sort()
    return tuple(pairs)


def make_curve(preset: str, interpolation: str = "linear", keyframes: str = "") -> WeightCurve:
    """The node's curve: a preset's keyframes, or with ``custom`` the typed ones."""
    if preset == CUSTOM:
        return WeightCurve(parse_keyframes(keyframes), interpolation)
    if preset not in PRESETS:
        raise CurveError(f"unknown weight curve preset {preset!r}; choose one of {', '.join(CURVE_PRESETS)}")
    return WeightCurve(PRESETS[preset], interpolation)


# --------------------------------------------------------------------------------------------------
# Reading a curve from sigma
# --------------------------------------------------------------------------------------------------
_TABLE_POINTS = 1000  # progress resolution of the sigma -> progress table (1/1000 of sampling)


class SigmaProgress:
    """sigma -> sampling progress, the inverse of the model's ``percent_to_sigma`` (a monotone table)."""

    def __init__(self, model_sampling):
        percents = [i / _TABLE_POINTS for i in range(1, _TABLE_POINTS)]
        sigmas = [float(model_sampling.percent_to_sigma(p)) for p in percents]
        # Ascending sigma for bisect (progress falls as sigma rises); log space, where schedules are smooth.
        self._log_sigmas = [math.log(max(s, 1e-30)) for s in reversed(sigmas)]
        self._percents = list(reversed(percents))

    def __call__(self, sigma: float) -> float:
        x = math.log(max(sigma, 1e-30))
        j = bisect.bisect_left(self._log_sigmas, x)
        if j <= 0:  # beyond the table's ends (the first and last 1/1000 of sampling): clamp
            return self._percents[0]
        if j >= len(self._log_sigmas):
            return self._percents[-1]
        x0, x1 = self._log_sigmas[j - 1], self._log_sigmas[j]
        p0, p1 = self._percents[j - 1], self._percents[j]
        return p0 + (p1 - p0) * ((x - x0) / (x1 - x0) if x1 > x0 else 0.0)


class BoundCurve:
    """A curve tied to one model's sampling: ``at(sigma)`` is the multiplier for that UNet call.

    The last (sigma, value) is kept, so the 16-70 attention layers of one UNet call evaluate it once.
    """

    def __init__(self, curve: WeightCurve, model_sampling):
        self.curve = curve
        # Keyframe boundaries as sigmas, computed like start_at / end_at: the switch falls on the same step.
        self._key_sigmas = [float(model_sampling.percent_to_sigma(p)) for p, _ in curve.keyframes]
        smooth = curve.interpolation != "step" and len(curve.keyframes) > 1
        self._progress = SigmaProgress(model_sampling) if smooth else None
        self._last: tuple[float, float] | None = None

    def at(self, sigma: float | None) -> float:
        if sigma is None:
            return 1.0
        last = self._last
        if last is not None and last[0] == sigma:
            return last[1]
        value = self._evaluate(sigma)
        self._last = (sigma, value)
        return value

    def _evaluate(self, sigma: float) -> float:
        keys = self._key_sigmas
        # The last keyframe reached: the largest i with keys[i] >= sigma (keys fall as progress rises).
        i = -1
        while i + 1 < len(keys) and keys[i + 1] >= sigma:
            i += 1
        frames = self.curve.keyframes
        if i < 0:
            return frames[0][1]
        if i >= len(frames) - 1:
            return frames[-1][1]
        if self._progress is None:
            return self.curve.segment_value(i, 0.0)
        (p0, _), (p1, _) = frames[i], frames[i + 1]
        fraction = min(max((self._progress(sigma) - p0) / (p1 - p0), 0.0), 1.0)
        return self.curve.segment_value(i, fraction)


def bind_curve(curve: WeightCurve | None, model_sampling) -> BoundCurve | None:
    return None if curve is None else BoundCurve(curve, model_sampling)
