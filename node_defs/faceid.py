"""FaceID nodes: the FaceID apply nodes, the InsightFace and Unified FaceID loaders, the FaceID LoRA, face embeds.

New in this pack (after the old inputs, optional): ``faceid_version`` (FaceID Plus v1/v2 chosen
explicitly; the default reads the file name as the old extension did), ``face_embeds`` (skip insightface)
and ``face_selection`` (first or largest face). New nodes: IPAdapter Face Embeds (detect once, reuse),
Save / Load Face Embeds, and IPAdapter FaceID LoRA (the LoRA stored inside the FaceID file).
"""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..ipadapter import faceid, insightface_glue, lora, presets, unified
from ..ipadapter.families import FACEID_V2_OPTIONS
from ..ipadapter.layers import model_arch
from .common import (ATTN_MASK, CLIP_VISION, COMBINE, END_AT, IMAGE_NEGATIVE, IPADAPTER, MODEL, SCALING, START_AT,
                     WEIGHT_TYPE, unpack, weight_input)

INSIGHTFACE = ("INSIGHTFACE", {"tooltip": "From IPAdapter InsightFace Loader: detects the face and computes its embedding."})
FACE_EMBEDS = ("FACE_EMBEDS", {"tooltip": "Precomputed face embeddings (IPAdapter Face Embeds or Load Face Embeds); "
                                          "when connected, insightface is not needed and `image` is taken as the face crop(s)."})
FACEID_VERSION = (list(FACEID_V2_OPTIONS), {
    "default": FACEID_V2_OPTIONS[0],
    "tooltip": "FaceID Plus v1 or v2 (the files have identical tensors). 'auto from file name': v2 when the name "
               "contains 'plusv2', as the old extension decided."})
FACE_SELECTION = (list(faceid.FACE_SELECTIONS), {
    "tooltip": "Which face when an image holds several: the detector's first (best-scoring) one, or the largest."})
WEIGHT_FACEIDV2 = ("FLOAT", {"default": 1.0, "min": -1, "max": 5.0, "step": 0.05,
                             "tooltip": "FaceID Plus v2 (and Kolors): strength of the CLIP face-structure branch "
                                        "added to the identity tokens. Ignored by other FaceID models."})
WEIGHT_KOLORS = ("FLOAT", {"default": 1.0, "min": -1, "max": 5.0, "step": 0.05,
                           "tooltip": "Scales the Kolors UNet's encoder_hid_proj applied to the face tokens."})


def _insightface_from(ipadapter, insightface, face_embeds):
    """An explicitly connected analyser wins; else the one a Unified Loader FaceID bundled. When that
    loader could not load insightface, its reason is raised here, where a face is needed."""
    if insightface is not None or face_embeds is not None or not isinstance(ipadapter, dict):
        return insightface
    entry = ipadapter.get("insightface") or {}
    if entry.get("model") is None and entry.get("error") is not None:
        raise entry["error"]
    return entry.get("model")


def _version_from(ipadapter, faceid_version: str) -> str:
    """A Unified Loader FaceID preset says v1 or v2 itself; an explicit choice on the node still wins."""
    if faceid_version == FACEID_V2_OPTIONS[0] and isinstance(ipadapter, dict) and "faceid_v2" in ipadapter:
        return "v2" if ipadapter["faceid_v2"] else "v1"
    return faceid_version


