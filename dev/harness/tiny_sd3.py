"""A tiny SD3 MMDiT built through ComfyUI's own classes (``supported_models.SD3`` -> ``model_base.SD3``), and
the same weights in diffusers' ``SD3Transformer2DModel`` (ComfyUI's ``mmdit_to_diffusers`` key map): the
oracle for InstantX's SD3.5 IP-Adapter."""
from __future__ import annotations

import torch

import comfy.model_patcher
import comfy.supported_models
import comfy.utils

from harness.dims import TINY_SD35, SD3Dims
from harness.tiny_dit import build_from_config, convert_state_dict

POS_EMBED_MAX = 16  # patches per side


def sd3_unet_config(dims: SD3Dims = TINY_SD35) -> dict:
    return dict(in_channels=16, patch_size=2, out_channels=16, depth=dims.depth, input_size=None,
                adm_in_channels=dims.pooled_dim,
                context_embedder_config={"target": "torch.nn.Linear",
                                         "params": {"in_features": dims.context_dim, "out_features": dims.hidden_size}},
                num_patches=POS_EMBED_MAX ** 2, pos_embed_max_size=POS_EMBED_MAX, qk_norm="rms",
                pos_embed_scaling_factor=None, x_block_self_attn_layers=[])


def build_sd3(seed: int = 0, dims: SD3Dims = TINY_SD35) -> comfy.model_patcher.ModelPatcher:
    return build_from_config(comfy.supported_models.SD3(sd3_unet_config(dims)), seed,
                             lambda name: ".ln_q." in name or ".ln_k." in name)


