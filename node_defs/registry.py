"""Each node module's NODES table, from its node classes and the one table of names ComfyUI lists them under.

Keys and names are the old extension's (saved workflows store the key; the menu shows the name). A key is
its class's name unless the class sets NODE_KEY.
"""
from __future__ import annotations

DISPLAY_NAMES: dict[str, str] = {
    # node_defs/apply.py
    "IPAdapter": "IPAdapter",
    "IPAdapterAdvanced": "IPAdapter Advanced",
    "IPAdapterBatch": "IPAdapter Batch (Adv.)",
    "IPAdapterStyleComposition": "IPAdapter Style & Composition SDXL",
    "IPAdapterStyleCompositionBatch": "IPAdapter Style & Composition Batch SDXL",
    "IPAdapterTiled": "IPAdapter Tiled",
    "IPAdapterTiledBatch": "IPAdapter Tiled Batch",
    "IPAdapterMS": "IPAdapter Mad Scientist",
    "IPAdapterClipVisionEnhancer": "IPAdapter ClipVision Enhancer",
    "IPAdapterClipVisionEnhancerBatch": "IPAdapter ClipVision Enhancer Batch",
    "IPAdapterPreciseStyleTransfer": "IPAdapter Precise Style Transfer",
    "IPAdapterPreciseStyleTransferBatch": "IPAdapter Precise Style Transfer Batch",
    "IPAdapterPreciseComposition": "IPAdapter Precise Composition",
    "IPAdapterPreciseCompositionBatch": "IPAdapter Precise Composition Batch",
    # node_defs/fooocus.py
    "IPAdapterFooocus": "IPAdapter Fooocus",
    # node_defs/embeds.py
    "IPAdapterEncoder": "IPAdapter Encoder",
    "IPAdapterEmbeds": "IPAdapter Embeds",
    "IPAdapterEmbedsBatch": "IPAdapter Embeds Batch",
    "IPAdapterCombineEmbeds": "IPAdapter Combine Embeds",
    "IPAdapterSaveEmbeds": "IPAdapter Save Embeds",
    "IPAdapterLoadEmbeds": "IPAdapter Load Embeds",
    "IPAdapterSigLIPPooledEncoder": "IPAdapter SigLIP Pooled Encoder",
    # node_defs/faceid.py
    "IPAdapterFaceID": "IPAdapter FaceID",
    "IPAAdapterFaceIDBatch": "IPAdapter FaceID Batch",
    "IPAdapterFaceIDKolors": "IPAdapter FaceID Kolors",
    "IPAdapterUnifiedLoaderFaceID": "IPAdapter Unified Loader FaceID",
    "IPAdapterFaceIDLoRA": "IPAdapter FaceID LoRA",
    "IPAdapterFaceEmbeds": "IPAdapter Face Embeds (InsightFace)",
    "IPAdapterFaceEmbedsSave": "IPAdapter Save Face Embeds",
    "IPAdapterFaceEmbedsLoad": "IPAdapter Load Face Embeds",
    # node_defs/loaders.py
    "IPAdapterModelLoader": "IPAdapter Model Loader",
    "IPAdapterUnifiedLoader": "IPAdapter Unified Loader",
    "IPAdapterUnifiedLoaderCommunity": "IPAdapter Unified Loader Community",
    "IPAdapterInsightFaceLoader": "IPAdapter InsightFace Loader",
    # node_defs/weights_params.py
    "IPAdapterWeights": "IPAdapter Weights",
    "IPAdapterWeightsFromStrategy": "IPAdapter Weights From Strategy",
    "IPAdapterPromptScheduleFromWeightsStrategy": "Prompt Schedule From Weights Strategy",
    "IPAdapterFromParams": "IPAdapter from Params",
    "IPAdapterRegionalConditioning": "IPAdapter Regional Conditioning",
    "IPAdapterCombineParams": "IPAdapter Combine Params",
    # node_defs/curves.py
    "IPAdapterWeightCurve": "IPAdapter Weight Curve",
    # node_defs/utils.py
    "PrepImageForClipVision": "Prep Image For ClipVision",
    "IPAdapterNoise": "IPAdapter Noise",
    "IPAdapterCombineWeights": "IPAdapter Combine Weights",
    # node_defs/training.py
    "IPAdapterTrain": "IPAdapter Train",
    # node_defs/layer_tools.py
    "IPAdapterLayerWeights": "IPAdapter Layer Weights",
    "IPAdapterLayerSweep": "IPAdapter Layer Sweep",
    "IPAdapterSweepGrid": "IPAdapter Sweep Grid",
}


def node_table(*classes: type) -> dict[str, tuple[type, str]]:
    """key -> (class, display name). NODE_KEY is read from the class itself, never inherited."""
    keys = (vars(cls).get("NODE_KEY", cls.__name__) for cls in classes)
    return {key: (cls, DISPLAY_NAMES[key]) for key, cls in zip(keys, classes)}
