"""Write example_workflows/*.json: the UI-format workflows ComfyUI's frontend loads by drag-and-drop.

The JSON files are committed; this script documents how they were made and remakes them:

    .venv/bin/python dev/make_example_workflows.py [--check]

``--check`` writes nothing and exits 1 when a committed file differs from what the script makes.
Models are referenced by their canonical download names; reference images by the names below, which
the pack copies into ComfyUI's input/ folder when it loads (example_workflows/input/, drawn by
dev/make_example_assets.py; never over a user's file), so a template runs with one click of Run. Widget values follow
the old ComfyUI_IPAdapter_plus interface (harness.workflow_builder), so the files load in both packs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from harness import REPO_ROOT as REPO
from harness.workflow_builder import Node, Output, Workflow, interface_nodes, schema_for  # noqa: F401 (tests use it)

OUT_DIR = REPO / "example_workflows"
SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
PLUS_SD15 = "ip-adapter-plus_sd15.safetensors"
PLUS_SDXL = "ip-adapter-plus_sdxl_vit-h.safetensors"
FACEID_PLUSV2 = "ip-adapter-faceid-plusv2_sd15.bin"
FACEID_PLUSV2_LORA = "ip-adapter-faceid-plusv2_sd15_lora.safetensors"
REFERENCE = "ipadapter_reference.png"  # the main reference image
REFERENCE_2 = "ipadapter_reference_2.png"  # a second one, where a workflow mixes two
FACE = "ipadapter_face.png"  # a portrait for FaceID
SAVED_EMBEDS = "ipadapter_reference.ipadpt"  # what ipadapter_embeds_save.json writes, moved to input/
OWN_IMAGES = ("The reference images are the pack's own drawings, put in ComfyUI's input folder: pick yours in "
              "Load Image.")
NEGATIVE_TEXT = "blurry, lowres, watermark"
SIZE = {SD15: 512, SDXL: 1024}


class Graph:
    """One workflow with the parts every example shares: checkpoint, prompts, latent, sampler, save."""

    def __init__(self, info: str, checkpoint: str = SD15, positive: str = "a portrait photo, best quality",
                 schemas=schema_for):
        self.wf = Workflow(info, schemas)
        self.ckpt = self.wf.node("CheckpointLoaderSimple", ckpt_name=checkpoint)
        self.positive = self.text(positive)
        self.negative = self.text(NEGATIVE_TEXT)
        self.latent = self.wf.node("EmptyLatentImage", width=SIZE[checkpoint], height=SIZE[checkpoint], batch_size=1)

    def node(self, kind: str, **values) -> Node:
        return self.wf.node(kind, **values)

    def text(self, text: str) -> Node:
        return self.wf.node("CLIPTextEncode", text=text, clip=self.ckpt.out("CLIP"))

    def image(self, name: str = REFERENCE) -> Node:
        return self.wf.node("LoadImage", image=name)

    def render(self, model: Output, prefix: str, positive: Output | None = None, latent: Output | None = None,
               seed: int = 42) -> Node:
        """KSampler -> VAE Decode -> Save Image; returns the Save Image node."""
        sampled = self.wf.node(
            "KSampler", model=model, positive=positive or self.positive.out(), negative=self.negative.out(),
            latent_image=latent or self.latent.out(), seed=seed, steps=30, cfg=6.5, sampler_name="dpmpp_2m",
            scheduler="karras", denoise=1.0)
        decoded = self.wf.node("VAEDecode", samples=sampled.out(), vae=self.ckpt.out("VAE"))
        return self.wf.node("SaveImage", images=decoded.out(), filename_prefix=prefix)


def common(weight=0.8, weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0,
           embeds_scaling="V only") -> dict:
    """The apply nodes' shared widgets, with the old examples' usual values."""
    return dict(weight=weight, weight_type=weight_type, combine_embeds=combine_embeds, start_at=start_at,
                end_at=end_at, embeds_scaling=embeds_scaling)


def loaders(g: Graph, ipadapter_file: str = PLUS_SD15) -> tuple[Node, Node]:
    return g.node("IPAdapterModelLoader", ipadapter_file=ipadapter_file), g.node("CLIPVisionLoader", clip_name=VIT_H)


# --------------------------------------------------------------------------------------------------
# The workflows
# --------------------------------------------------------------------------------------------------
def simple() -> Workflow:
    # Node ids are relied on by tests/test_nodes.py and dev/demo.py: 4 Load Image, 6 the adapter, 12 Save Image.
    wf = Workflow("Basic image prompt: an SD1.5 checkpoint, IP-Adapter Plus and the CLIP ViT-H encoder. " +
                  OWN_IMAGES)
    ckpt = wf.node("CheckpointLoaderSimple", ckpt_name=SD15)
    ipadapter = wf.node("IPAdapterModelLoader", ipadapter_file=PLUS_SD15)
    clip_vision = wf.node("CLIPVisionLoader", clip_name=VIT_H)
    image = wf.node("LoadImage", image=REFERENCE)
    prepped = wf.node("PrepImageForClipVision", image=image.out("IMAGE"), interpolation="LANCZOS",
                      crop_position="center", sharpening=0.0)
    model = wf.node("IPAdapterAdvanced", model=ckpt.out("MODEL"), ipadapter=ipadapter.out(), image=prepped.out(),
                    clip_vision=clip_vision.out(), **common())
    positive = wf.node("CLIPTextEncode", text="a portrait photo, best quality", clip=ckpt.out("CLIP"))
    negative = wf.node("CLIPTextEncode", text="blurry, lowres", clip=ckpt.out("CLIP"))
    latent = wf.node("EmptyLatentImage", width=512, height=512, batch_size=1)
    sampled = wf.node("KSampler", model=model.out(), positive=positive.out(), negative=negative.out(),
                      latent_image=latent.out(), seed=42, steps=20, cfg=6.0, sampler_name="dpmpp_2m",
                      scheduler="karras", denoise=1.0)
    decoded = wf.node("VAEDecode", samples=sampled.out(), vae=ckpt.out("VAE"))
    wf.node("SaveImage", images=decoded.out(), filename_prefix="ipadapter_simple")
    return wf


def advanced() -> Workflow:
    g = Graph("The Unified Loader picks the adapter and its CLIP vision encoder from a preset (PLUS: "
              f"{PLUS_SD15} with {VIT_H}, found by their download names). IPAdapter Advanced mixes two "
              "reference images (combine_embeds: average), eases the weight in and out over the UNet's layers, "
              "stops at 80% of the steps and scales keys and values (K+V). " + OWN_IMAGES)
    unified = g.node("IPAdapterUnifiedLoader", model=g.ckpt.out("MODEL"), preset="PLUS (high strength)")
    both = g.node("ImageBatch", image1=g.image().out("IMAGE"), image2=g.image(REFERENCE_2).out("IMAGE"))
    model = g.node("IPAdapterAdvanced", model=unified.out("model"), ipadapter=unified.out("ipadapter"),
                   image=both.out(), **common(0.8, "ease in-out", "average", 0.0, 0.8, "K+V"))
    g.render(model.out(), "ipadapter_advanced")
    return g.wf


WEIGHT_TYPES = ("linear", "ease in-out", "style transfer", "composition")


def weight_types() -> Workflow:
    g = Graph("One reference, four weight types side by side (same seed): linear (every layer alike), ease "
              "in-out (strongest in the middle layers), style transfer (style layers only) and composition "
              "(layout layers only). " + OWN_IMAGES)
    ipadapter, clip_vision = loaders(g)
    image = g.image()
    for weight_type in WEIGHT_TYPES:
        model = g.node("IPAdapterAdvanced", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(),
                       image=image.out("IMAGE"), clip_vision=clip_vision.out(), **common(0.8, weight_type))
        g.render(model.out(), "ipadapter_weight_types_" + weight_type.replace(" ", "_").replace("-", "_"))
    return g.wf


def combine_embeds() -> Workflow:
    g = Graph("Two ways to mix two references. Top: IPAdapter Advanced with both images and combine_embeds = "
              "norm average. Bottom: one IPAdapter Encoder per image, each with its own weight (1.0 and 0.6), "
              "merged by IPAdapter Combine Embeds (average) and applied with IPAdapter Embeds. " + OWN_IMAGES)
    ipadapter, clip_vision = loaders(g)
    first, second = g.image(), g.image(REFERENCE_2)
    both = g.node("ImageBatch", image1=first.out("IMAGE"), image2=second.out("IMAGE"))
    mixed = g.node("IPAdapterAdvanced", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(), image=both.out(),
                   clip_vision=clip_vision.out(), **common(0.8, combine_embeds="norm average"))
    g.render(mixed.out(), "ipadapter_combine_norm_average")
    encoded_1 = g.node("IPAdapterEncoder", ipadapter=ipadapter.out(), image=first.out("IMAGE"), weight=1.0,
                       clip_vision=clip_vision.out())
    encoded_2 = g.node("IPAdapterEncoder", ipadapter=ipadapter.out(), image=second.out("IMAGE"), weight=0.6,
                       clip_vision=clip_vision.out())
    combined = g.node("IPAdapterCombineEmbeds", embed1=encoded_1.out("pos_embed"), embed2=encoded_2.out("pos_embed"),
                      method="average")
    weighted = g.node("IPAdapterEmbeds", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(),
                      pos_embed=combined.out(), neg_embed=encoded_1.out("neg_embed"), weight=0.8,
                      weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    g.render(weighted.out(), "ipadapter_combine_weighted_embeds")
    return g.wf


def negative_noise() -> Workflow:
    g = Graph("The negative image is what the image prompt steers away from. Top: IPAdapter Noise (fade, "
              "strength 0.3, blur 5) made from the reference itself, which often cleans up artefacts the "
              f"reference would carry over. Bottom: another picture ({REFERENCE_2}) as the negative. " +
              OWN_IMAGES)
    ipadapter, clip_vision = loaders(g)
    image = g.image()
    noise = g.node("IPAdapterNoise", type="fade", strength=0.3, blur=5, image_optional=image.out("IMAGE"))
    for negative, prefix in ((noise.out(), "ipadapter_negative_noise"),
                             (g.image(REFERENCE_2).out("IMAGE"), "ipadapter_negative_image")):
        model = g.node("IPAdapterAdvanced", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(),
                       image=image.out("IMAGE"), image_negative=negative, clip_vision=clip_vision.out(),
                       **common(0.8))
        g.render(model.out(), prefix)
    return g.wf


def style_composition() -> Workflow:
    g = Graph("Style from one image, composition from another (SDXL only): IPAdapter Style & Composition SDXL "
              f"with {PLUS_SDXL} and the ViT-H encoder: {REFERENCE} gives the style, {REFERENCE_2} the "
              "composition. " + OWN_IMAGES, checkpoint=SDXL, positive="a cat in a garden, best quality")
    ipadapter, clip_vision = loaders(g, PLUS_SDXL)
    model = g.node("IPAdapterStyleComposition", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(),
                   image_style=g.image().out("IMAGE"), image_composition=g.image(REFERENCE_2).out("IMAGE"),
                   weight_style=1.2, weight_composition=1.0, expand_style=False, combine_embeds="average",
                   start_at=0.0, end_at=1.0, embeds_scaling="V only", clip_vision=clip_vision.out())
    g.render(model.out(), "ipadapter_style_composition")
    return g.wf


def precise_style_composition() -> Workflow:
    g = Graph("Precise style and composition, chained: IPAdapter Precise Style Transfer (style_boost 2.0) takes "
              f"the style of {REFERENCE}, then IPAdapter Precise Composition (composition_boost 0.35) the "
              f"layout of {REFERENCE_2}. The precise variants also push the other aspect away, so less of "
              "the reference's content leaks in. Works on SDXL (shown) and SD1.5.",
              checkpoint=SDXL, positive="a cat in a garden, best quality")
    ipadapter, clip_vision = loaders(g, PLUS_SDXL)
    styled = g.node("IPAdapterPreciseStyleTransfer", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(),
                    image=g.image().out("IMAGE"), weight=1.0, style_boost=2.0, combine_embeds="concat",
                    start_at=0.0, end_at=1.0, embeds_scaling="V only", clip_vision=clip_vision.out())
    composed = g.node("IPAdapterPreciseComposition", model=styled.out(), ipadapter=ipadapter.out(),
                      image=g.image(REFERENCE_2).out("IMAGE"), weight=0.8, composition_boost=0.35,
                      combine_embeds="concat", start_at=0.0, end_at=1.0,
                      embeds_scaling="K+mean(V) w/ C penalty", clip_vision=clip_vision.out())
    g.render(composed.out(), "ipadapter_precise_style_composition")
    return g.wf


# SD1.5 transformer indices: 0-5 input blocks, 6 middle, 7-15 output; 4 and 5 carry most of the layout.
LAYER_WEIGHTS = "0:0, 1:0, 2:0, 3:0, 4:0.25, 5:1.0, 6:0, 7:0, 8:0, 9:0.5, 10:0.5, 11:0.5, 12:0, 13:0, 14:0, 15:0"


def layer_weights() -> Workflow:
    g = Graph("Per-layer weights with IPAdapter Mad Scientist: layer_weights lists 'index:weight' pairs "
              "(SD1.5: 0-5 input blocks, 6 middle, 7-15 output; SDXL: 0-10); layers not listed get 0 and "
              "weight multiplies them all. This one keeps the layout layers (4, 5) and some of the output. " +
              OWN_IMAGES)
    ipadapter, clip_vision = loaders(g)
    model = g.node("IPAdapterMS", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(),
                   image=g.image().out("IMAGE"), weight=1.0, weight_faceidv2=1.0, weight_type="linear",
                   combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                   layer_weights=LAYER_WEIGHTS, clip_vision=clip_vision.out())
    g.render(model.out(), "ipadapter_layer_weights")
    return g.wf


def layer_sweep() -> Workflow:
    g = Graph("Which layers carry what: IPAdapter Layer Sweep gives a list of models (the adapter on one layer "
              "only, for every layer, plus no adapter and all layers as references), so the one KSampler renders "
              "each; IPAdapter Sweep Grid lays the pictures out with their labels. Copy a label's layers into "
              "IPAdapter Layer Weights or Mad Scientist's layer_weights (0-5 input, 6 middle, 7-15 output). "
              "This renders 18 pictures: try 'input / middle / output' grouping first for a quick look. " +
              OWN_IMAGES)
    ipadapter, clip_vision = loaders(g)
    swept = g.node("IPAdapterLayerSweep", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(),
                   image=g.image().out("IMAGE"), weight=1.0, grouping="each layer", mode="only this group",
                   combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                   clip_vision=clip_vision.out())
    sampled = g.node("KSampler", model=swept.out("MODEL"), positive=g.positive.out(), negative=g.negative.out(),
                     latent_image=g.latent.out(), seed=42, steps=20, cfg=6.5, sampler_name="dpmpp_2m",
                     scheduler="karras", denoise=1.0)
    decoded = g.node("VAEDecode", samples=sampled.out(), vae=g.ckpt.out("VAE"))
    grid = g.node("IPAdapterSweepGrid", images=decoded.out(), labels=swept.out("labels"), columns=6, font_size=0)
    g.node("SaveImage", images=grid.out(), filename_prefix="ipadapter_layer_sweep")
    return g.wf


def tiled() -> Workflow:
    g = Graph("A reference that is not square: IPAdapter Tiled cuts it into square tiles, encodes each and "
              "lets each act on its own part of the picture, so nothing is cropped away. The tiles it used "
              f"are previewed (the pack's {REFERENCE} is wide). " + OWN_IMAGES)
    ipadapter, clip_vision = loaders(g)
    model = g.node("IPAdapterTiled", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(),
                   image=g.image().out("IMAGE"), weight=0.7, weight_type="ease in", combine_embeds="concat",
                   start_at=0.0, end_at=1.0, sharpening=0.0, embeds_scaling="V only", clip_vision=clip_vision.out())
    g.render(model.out("MODEL"), "ipadapter_tiled")
    g.node("PreviewImage", images=model.out("tiles"))
    return g.wf


def weights_batch() -> Workflow:
    g = Graph("A batch whose frames fade from one reference to the other (the AnimateDiff pattern, here on "
              "plain images): IPAdapter Weights turns '1.0, 0.0' into a per-frame weight curve (3 frames per "
              "image, linear) and repeats the images to match; IPAdapter Batch gives frame i weight i; "
              "total_frames sets the batch size. " + OWN_IMAGES)
    ipadapter, clip_vision = loaders(g)
    both = g.node("ImageBatch", image1=g.image().out("IMAGE"), image2=g.image(REFERENCE_2).out("IMAGE"))
    schedule = g.node("IPAdapterWeights", weights="1.0, 0.0", timing="linear", frames=3, start_frame=0,
                      end_frame=9999, add_starting_frames=0, add_ending_frames=0, method="full batch",
                      image=both.out())
    model = g.node("IPAdapterBatch", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(),
                   image=schedule.out("image_1"), weight=schedule.out("weights"), weight_type="linear",
                   start_at=0.0, end_at=1.0, embeds_scaling="V only", encode_batch_size=0,
                   clip_vision=clip_vision.out())
    g.wf.link(schedule.out("total_frames"), g.latent, "batch_size")
    g.render(model.out(), "ipadapter_weights_batch")
    return g.wf


def regional_conditioning() -> Workflow:
    g = Graph(f"Two references for two regions: {REFERENCE} and its prompt act on the left half, "
              f"{REFERENCE_2} and its prompt on the right. Each IPAdapter Regional Conditioning pairs an image "
              "and a mask with a masked text prompt; IPAdapter Combine Params gathers the regions and IPAdapter "
              "from Params applies them all in one patch. The masks here are drawn with Solid Mask and Mask "
              "Composite; paint your own with the mask editor.", positive="two animals in a field, best quality")
    ipadapter, clip_vision = loaders(g)
    empty = g.node("SolidMask", value=0.0, width=512, height=512)
    half = g.node("SolidMask", value=1.0, width=256, height=512)
    left = g.node("MaskComposite", destination=empty.out(), source=half.out(), x=0, y=0, operation="add")
    right = g.node("InvertMask", mask=left.out())
    regions = []
    for image, mask, text in ((REFERENCE, left, "a cat"), (REFERENCE_2, right, "a dog")):
        regions.append(g.node("IPAdapterRegionalConditioning", image=g.image(image).out("IMAGE"), mask=mask.out(),
                              positive=g.text(text).out(), image_weight=0.7, prompt_weight=1.0,
                              weight_type="linear", start_at=0.0, end_at=1.0))
    params = g.node("IPAdapterCombineParams", params_1=regions[0].out("IPADAPTER_PARAMS"),
                    params_2=regions[1].out("IPADAPTER_PARAMS"))
    model = g.node("IPAdapterFromParams", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(),
                   ipadapter_params=params.out(), combine_embeds="concat", embeds_scaling="V only",
                   clip_vision=clip_vision.out())
    prompts = g.node("ConditioningCombine", conditioning_1=regions[0].out("POSITIVE"),
                     conditioning_2=regions[1].out("POSITIVE"))
    positive = g.node("ConditioningCombine", conditioning_1=g.positive.out(), conditioning_2=prompts.out())
    g.render(model.out(), "ipadapter_regional_conditioning", positive=positive.out())
    return g.wf


def embeds_save() -> Workflow:
    wf = Workflow("Encode a reference once and keep its embeds: IPAdapter Save Embeds writes "
                  "output/IP_embeds_<number>.ipadpt. Move the file to ComfyUI's input folder to use it with "
                  f"ipadapter_embeds_load.json (which expects it as input/{SAVED_EMBEDS}).")
    ipadapter = wf.node("IPAdapterModelLoader", ipadapter_file=PLUS_SD15)
    clip_vision = wf.node("CLIPVisionLoader", clip_name=VIT_H)
    image = wf.node("LoadImage", image=REFERENCE)
    encoded = wf.node("IPAdapterEncoder", ipadapter=ipadapter.out(), image=image.out("IMAGE"), weight=1.0,
                      clip_vision=clip_vision.out())
    wf.node("IPAdapterSaveEmbeds", embeds=encoded.out("pos_embed"), filename_prefix="IP_embeds")
    return wf


def embeds_load() -> Workflow:
    g = Graph(f"Use saved embeds instead of an image: IPAdapter Load Embeds reads input/{SAVED_EMBEDS} (made "
              "by ipadapter_embeds_save.json, then moved from output/ to input/); no CLIP vision run for the "
              "reference. The encoder is still connected for the default negative. The adapter must be the "
              f"one the embeds were made with ({PLUS_SD15}).")
    ipadapter, clip_vision = loaders(g)
    embeds = g.node("IPAdapterLoadEmbeds", embeds=SAVED_EMBEDS)
    model = g.node("IPAdapterEmbeds", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(), pos_embed=embeds.out(),
                   weight=0.8, weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                   clip_vision=clip_vision.out())
    g.render(model.out(), "ipadapter_embeds_load")
    return g.wf


def faceid() -> Workflow:
    g = Graph(f"FaceID Plus V2 on SD1.5: {FACEID_PLUSV2} with its LoRA {FACEID_PLUSV2_LORA} (strength 0.6, in "
              "models/loras), the ViT-H encoder and InsightFace (pip install insightface onnxruntime; the "
              "buffalo_l models go in models/insightface). weight_faceidv2 sets how much the face shape "
              f"(the CLIP part) counts. The detected face crop is previewed. {FACE} is a drawn placeholder: "
              "face detectors need a photograph, so pick a portrait photo in Load Image.",
              positive="a photo of a person in a forest, best quality")
    lora = g.node("LoraLoaderModelOnly", model=g.ckpt.out("MODEL"), lora_name=FACEID_PLUSV2_LORA,
                  strength_model=0.6)
    ipadapter, clip_vision = loaders(g, FACEID_PLUSV2)
    insightface = g.node("IPAdapterInsightFaceLoader", provider="CPU", model_name="buffalo_l")
    model = g.node("IPAdapterFaceID", model=lora.out(), ipadapter=ipadapter.out(), image=g.image(FACE).out("IMAGE"),
                   weight=1.0, weight_faceidv2=2.0, **{k: v for k, v in common(1.0).items() if k != "weight"},
                   clip_vision=clip_vision.out(), insightface=insightface.out())
    g.render(model.out("MODEL"), "ipadapter_faceid")
    g.node("PreviewImage", images=model.out("face_image"))
    return g.wf


def train() -> Workflow:
    g = Graph("Trains a small IP-Adapter Plus in the graph (IPAdapter Train: two captioned images, the reference "
              "recipe, saved to models/ipadapter/ipadapter_trained_example.safetensors) and applies it at once "
              "with IPAdapter Advanced; the loss curve shows in the preview. One caption per line, in image "
              f"order. Put {REFERENCE} and {REFERENCE_2} in ComfyUI's input folder (or use your own images; "
              "a real adapter needs thousands of images and steps: see README, Training).")
    clip_vision = g.node("CLIPVisionLoader", clip_name=VIT_H)
    reference = g.image()
    images = g.node("ImageBatch", image1=reference.out("IMAGE"), image2=g.image(REFERENCE_2).out("IMAGE"))
    trained = g.node("IPAdapterTrain", model=g.ckpt.out("MODEL"), clip=g.ckpt.out("CLIP"), vae=g.ckpt.out("VAE"),
                     clip_vision=clip_vision.out(), images=images.out(),
                     captions="a portrait photo, best quality\na portrait photo, soft light", family="plus",
                     steps=300, batch_size=2, learning_rate=1e-4, seed=0, resolution=512,
                     output_name="ipadapter_trained_example", dataset_path="")
    model = g.node("IPAdapterAdvanced", model=g.ckpt.out("MODEL"), ipadapter=trained.out("ipadapter"),
                   image=reference.out("IMAGE"), clip_vision=clip_vision.out(), **common())
    g.render(model.out(), "ipadapter_train")
    g.node("PreviewImage", images=trained.out("loss_curve"))
    return g.wf


FLUX_DEV = "flux1-dev.safetensors"
FLUX_XLABS = "flux-ip-adapter-v2.safetensors"
VIT_L = "clip_vision_l.safetensors"


def flux_render(wf: Workflow, clip, model, prefix: str) -> Workflow:
    """Text, FluxGuidance, sampling (cfg 1: Flux.1-dev is guidance-distilled), VAE decode and save."""
    positive = wf.node("CLIPTextEncode", text="a portrait photo, best quality", clip=clip.out())
    guided = wf.node("FluxGuidance", conditioning=positive.out(), guidance=3.5)
    negative = wf.node("CLIPTextEncode", text="", clip=clip.out())
    latent = wf.node("EmptySD3LatentImage", width=1024, height=1024, batch_size=1)
    sampled = wf.node("KSampler", model=model.out(), positive=guided.out(), negative=negative.out(),
                      latent_image=latent.out(), seed=42, steps=20, cfg=1.0, sampler_name="euler",
                      scheduler="simple", denoise=1.0)
    vae = wf.node("VAELoader", vae_name="ae.safetensors")
    decoded = wf.node("VAEDecode", samples=sampled.out(), vae=vae.out())
    wf.node("SaveImage", images=decoded.out(), filename_prefix=prefix)
    return wf


def flux_xlabs() -> Workflow:
    # tests/test_flux_workflow.py runs this file on the tiny Flux fixture (it swaps the text encoders and VAE).
    wf = Workflow("Image prompt on Flux.1-dev with XLabs' IP-Adapter v2 (flux-ip-adapter-v2.safetensors in "
                  "models/ipadapter) and the CLIP ViT-L/14 encoder (clip_vision_l.safetensors in models/clip_vision). "
                  "IPAdapter Advanced patches Flux's 19 double blocks; weight types: linear or the ease curves, "
                  "per-block weights with IPAdapter Mad Scientist. "
                  f"Put {REFERENCE} in ComfyUI's input folder.")
    unet = wf.node("UNETLoader", unet_name=FLUX_DEV, weight_dtype="default")
    clip = wf.node("DualCLIPLoader", clip_name1="t5xxl_fp16.safetensors", clip_name2="clip_l.safetensors", type="flux")
    ipadapter = wf.node("IPAdapterModelLoader", ipadapter_file=FLUX_XLABS)
    clip_vision = wf.node("CLIPVisionLoader", clip_name=VIT_L)
    image = wf.node("LoadImage", image=REFERENCE)
    model = wf.node("IPAdapterAdvanced", model=unet.out(), ipadapter=ipadapter.out(), image=image.out("IMAGE"),
                    clip_vision=clip_vision.out(), **common(weight=0.7))
    return flux_render(wf, clip, model, "ipadapter_flux_xlabs")


FLUX_INSTANTX = "flux1-dev-instantx-ip-adapter.bin"
SIGLIP_384_FILE = "sigclip_vision_patch14_384.safetensors"


def flux_instantx() -> Workflow:
    # tests/test_example_workflows.py runs this file on the tiny Flux fixture (harness.tiny_dit).
    wf = Workflow("Image prompt on Flux.1-dev with InstantX's FLUX.1-dev IP-Adapter (its ip-adapter.bin, saved as "
                  f"{FLUX_INSTANTX} in models/ipadapter). It reads SigLIP so400m-patch14-384's pooled vector: "
                  "IPAdapter SigLIP Pooled Encoder runs the SigLIP from Load CLIP Vision and the pooling head it "
                  f"reads from the same file ({SIGLIP_384_FILE} in models/clip_vision, saved with its "
                  "vision_model.head.* tensors). The adapter acts in all 19 double and 38 single blocks. "
                  f"Put {REFERENCE} in ComfyUI's input folder.")
    unet = wf.node("UNETLoader", unet_name=FLUX_DEV, weight_dtype="default")
    clip = wf.node("DualCLIPLoader", clip_name1="t5xxl_fp16.safetensors", clip_name2="clip_l.safetensors", type="flux")
    ipadapter = wf.node("IPAdapterModelLoader", ipadapter_file=FLUX_INSTANTX)
    clip_vision = wf.node("CLIPVisionLoader", clip_name=SIGLIP_384_FILE)
    image = wf.node("LoadImage", image=REFERENCE)
    embeds = wf.node("IPAdapterSigLIPPooledEncoder", clip_vision=clip_vision.out(), image=image.out("IMAGE"),
                     clip_name=SIGLIP_384_FILE)
    model = wf.node("IPAdapterEmbeds", model=unet.out(), ipadapter=ipadapter.out(), pos_embed=embeds.out("pos_embed"),
                    neg_embed=embeds.out("neg_embed"), weight=0.7, weight_type="linear", start_at=0.0, end_at=1.0,
                    embeds_scaling="V only")
    return flux_render(wf, clip, model, "ipadapter_flux_instantx")


SD35_LARGE = "sd3.5_large.safetensors"
SD35_IPADAPTER = "sd3.5_large_ip-adapter.bin"
SIGLIP_384 = "sigclip_vision_patch14_384.safetensors"


def sd35_instantx() -> Workflow:
    # tests/test_example_workflows.py runs this file on the tiny SD3 fixture (harness.tiny_sd3.tiny_sd3_prompt).
    wf = Workflow("Image prompt on SD3.5 Large with InstantX's IP-Adapter (its ip-adapter.bin, saved as "
                  f"{SD35_IPADAPTER} in models/ipadapter) and the SigLIP so400m-patch14-384 encoder ({SIGLIP_384} in "
                  "models/clip_vision, the one Redux uses). The image tokens follow the timestep; weight, "
                  "start/end, masks and per-block weights (Mad Scientist, blocks 0-37) work as on Flux. "
                  f"Put {REFERENCE} in ComfyUI's input folder.")
    ckpt = wf.node("CheckpointLoaderSimple", ckpt_name=SD35_LARGE)
    clip = wf.node("TripleCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="clip_g.safetensors",
                   clip_name3="t5xxl_fp16.safetensors")
    ipadapter = wf.node("IPAdapterModelLoader", ipadapter_file=SD35_IPADAPTER)
    clip_vision = wf.node("CLIPVisionLoader", clip_name=SIGLIP_384)
    image = wf.node("LoadImage", image=REFERENCE)
    model = wf.node("IPAdapterAdvanced", model=ckpt.out("MODEL"), ipadapter=ipadapter.out(), image=image.out("IMAGE"),
                    clip_vision=clip_vision.out(), **common(weight=0.6))
    positive = wf.node("CLIPTextEncode", text="a portrait photo, best quality", clip=clip.out())
    negative = wf.node("CLIPTextEncode", text=NEGATIVE_TEXT, clip=clip.out())
    latent = wf.node("EmptySD3LatentImage", width=1024, height=1024, batch_size=1)
    sampled = wf.node("KSampler", model=model.out(), positive=positive.out(), negative=negative.out(),
                      latent_image=latent.out(), seed=42, steps=28, cfg=4.5, sampler_name="euler",
                      scheduler="sgm_uniform", denoise=1.0)
    decoded = wf.node("VAEDecode", samples=sampled.out(), vae=ckpt.out("VAE"))
    wf.node("SaveImage", images=decoded.out(), filename_prefix="ipadapter_sd35_instantx")
    return wf


def pack_nodes() -> dict:
    """This pack's node classes (the generator boots ComfyUI with the pack loaded)."""
    from harness import runtime

    return dict(runtime.load_this_pack().NODE_CLASS_MAPPINGS)