def diffusers_sd3(patcher, dims: SD3Dims = TINY_SD35):
    from diffusers import SD3Transformer2DModel

    sd = patcher.model.diffusion_model.state_dict()
    model = SD3Transformer2DModel(
        sample_size=POS_EMBED_MAX * 2, patch_size=2, in_channels=16, num_layers=dims.depth, attention_head_dim=64,
        num_attention_heads=dims.depth, joint_attention_dim=dims.context_dim, caption_projection_dim=dims.hidden_size,
        pooled_projection_dim=dims.pooled_dim, out_channels=16, pos_embed_max_size=POS_EMBED_MAX, qk_norm="rms_norm")
    out = convert_state_dict(sd, comfy.utils.mmdit_to_diffusers(sd3_unet_config(dims)), model.state_dict())
    model.load_state_dict(out, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Files for headless workflows: the tiny MMDiT (text width 64 and pooled width 64: the tiny SD1.5 CLIP's),
# the synthetic InstantX adapter, and SigLIP-shaped features as .ipadpt embeds
# --------------------------------------------------------------------------------------------------
TINY_SD3_FILE = "tiny_sd35.safetensors"
TINY_SD3_ADAPTER = "sd35-ip-adapter-tiny.bin"
TINY_SD3_EMBEDS = ("sd35_reference.ipadpt", "sd35_negative.ipadpt")  # features of a reference, zeros


def install_sd3_fixtures(models_dir, input_dir) -> None:
    """Write the files once per folder (idempotent)."""
    from pathlib import Path

    import folder_paths
    from safetensors.torch import save_file

    from harness import adapter_factory
    from ipadapter_next.ipadapter.embeds_file import save_embeds

    models_dir, input_dir = Path(models_dir), Path(input_dir)
    unet = models_dir / "diffusion_models" / TINY_SD3_FILE
    if not unet.exists():
        unet.parent.mkdir(parents=True, exist_ok=True)
        sd = build_sd3(seed=1).model.diffusion_model.state_dict()
        save_file({k: v.contiguous() for k, v in sd.items()}, str(unet))
    adapter = models_dir / "ipadapter" / TINY_SD3_ADAPTER
    if not adapter.exists():
        adapter.parent.mkdir(parents=True, exist_ok=True)
        torch.save(adapter_factory.instantx_sd35_state_dict(seed=0), adapter)
    feats = torch.randn(1, TINY_SD35.siglip_tokens, TINY_SD35.siglip_width, generator=torch.Generator().manual_seed(3))
    save_embeds(feats, input_dir / TINY_SD3_EMBEDS[0])
    save_embeds(torch.zeros_like(feats), input_dir / TINY_SD3_EMBEDS[1])
    for folder in ("diffusion_models", "ipadapter"):
        folder_paths.filename_list_cache.pop(folder, None)


# --------------------------------------------------------------------------------------------------
# The SD3.5 example workflow on the fixtures
# --------------------------------------------------------------------------------------------------
SD3_CANONICAL = {"ipadapter": ("sd3.5_large_ip-adapter.bin", TINY_SD3_ADAPTER),
                 "clip_vision": ("sigclip_vision_patch14_384.safetensors", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")}
SD3_PLACEHOLDERS = (("text_encoders", "clip_l.safetensors"), ("text_encoders", "clip_g.safetensors"),
                    ("text_encoders", "t5xxl_fp16.safetensors"))


def install_sd3_example_fixtures(models_dir, input_dir) -> None:
    """The tiny files under the example's names (links; the SigLIP name is only validated, never loaded)."""
    import os
    from pathlib import Path

    import folder_paths

    install_sd3_fixtures(models_dir, input_dir)
    models_dir = Path(models_dir)
    for folder, (name, target) in SD3_CANONICAL.items():
        if not (models_dir / folder / name).exists():
            os.link(models_dir / folder / target, models_dir / folder / name)
    for folder, name in SD3_PLACEHOLDERS:
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
        (models_dir / folder / name).touch()
    for folder in (*SD3_CANONICAL, "text_encoders"):
        folder_paths.filename_list_cache.pop(folder, None)


def tiny_sd3_prompt(prompt: dict, size: int = 64) -> dict:
    """The SD3.5 example's API prompt (after ``workflow.use_tiny_models``) rewired for the fixtures: the tiny
    MMDiT from Load Diffusion Model, the tiny SD1.5 CLIP for TripleCLIPLoader, SaveLatent for VAE Decode +
    Save Image, and IPAdapter Embeds on saved SigLIP-shaped features for IPAdapter Advanced + the encoder
    (there is no tiny SigLIP)."""
    prompt = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    (ckpt,) = [i for i, n in prompt.items() if n["class_type"] == "CheckpointLoaderSimple"]
    (clip,) = [i for i, n in prompt.items() if n["class_type"] == "TripleCLIPLoader"]
    redirect = {(ckpt, 0): ["sd3_unet", 0], (clip, 0): [ckpt, 1]}
    prompt["sd3_unet"] = {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_SD3_FILE, "weight_dtype": "default"}}
    for name, file in zip(("sd3_pos", "sd3_neg"), TINY_SD3_EMBEDS):
        prompt[name] = {"class_type": "IPAdapterLoadEmbeds", "inputs": {"embeds": file}}
    drop = {clip}
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        for name, value in inputs.items():
            if isinstance(value, list) and tuple(value) in redirect:
                inputs[name] = redirect[tuple(value)]
        if kind == "EmptySD3LatentImage":
            inputs.update(width=size, height=size)
        elif kind == "KSampler":
            inputs["steps"] = min(inputs["steps"], 2)
        elif kind == "VAEDecode":
            prompt[node_id] = {"class_type": "SaveLatent", "inputs": {"samples": inputs["samples"],
                                                                      "filename_prefix": "sd3/example"}}
        elif kind == "IPAdapterAdvanced":
            keep = {k: inputs[k] for k in ("model", "ipadapter", "weight", "weight_type", "start_at", "end_at",
                                           "embeds_scaling")}
            prompt[node_id] = {"class_type": "IPAdapterEmbeds",
                               "inputs": dict(keep, pos_embed=["sd3_pos", 0], neg_embed=["sd3_neg", 0])}
        elif kind in ("SaveImage", "CLIPVisionLoader", "LoadImage"):
            drop.add(node_id)
    for node_id in drop:
        del prompt[node_id]
    return prompt


# --------------------------------------------------------------------------------------------------
# A tiny SigLIP (ComfyUI's own siglip_vision_model class): 384 px, 14-px patches (729 tokens), narrow
# --------------------------------------------------------------------------------------------------
def siglip_config() -> dict:
    return {"num_channels": 3, "hidden_act": "gelu_pytorch_tanh", "hidden_size": TINY_SD35.siglip_width,
            "image_size": 384, "intermediate_size": 2 * TINY_SD35.siglip_width, "model_type": "siglip_vision_model",
            "num_attention_heads": 2, "num_hidden_layers": 3, "patch_size": 14, "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5]}


def siglip_config_path():
    """The tiny SigLIP config as a JSON file (ComfyUI's ClipVisionModel reads a path)."""
    import json

    from harness.tiny_models import CONFIG_CACHE

    path = CONFIG_CACHE / "clip_vision_tiny_siglip_384.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(siglip_config(), indent=2, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def is_tiny_siglip(sd) -> bool:
    """A state dict with the tiny SigLIP's width, token count and depth (HF layout, no projection)."""
    c = siglip_config()
    pos = sd.get("vision_model.embeddings.position_embedding.weight")
    layers = {k.split(".")[3] for k in sd if k.startswith("vision_model.encoder.layers.")}
    return (pos is not None and tuple(pos.shape) == ((c["image_size"] // c["patch_size"]) ** 2, c["hidden_size"])
            and len(layers) == c["num_hidden_layers"] and "visual_projection.weight" not in sd)


def write_tiny_siglip_file(path, head: bool = True, seed: int = 0):
    """A tiny SigLIP file as released (``vision_model.*`` keys, the pooling head with ``head=True``), made by
    transformers' ``SiglipVisionModel``; returns that model (the oracle). Rewritten every call (cheap)."""
    from pathlib import Path

    from safetensors.torch import save_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    c = siglip_config()
    torch.manual_seed(seed)
    hf = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_attention_heads=c["num_attention_heads"], num_hidden_layers=c["num_hidden_layers"],
        image_size=c["image_size"], patch_size=c["patch_size"])).eval()
    # The released files' names (transformers 5 drops the vision_model. prefix from the module's keys).
    sd = {(k if k.startswith("vision_model.") else f"vision_model.{k}"): v.contiguous() for k, v in hf.state_dict().items()}
    sd = {k: v for k, v in sd.items() if head or ".head." not in k}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return hf


def build_tiny_siglip(seed: int = 0):
    """A ``comfy.clip_vision.ClipVisionModel`` of the tiny SigLIP config with seeded weights."""
    import comfy.clip_vision
    import comfy.ops

    from harness.tiny_models import seeded_state_dict

    clip = comfy.clip_vision.ClipVisionModel(str(siglip_config_path()))
    meta = comfy.clip_vision.IMAGE_ENCODERS["siglip_vision_model"](siglip_config(), torch.float32,
                                                                   torch.device("meta"), comfy.ops.manual_cast)
    missing, unexpected = clip.load_sd(seeded_state_dict(meta, seed))
    if missing or unexpected:
        raise RuntimeError(f"tiny SigLIP: missing {missing}, unexpected {unexpected}")
    return clip
