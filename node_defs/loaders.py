"""Loaders (category ipadapter/loaders, and the Unified Loader the old extension listed under ipadapter):
IPAdapter Model Loader, the Unified Loaders (a preset's files for the connected model) and InsightFace.
The Unified Loader FaceID, listed under ipadapter/faceid, is in node_defs/faceid.py."""
from __future__ import annotations

import folder_paths

from ..ipadapter import insightface_glue
from ..ipadapter.adapter import load_adapter
from ..ipadapter.layers import model_arch
from ..ipadapter.output_files import file_version
from ..ipadapter.presets import preset_names, preset_version, refuse_transformer_model, resolve_preset
from ..ipadapter.unified import build_pipeline
from .registry import node_table
from .specs import FromSpecs

_PRESET_TOOLTIP = ("Which IP-Adapter to use; the matching file for SD1.5 or SDXL is chosen from the connected "
                   "model, and the CLIP vision encoder is found in models/clip_vision by its tensors (any name).")
_CHAIN = ("IPADAPTER", {"tooltip": "Chain Unified Loaders through this input: files already loaded upstream "
                                   "are reused, not loaded again."})


class IPAdapterModelLoader:
    CATEGORY = "ipadapter/loaders"
    RETURN_TYPES = ("IPADAPTER",)
    FUNCTION = "load_ipadapter_model"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ipadapter_file": (folder_paths.get_filename_list("ipadapter"), {
            "tooltip": "An IP-Adapter checkpoint in models/ipadapter; its family is read from its tensors."})}}

    @classmethod
    def IS_CHANGED(cls, ipadapter_file, **_):
        # Run again when the file is rewritten (ComfyUI would serve the cached adapter otherwise).
        return file_version(folder_paths.get_full_path("ipadapter", ipadapter_file) or "")

    def load_ipadapter_model(self, ipadapter_file):
        return (load_adapter(folder_paths.get_full_path_or_raise("ipadapter", ipadapter_file)),)


class IPAdapterUnifiedLoader:
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("MODEL", "IPADAPTER")
    RETURN_NAMES = ("model", "ipadapter")
    FUNCTION = "load_models"
    LOADER = "standard"  # which presets of presets.PRESETS this node offers

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The SD1.5 or SDXL model; passed through unchanged."}),
                "preset": (preset_names(cls.LOADER), {"tooltip": _PRESET_TOOLTIP}),
            },
            "optional": {"ipadapter": _CHAIN},
        }

    @classmethod
    def IS_CHANGED(cls, preset, **_):
        return preset_version(preset)

    def load_models(self, model, preset, ipadapter=None):
        refuse_transformer_model(model, preset)
        resolved = resolve_preset(preset, model_arch(model))
        return (model, build_pipeline(resolved, ipadapter))


class IPAdapterUnifiedLoaderCommunity(IPAdapterUnifiedLoader):
    CATEGORY = "ipadapter/loaders"
    LOADER = "community"


class IPAdapterInsightFaceLoader(FromSpecs):
    CATEGORY = "ipadapter/loaders"
    RETURN_TYPES = ("INSIGHTFACE",)
    FUNCTION = "load_insightface"
    REQUIRED = (
        ("provider", (["CPU", "CUDA", "ROCM"], {
            "tooltip": "onnxruntime execution provider (CUDA needs onnxruntime-gpu)."})),
        ("model_name", (list(insightface_glue.INSIGHTFACE_MODELS), {
            "tooltip": "buffalo_l for the h94 FaceID models; antelopev2 for Kolors FaceID. The .onnx files go in "
                       "models/insightface/models/<name>/."})),
    )
    OPTIONAL = (
        ("backend", (list(insightface_glue.FACE_BACKENDS), {
            "default": "auto",
            "tooltip": "What runs the face models: the insightface package, or this pack's own onnxruntime "
                       "pipeline (needs only onnxruntime; same results). auto: insightface when installed, "
                       "else onnxruntime."})),
    )

    def load_insightface(self, provider, model_name, backend="auto"):
        return (insightface_glue.load_face_analysis(model_name, provider, backend=backend),)


NODES = node_table(IPAdapterModelLoader, IPAdapterUnifiedLoader, IPAdapterUnifiedLoaderCommunity,
                   IPAdapterInsightFaceLoader)