def current_schema(kind: str):
    """Our nodes as they are now, inputs added after the old extension included (for the examples that use
    them); ComfyUI's own nodes from the pinned table as everywhere."""
    from harness import core_nodes
    from harness.workflow_builder import NodeSchema

    pack = pack_nodes()
    if kind in pack:
        return NodeSchema.from_interface(core_nodes.interface_entry(pack[kind]))
    return schema_for(kind)


FOOOCUS_NEGATIVE = "fooocus_ip_negative.safetensors"


def fooocus() -> Workflow:
    g = Graph(f"Fooocus's image prompt on SDXL: two IPAdapter Fooocus nodes (Image Prompt preset: weight 0.6, stop "
              f"0.5) add {REFERENCE} and {REFERENCE_2} to one joint attention, as Fooocus does with two image "
              f"prompts. Files: {PLUS_SDXL} and Fooocus's {FOOOCUS_NEGATIVE} in models/ipadapter, {VIT_H} in "
              "models/clip_vision. The references are stretched to the encoder's square (crop: stretch), as in "
              "Fooocus.", checkpoint=SDXL, positive="a cinematic photo, best quality", schemas=current_schema)
    ipadapter, clip_vision = loaders(g, PLUS_SDXL)
    model = g.ckpt.out("MODEL")
    for name in (REFERENCE, REFERENCE_2):
        model = g.node("IPAdapterFooocus", model=model, ipadapter=ipadapter.out(), image=g.image(name).out("IMAGE"),
                       mode="Image Prompt", negative_file=FOOOCUS_NEGATIVE, clip_vision=clip_vision.out()).out()
    g.render(model, "ipadapter_fooocus")
    return g.wf


