"""The pipeline a Unified Loader outputs on its IPADAPTER socket, built without loading a file twice.

It is a plain dict to whoever reads it (other packs index it); this pack builds and reads it through
``Pipeline`` (the Unified Loader FaceID then sets its "insightface" entry):

    {"ipadapter": {"file": path, "model": Adapter},
     "clipvision": {"file": path, "model": ClipVisionModel},
     "insightface": {"provider": str | None, "model": FaceAnalysis | None, ...},
     "faceid_v2": bool}  # Unified Loader FaceID only

Chained loaders pass the previous pipeline in: a model it already holds for the same file is reused.
Unchained loaders share models too, through the caches of ``load_adapter`` and ``load_clip_vision``
(weak: a model nobody holds any more is freed as usual).
"""
from __future__ import annotations

import os
import threading
import weakref

import comfy.clip_vision

from .adapter import Adapter, load_adapter
from .families import FACEID_V2_OPTIONS
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


class Pipeline(dict):
    """The Unified Loader pipeline: a dict subclass, so ``isinstance(x, dict)`` and indexing keep working
    for other packs, with typed reads for this pack's nodes."""

    @classmethod
    def of(cls, value: object) -> Pipeline | None:
        """``value`` as a pipeline (a plain dict with the same keys counts), or None when it is something else
        (an IPADAPTER from IPAdapter Model Loader)."""
        if isinstance(value, Pipeline):
            return value
        return cls(value) if isinstance(value, dict) and "ipadapter" in value else None

    @property
    def adapter(self) -> Adapter | None:
        return self["ipadapter"]["model"]

    @property
    def clip_vision(self):  # a ComfyUI ClipVisionModel, or None
        return self.get("clipvision", {}).get("model")

    def model_for(self, slot: str, path: str):
        """The model in ``slot`` ("ipadapter", "clipvision") when it was loaded from ``path``, else None."""
        entry = self.get(slot) or {}
        return entry.get("model") if _same_file(entry.get("file"), path) else None

    def insightface(self, *, raise_load_error: bool = True):
        """The bundled face analyser, or None. When the Unified Loader FaceID could not load it, its reason
        is raised here (``raise_load_error``), where a face is needed, not when the loader ran."""
        entry = self.get("insightface") or {}
        if raise_load_error and entry.get("model") is None and entry.get("error") is not None:
            raise entry["error"]
        return entry.get("model")

    def faceid_version(self, choice: str) -> str:
        """A Unified Loader FaceID preset says v1 or v2 itself; an explicit choice on the node still wins."""
        if choice == FACEID_V2_OPTIONS[0] and "faceid_v2" in self:
            return "v2" if self["faceid_v2"] else "v1"
        return choice


def adapter_and_encoder(ipadapter, clip_vision=None) -> tuple[Adapter, object]:
    """The Adapter of an IPADAPTER input (an Adapter, or a pipeline) and the encoder to use: the connected
    ``clip_vision``, else the pipeline's."""
    pipeline = Pipeline.of(ipadapter)
    if pipeline is not None:
        clip_vision = clip_vision if clip_vision is not None else pipeline.clip_vision
        ipadapter = pipeline.adapter
    if not isinstance(ipadapter, Adapter):
        raise TypeError("the ipadapter input must come from IPAdapter Model Loader or a Unified Loader")
    return ipadapter, clip_vision


def build_pipeline(resolved: ResolvedPreset, previous: dict | None = None, *,
                   faceid_v2: bool | None = None) -> Pipeline:
    """A new pipeline for ``resolved`` (the incoming one is not changed); models for files the incoming
    pipeline already holds are taken from it. Its insightface entry is carried over. ``faceid_v2``: the
    FaceID preset's version (the Unified Loader FaceID sets it; others leave the key out)."""
    if previous is not None and Pipeline.of(previous) is None:
        raise TypeError("the ipadapter input of a Unified Loader must come from another Unified Loader "
                        "(IPAdapter Model Loader outputs cannot be chained)")
    previous = Pipeline.of(previous) or Pipeline()
    adapter = previous.model_for("ipadapter", resolved.ipadapter_path) or load_adapter(resolved.ipadapter_path)
    clip = (previous.model_for("clipvision", resolved.clip_vision_path)
            or load_clip_vision(resolved.clip_vision_path))
    carried = previous.get("insightface")
    insightface = dict(carried) if isinstance(carried, dict) else {"provider": None, "model": None}
    pipeline = Pipeline(ipadapter={"file": resolved.ipadapter_path, "model": adapter},
                        clipvision={"file": resolved.clip_vision_path, "model": clip}, insightface=insightface)
    if faceid_v2 is not None:
        pipeline["faceid_v2"] = faceid_v2
    return pipeline
