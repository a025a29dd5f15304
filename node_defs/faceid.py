"""FaceID nodes (category ipadapter/faceid): the FaceID apply nodes, the Unified Loader FaceID, the FaceID LoRA,
face embeds (detect, save, load). The InsightFace loader is with the loaders (category ipadapter/loaders).

New in this pack (after the old inputs, optional): ``faceid_version`` (FaceID Plus v1/v2 chosen
explicitly; the default reads the file name as the old extension did), ``face_embeds`` (skip insightface)
and ``face_selection`` (first or largest face). New nodes: IPAdapter Face Embeds (detect once, reuse),
Save / Load Face Embeds, and IPAdapter FaceID LoRA (the LoRA stored inside the FaceID file).
"""
from __future__ import annotations

from ..ipadapter import faceid, insightface_glue, lora, presets, unified
from ..ipadapter.families import FACEID_V2_OPTIONS
from ..ipadapter.layers import model_arch
from ..ipadapter.output_files import file_version, input_file, input_files, next_output_file
from .registry import node_table
from .specs import WEIGHT_UP_TO_3, FromSpecs

_CATEGORY = "ipadapter/faceid"
_FACE_IMAGE = ("image", {"tooltip": "Reference image(s) with the face; with face_embeds, the aligned face crop(s)."})


class IPAdapterFaceID(FromSpecs):
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("MODEL", "IMAGE")
    RETURN_NAMES = ("MODEL", "face_image")
    FUNCTION = "apply_ipadapter"
    REQUIRED = ("model", "ipadapter", _FACE_IMAGE, WEIGHT_UP_TO_3, "weight_faceidv2", "weight_type",
                "combine_embeds", "start_at", "end_at", "embeds_scaling")
    OPTIONAL = ("image_negative", "attn_mask", "clip_vision", "insightface", "faceid_version", "face_embeds",
                "face_selection", "weight_curve")
    UNFOLD = False
    KOLORS = False

    def apply_ipadapter(self, model, ipadapter, image, weight, weight_faceidv2, weight_type, combine_embeds,
                        start_at, end_at, embeds_scaling, weight_kolors=None, image_negative=None, attn_mask=None,
                        clip_vision=None, insightface=None, faceid_version=FACEID_V2_OPTIONS[0], face_embeds=None,
                        face_selection="first", weight_curve=None):
        # An explicitly connected analyser or face_embeds wins; else what a Unified Loader FaceID bundled.
        pipeline = unified.Pipeline.of(ipadapter)
        analyser = insightface
        if pipeline is not None:
            if insightface is None and face_embeds is None:
                analyser = pipeline.insightface()
            faceid_version = pipeline.faceid_version(faceid_version)
        adapter, clip_vision = unified.adapter_and_encoder(ipadapter, clip_vision)
        patched, face_image = faceid.apply_faceid(
            model, adapter, image=image, face_embeds=face_embeds, insightface=analyser, clip_vision=clip_vision,
            image_negative=image_negative, weight=weight, weight_faceidv2=weight_faceidv2,
            weight_kolors=weight_kolors if self.KOLORS else None, faceid_version=faceid_version,
            face_selection=face_selection, combine=combine_embeds, unfold=self.UNFOLD, weight_type=weight_type,
            start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask,
            weight_curve=weight_curve)
        return (patched, face_image)


class IPAdapterFaceIDBatch(IPAdapterFaceID):
    NODE_KEY = "IPAAdapterFaceIDBatch"  # the old extension's key
    UNFOLD = True  # image i conditions latent i


class IPAdapterFaceIDKolors(IPAdapterFaceID):
    REQUIRED = IPAdapterFaceID.REQUIRED[:5] + ("weight_kolors",) + IPAdapterFaceID.REQUIRED[5:]
    KOLORS = True