def weight_curve() -> Workflow:
    g = Graph("Weight curves: the same image prompt fading out (full weight at the first step, none at the last: "
              "the reference sets the composition, the text prompt the details) and fading in (the reverse), "
              f"each from an IPAdapter Weight Curve into IPAdapter Advanced's weight_curve input. Put {REFERENCE} "
              "in ComfyUI's input folder.", schemas=current_schema)
    ipadapter, clip_vision = loaders(g)
    image = g.image()
    for preset in ("fade out", "fade in"):
        curve = g.node("IPAdapterWeightCurve", preset=preset, interpolation="ease")
        model = g.node("IPAdapterAdvanced", model=g.ckpt.out("MODEL"), ipadapter=ipadapter.out(),
                       image=image.out("IMAGE"), clip_vision=clip_vision.out(), weight_curve=curve.out(),
                       **common(1.0))
        g.render(model.out(), f"ipadapter_weight_curve_{preset.replace(' ', '_')}")
    return g.wf


WORKFLOWS = {
    "ipadapter_simple": simple,
    "ipadapter_advanced": advanced,
    "ipadapter_weight_types": weight_types,
    "ipadapter_combine_embeds": combine_embeds,
    "ipadapter_negative_noise": negative_noise,
    "ipadapter_style_composition": style_composition,
    "ipadapter_precise_style_composition": precise_style_composition,
    "ipadapter_layer_weights": layer_weights,
    "ipadapter_layer_sweep": layer_sweep,
    "ipadapter_tiled": tiled,
    "ipadapter_weights_batch": weights_batch,
    "ipadapter_regional_conditioning": regional_conditioning,
    "ipadapter_embeds_save": embeds_save,
    "ipadapter_embeds_load": embeds_load,
    "ipadapter_faceid": faceid,
    "ipadapter_train": train,
    "ipadapter_flux_xlabs": flux_xlabs,
    "ipadapter_flux_instantx": flux_instantx,
    "ipadapter_sd35_instantx": sd35_instantx,
    "ipadapter_fooocus": fooocus,
    "ipadapter_weight_curve": weight_curve,
}