class IPAdapterFaceID:
    CATEGORY = "ipadapter/faceid"
    RETURN_TYPES = ("MODEL", "IMAGE")
    RETURN_NAMES = ("MODEL", "face_image")
    FUNCTION = "apply_ipadapter"
    UNFOLD = False
    KOLORS = False

    @classmethod
    def INPUT_TYPES(cls):
        required = {"model": MODEL, "ipadapter": IPADAPTER, "image": (
            "IMAGE", {"tooltip": "Reference image(s) with the face; with face_embeds, the aligned face crop(s)."}),
            "weight": weight_input(-1, 3), "weight_faceidv2": WEIGHT_FACEIDV2}
        if cls.KOLORS:
            required["weight_kolors"] = WEIGHT_KOLORS
        required |= {"weight_type": WEIGHT_TYPE, "combine_embeds": COMBINE, "start_at": START_AT, "end_at": END_AT,
                     "embeds_scaling": SCALING}
        return {
            "required": required,
            "optional": {
                "image_negative": IMAGE_NEGATIVE, "attn_mask": ATTN_MASK, "clip_vision": CLIP_VISION,
                "insightface": INSIGHTFACE, "faceid_version": FACEID_VERSION, "face_embeds": FACE_EMBEDS,
                "face_selection": FACE_SELECTION,
            },
        }

    def apply_ipadapter(self, model, ipadapter, image, weight, weight_faceidv2, weight_type, combine_embeds,
                        start_at, end_at, embeds_scaling, weight_kolors=None, image_negative=None, attn_mask=None,
                        clip_vision=None, insightface=None, faceid_version=FACEID_V2_OPTIONS[0], face_embeds=None,
                        face_selection="first"):
        analyser = _insightface_from(ipadapter, insightface, face_embeds)
        faceid_version = _version_from(ipadapter, faceid_version)
        adapter, clip_vision = unpack(ipadapter, clip_vision)
        patched, face_image = faceid.apply_faceid(
            model, adapter, image=image, face_embeds=face_embeds, insightface=analyser, clip_vision=clip_vision,
            image_negative=image_negative, weight=weight, weight_faceidv2=weight_faceidv2,
            weight_kolors=weight_kolors if self.KOLORS else None, faceid_version=faceid_version,
            face_selection=face_selection, combine=combine_embeds, unfold=self.UNFOLD, weight_type=weight_type,
            start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask)
        return (patched, face_image)


class IPAdapterFaceIDBatch(IPAdapterFaceID):
    UNFOLD = True  # image i conditions latent i


class IPAdapterFaceIDKolors(IPAdapterFaceID):
    KOLORS = True


class IPAdapterInsightFaceLoader:
    CATEGORY = "ipadapter/loaders"
    RETURN_TYPES = ("INSIGHTFACE",)
    FUNCTION = "load_insightface"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "provider": (["CPU", "CUDA", "ROCM"], {"tooltip": "onnxruntime execution provider (CUDA needs onnxruntime-gpu)."}),
            "model_name": (list(faceid.INSIGHTFACE_MODELS), {
                "tooltip": "buffalo_l for the h94 FaceID models; antelopev2 for Kolors FaceID. The .onnx files go in "
                           "models/insightface/models/<name>/."}),
        }}

    def load_insightface(self, provider, model_name):
        return (faceid.load_face_analysis(model_name, provider),)


class IPAdapterUnifiedLoaderFaceID:
    CATEGORY = "ipadapter/faceid"
    RETURN_TYPES = ("MODEL", "IPADAPTER")
    RETURN_NAMES = ("MODEL", "ipadapter")
    FUNCTION = "load_models"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "SD1.5 or SDXL model; returned with the preset's FaceID LoRA applied."}),
                "preset": (presets.preset_names("faceid"), {"tooltip": "Which FaceID model to load (files found in "
                                                                       "models/ipadapter, clip_vision, loras)."}),
                "lora_strength": ("FLOAT", {"default": 0.6, "min": 0, "max": 1, "step": 0.01,
                                            "tooltip": "Strength of the FaceID LoRA the model was trained with (0: none). "
                                                       "Portrait models have no LoRA."}),
                "provider": (list(faceid.PROVIDERS), {"tooltip": "onnxruntime execution provider for insightface."}),
            },
            "optional": {"ipadapter": ("IPADAPTER", {"tooltip": "Chain from another Unified Loader to share its models."})},
        }

    def load_models(self, model, preset, lora_strength, provider, ipadapter=None):
        resolved = presets.resolve_preset(preset, model_arch(model), need_lora=False)
        pipeline = unified.build_pipeline(resolved, ipadapter)
        pipeline["faceid_v2"] = resolved.preset.faceid_v2
        pipeline["insightface"] = insightface_glue.face_analysis_entry(pipeline.get("insightface"), resolved.insightface_model, provider)
        adapter = pipeline["ipadapter"]["model"]
        # The checkpoint carries the LoRA it was trained with; the separate *_lora file is the same LoRA
        # converted, used only for files that do not carry it.
        if adapter.spec.has_lora:
            model = lora.apply_faceid_lora(model, adapter, lora_strength)
        elif resolved.lora_path is not None:
            model = lora.apply_lora_file(model, resolved.lora_path, lora_strength)
        return (model, pipeline)