class IPAdapterUnifiedLoaderFaceID:
    CATEGORY = _CATEGORY
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
                "provider": (list(insightface_glue.PROVIDERS), {"tooltip": "onnxruntime execution provider for insightface."}),
            },
            "optional": {"ipadapter": ("IPADAPTER", {"tooltip": "Chain from another Unified Loader to share its models."})},
        }

    @classmethod
    def IS_CHANGED(cls, preset, **_):
        return presets.preset_version(preset, need_lora=False)

    def load_models(self, model, preset, lora_strength, provider, ipadapter=None):
        presets.refuse_transformer_model(model, preset)
        resolved = presets.resolve_preset(preset, model_arch(model), need_lora=False)
        pipeline = unified.build_pipeline(resolved, ipadapter, faceid_v2=resolved.preset.faceid_v2)
        pipeline["insightface"] = insightface_glue.face_analysis_entry(pipeline.get("insightface"),
                                                                       resolved.insightface_model, provider)
        adapter = pipeline.adapter
        # The checkpoint carries the LoRA it was trained with; the separate *_lora file is the same LoRA
        # converted, used only for files that do not carry it.
        if adapter.spec.has_lora:
            model = lora.apply_faceid_lora(model, adapter, lora_strength)
        elif resolved.lora_path is not None:
            model = lora.apply_lora_file(model, resolved.lora_path, lora_strength)
        return (model, pipeline)


class IPAdapterFaceIDLoRA(FromSpecs):
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_lora"
    REQUIRED = ("model", "ipadapter", ("strength", ("FLOAT", {
        "default": 0.6, "min": -1, "max": 2, "step": 0.01,
        "tooltip": "LoRA strength (the old Unified Loader FaceID used 0.6)."})))

    def apply_lora(self, model, ipadapter, strength):
        adapter, _ = unified.adapter_and_encoder(ipadapter)
        return (lora.apply_faceid_lora(model, adapter, strength),)


class IPAdapterFaceEmbeds(FromSpecs):
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("FACE_EMBEDS", "IMAGE")
    RETURN_NAMES = ("face_embeds", "face_image")
    FUNCTION = "detect"
    REQUIRED = ("insightface", ("image", {"tooltip": "One face per image is kept."}))
    OPTIONAL = ("face_selection", ("crop_size", ("INT", {
        "default": 224, "min": 112, "max": 1024, "step": 112,
        "tooltip": "Aligned crop size: 224, or 336 for Kolors FaceID."})))

    def detect(self, insightface, image, face_selection="first", crop_size=224):
        faces = faceid.analyze_faces(insightface, image, crop_size=crop_size, selection=face_selection)
        return (faces, faces.crops)


class IPAdapterFaceEmbedsSave(FromSpecs):
    CATEGORY = _CATEGORY
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    REQUIRED = ("face_embeds", ("filename_prefix", ("STRING", {
        "default": "face_embeds",
        "tooltip": f"Saved to ComfyUI's output folder as <prefix>_NNNNN{faceid.FACE_EMBEDS_SUFFIX}."})))

    def save(self, face_embeds, filename_prefix="face_embeds"):
        out = next_output_file(filename_prefix, faceid.FACE_EMBEDS_SUFFIX)
        faceid.save_face_embeds(face_embeds, out.path)
        return {"ui": {"text": [out.filename]}}


class IPAdapterFaceEmbedsLoad:
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("FACE_EMBEDS",)
    RETURN_NAMES = ("face_embeds",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"face_embeds": (input_files(faceid.FACE_EMBEDS_SUFFIX, posix=True), {
            "tooltip": f"A {faceid.FACE_EMBEDS_SUFFIX} file in ComfyUI's input folder (copy it there from output)."})}}

    @classmethod
    def IS_CHANGED(cls, face_embeds):
        try:
            return file_version(input_file(face_embeds, "IPAdapter Load Face Embeds", faceid.FACE_EMBEDS_SUFFIX))
        except (OSError, ValueError):
            return ""  # load() raises the clear error

    def load(self, face_embeds):
        return (faceid.load_face_embeds(input_file(face_embeds, "IPAdapter Load Face Embeds", faceid.FACE_EMBEDS_SUFFIX)),)


NODES = node_table(IPAdapterFaceID, IPAdapterFaceIDBatch, IPAdapterFaceIDKolors, IPAdapterUnifiedLoaderFaceID,
                   IPAdapterFaceIDLoRA, IPAdapterFaceEmbeds, IPAdapterFaceEmbedsSave, IPAdapterFaceEmbedsLoad)
