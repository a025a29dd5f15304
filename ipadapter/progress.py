"""ComfyUI progress and interrupt for the pack's long loops (chunked and tiled encodes, face detection over a
batch, the layer sweep): the bar the frontend draws on the running node, and the user's cancel honoured
between steps."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

import comfy.model_management as mm
import comfy.utils

T = TypeVar("T")


def tracked(items: Sequence[T]) -> Iterator[T]:
    """Yield ``items``; before each, stop if the user interrupted (ComfyUI's InterruptProcessingException);
    after each, advance a ComfyUI progress bar. One item draws no bar: there is nothing to show."""
    bar = comfy.utils.ProgressBar(len(items)) if len(items) > 1 else None
    for item in items:
        mm.throw_exception_if_processing_interrupted()
        yield item
        if bar is not None:
            bar.update(1)