def build_all() -> dict[str, str]:
    """{file name: JSON text} for every example (the same text whichever ComfyUI runs: ComfyUI's own nodes
    come from the pinned table in dev/harness/data/comfyui_core_nodes.json)."""
    return {f"{name}.json": make().dumps() for name, make in WORKFLOWS.items()}


def boot_comfyui() -> None:
    from harness import runtime

    runtime.boot(Path(tempfile.mkdtemp(prefix="ipadapter-workflows-")))
    runtime.init_nodes(load_pack=True)  # the examples of new nodes read them from the pack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    parser.add_argument("--pin-core-nodes", action="store_true",
                        help="first rewrite the pinned table of ComfyUI's own nodes from the running ComfyUI "
                             "(run it on the oldest runtime tested, ComfyUI 0.3.75)")
    args = parser.parse_args()
    boot_comfyui()
    if args.pin_core_nodes:
        from harness import core_nodes, workflow_builder

        used = {node["type"] for path in OUT_DIR.glob("*.json") for node in json.loads(path.read_text())["nodes"]}
        ours = set(workflow_builder.interface_nodes()) | set(pack_nodes())
        print(f"wrote {core_nodes.write_pinned(sorted(used - ours)).relative_to(REPO)}")
        core_nodes.pinned.cache_clear()
    stale = []
    for name, text in build_all().items():
        path = OUT_DIR / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print("out of date (run dev/make_example_workflows.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
