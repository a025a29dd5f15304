"""The pipeline a Unified Loader outputs on its IPADAPTER socket, built without loading a file twice.

    {"ipadapter": {"file": path, "model": Adapter},
     "clipvision": {"file": path, "model": ClipVisionModel},
     "insightface": {"provider": str | None, "model": FaceAnalysis | None}}

Chained loaders pass the previous pipeline in: a model it already holds for the same file is reused.
Unchained loaders share models too, through the caches of ``load_adapter`` and ``load_clip_vision``
(weak: a model nobody holds any more is freed as usual).
"""
from __future__ import annotations

import os
import threading
import weakref

import comfy.clip_vision

from .adapter import load_adapter
from .files import file_identity
from .presets import ResolvedPreset

_clip_cache: "weakref.WeakValueDictionary[tuple, object]" = weakref.WeakValueDictionary()
_clip_lock = threading.Lock()


def load_clip_vision(path: str):
    """``comfy.clip_vision.load`` once per unchanged file while the model is in use."""
    key = file_identity(path)
    with _clip_lock:
        hit = _clip_cache.get(key)
    if hit is not None:
        return hit
    model = comfy.clip_vision.load(path)
    if model is None:
        raise ValueError(f"{os.path.basename(path)} was recognised as a CLIP vision encoder but ComfyUI could not "
                         "load it; update ComfyUI, or re-download the file (it may be damaged).")
    with _clip_lock:
        _clip_cache[key] = model
    return model


def _same_file(a: str | None, b: str) -> bool:
    return a is not None and os.path.realpath(a) == os.path.realpath(b)


def _reuse(previous: dict | None, slot: str, path: str):
    entry = (previous or {}).get(slot) or {}
    return entry.get("model") if _same_file(entry.get("file"), path) else None


def empty_pipeline() -> dict:
    return {"ipadapter": {"file": None, "model": None}, "clipvision": {"file": None, "model": None},
            "insightface": {"provider": None, "model": None}}


def build_pipeline(resolved: ResolvedPreset, previous: dict | None = None) -> dict:
    """A new pipeline dict for ``resolved`` (the incoming one is not changed); models for files the
    incoming pipeline already holds are taken from it. Its insightface entry is carried over."""
    if previous is not None and not (isinstance(previous, dict) and "ipadapter" in previous):
        raise TypeError("the ipadapter input of a Unified Loader must come from another Unified Loader "
                        "(IPAdapter Model Loader outputs cannot be chained)")
    adapter = _reuse(previous, "ipadapter", resolved.ipadapter_path) or load_adapter(resolved.ipadapter_path)
    clip = _reuse(previous, "clipvision", resolved.clip_vision_path) or load_clip_vision(resolved.clip_vision_path)
    pipeline = empty_pipeline()
    pipeline["ipadapter"] = {"file": resolved.ipadapter_path, "model": adapter}
    pipeline["clipvision"] = {"file": resolved.clip_vision_path, "model": clip}
    if previous is not None and isinstance(previous.get("insightface"), dict):
        pipeline["insightface"] = dict(previous["insightface"])
    return pipeline
