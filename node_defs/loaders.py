"""Unified Loaders: pick the IP-Adapter and CLIP vision files of a preset for the connected model."""
from __future__ import annotations

from ..ipadapter.layers import model_arch
from ..ipadapter.presets import preset_names, resolve_preset
from ..ipadapter.unified import build_pipeline

_PRESET_TOOLTIP = ("Which IP-Adapter to use; the matching file for SD1.5 or SDXL is chosen from the connected "
                   "model, and the CLIP vision encoder is found in models/clip_vision by its tensors (any name).")
_CHAIN = ("IPADAPTER", {"tooltip": "Chain Unified Loaders through this input: files already loaded upstream "
                                   "are reused, not loaded again."})


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

    def load_models(self, model, preset, ipadapter=None):
        resolved = resolve_preset(preset, model_arch(model))
        return (model, build_pipeline(resolved, ipadapter))


class IPAdapterUnifiedLoaderCommunity(IPAdapterUnifiedLoader):
    CATEGORY = "ipadapter/loaders"
    LOADER = "community"


NODES = {
    "IPAdapterUnifiedLoader": (IPAdapterUnifiedLoader, "IPAdapter Unified Loader"),
    "IPAdapterUnifiedLoaderCommunity": (IPAdapterUnifiedLoaderCommunity, "IPAdapter Unified Loader Community"),
}