class IPAdapterFaceIDLoRA:
    CATEGORY = "ipadapter/faceid"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_lora"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL, "ipadapter": IPADAPTER,
            "strength": ("FLOAT", {"default": 0.6, "min": -1, "max": 2, "step": 0.01,
                                   "tooltip": "LoRA strength (the old Unified Loader FaceID used 0.6)."}),
        }}

    def apply_lora(self, model, ipadapter, strength):
        adapter, _ = unpack(ipadapter)
        return (lora.apply_faceid_lora(model, adapter, strength),)


class IPAdapterFaceEmbeds:
    CATEGORY = "ipadapter/faceid"
    RETURN_TYPES = ("FACE_EMBEDS", "IMAGE")
    RETURN_NAMES = ("face_embeds", "face_image")
    FUNCTION = "detect"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"insightface": INSIGHTFACE, "image": ("IMAGE", {"tooltip": "One face per image is kept."})},
            "optional": {"face_selection": FACE_SELECTION,
                         "crop_size": ("INT", {"default": 224, "min": 112, "max": 1024, "step": 112,
                                               "tooltip": "Aligned crop size: 224, or 336 for Kolors FaceID."})},
        }

    def detect(self, insightface, image, face_selection="first", crop_size=224):
        faces = faceid.analyze_faces(insightface, image, crop_size=crop_size, selection=face_selection)
        return (faces, faces.crops)


class IPAdapterFaceEmbedsSave:
    CATEGORY = "ipadapter/faceid"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_embeds": FACE_EMBEDS,
            "filename_prefix": ("STRING", {"default": "face_embeds",
                                           "tooltip": f"Saved to ComfyUI's output folder as <prefix>_NNNNN{faceid.FACE_EMBEDS_SUFFIX}."}),
        }}

    def save(self, face_embeds, filename_prefix="face_embeds"):
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, folder_paths.get_output_directory())
        path = Path(folder) / f"{name}_{counter:05}{faceid.FACE_EMBEDS_SUFFIX}"
        faceid.save_face_embeds(face_embeds, path)
        return {"ui": {"text": [path.name]}}


class IPAdapterFaceEmbedsLoad:
    CATEGORY = "ipadapter/faceid"
    RETURN_TYPES = ("FACE_EMBEDS",)
    RETURN_NAMES = ("face_embeds",)
    FUNCTION = "load"

    @classmethod
    def _files(cls) -> list[str]:
        root = Path(folder_paths.get_input_directory())
        return sorted(p.relative_to(root).as_posix() for p in root.rglob(f"*{faceid.FACE_EMBEDS_SUFFIX}"))

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"face_embeds": (cls._files(), {
            "tooltip": f"A {faceid.FACE_EMBEDS_SUFFIX} file in ComfyUI's input folder (copy it there from output)."})}}

    def load(self, face_embeds):
        return (faceid.load_face_embeds(os.path.join(folder_paths.get_input_directory(), face_embeds)),)


NODES = {
    "IPAdapterFaceID": (IPAdapterFaceID, "IPAdapter FaceID"),
    "IPAAdapterFaceIDBatch": (IPAdapterFaceIDBatch, "IPAdapter FaceID Batch"),  # sic: the old key's typo
    "IPAdapterFaceIDKolors": (IPAdapterFaceIDKolors, "IPAdapter FaceID Kolors"),
    "IPAdapterInsightFaceLoader": (IPAdapterInsightFaceLoader, "IPAdapter InsightFace Loader"),
    "IPAdapterUnifiedLoaderFaceID": (IPAdapterUnifiedLoaderFaceID, "IPAdapter Unified Loader FaceID"),
    "IPAdapterFaceIDLoRA": (IPAdapterFaceIDLoRA, "IPAdapter FaceID LoRA"),
    "IPAdapterFaceEmbeds": (IPAdapterFaceEmbeds, "IPAdapter Face Embeds (InsightFace)"),
    "IPAdapterFaceEmbedsSave": (IPAdapterFaceEmbedsSave, "IPAdapter Save Face Embeds"),
    "IPAdapterFaceEmbedsLoad": (IPAdapterFaceEmbedsLoad, "IPAdapter Load Face Embeds"),
}
