"""Tiny Flux transformers built through ComfyUI's own classes (``supported_models.Flux`` -> ``model_base.Flux``
-> ``comfy.ldm.flux.model.Flux``), and the same weights in diffusers' ``FluxTransformer2DModel`` (the oracle),
converted with ComfyUI's own key map (``comfy.utils.flux_to_diffusers``).
"""
from __future__ import annotations

import dataclasses

import torch

import comfy.ldm.flux.model
import comfy.model_patcher
import comfy.supported_models
import comfy.utils

from harness.dims import TINY_FLUX, FluxDims
from harness.tiny_models import init_module


def flux_unet_config(dims: FluxDims = TINY_FLUX) -> dict:
    config = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=dims.vec_in_dim,
                  context_in_dim=dims.context_in_dim, hidden_size=dims.hidden_size, mlp_ratio=4.0,
                  num_heads=dims.num_heads, depth=dims.depth, depth_single_blocks=dims.depth_single_blocks,
                  axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True)
    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    if "txt_ids_dims" in fields:  # newer ComfyUI: required, [] for Flux.1
        config["txt_ids_dims"] = []
    return config


def build_flux(seed: int = 0, dims: FluxDims = TINY_FLUX) -> comfy.model_patcher.ModelPatcher:
    """A tiny Flux MODEL (ComfyUI's classes), fp32 on CPU, seeded; RMSNorm scales near 1."""
    return build_from_config(comfy.supported_models.Flux(flux_unet_config(dims)), seed,
                             lambda name: name.endswith("_norm.scale") or name.endswith("_norm.weight"))


def build_from_config(cfg, seed: int, is_rms_scale) -> comfy.model_patcher.ModelPatcher:
    """ComfyUI's model for a supported-models config, fp32 on CPU, seeded (RMSNorm scales near 1, not near 0)."""
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({}, device=torch.device("cpu"))
    init_module(model.diffusion_model, seed)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if is_rms_scale(name):
                p.fill_(1.0).add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def convert_state_dict(sd: dict, key_map: dict, targets, get=None) -> dict:
    """A diffusers state dict from ComfyUI's ``sd`` through one of ComfyUI's ``*_to_diffusers`` key maps
    (a value is a key, or (key, (dim, start, length) or None[, transform]))."""
    get = get or (lambda k: sd[k])
    out = {}
    for target in targets:
        source = key_map[target]
        if isinstance(source, str):
            out[target] = get(source)
            continue
        t = get(source[0])
        if source[1] is not None:
            dim, start, length = source[1]
            t = t.narrow(dim, start, length)
        out[target] = source[2](t) if len(source) > 2 else t
    return out


def diffusers_flux(patcher, dims: FluxDims = TINY_FLUX):
    """diffusers' FluxTransformer2DModel holding the ComfyUI model's weights."""
    from diffusers import FluxTransformer2DModel

    sd = patcher.model.diffusion_model.state_dict()
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=dims.depth, num_single_layers=dims.depth_single_blocks,
        attention_head_dim=dims.hidden_size // dims.num_heads, num_attention_heads=dims.num_heads,
        joint_attention_dim=dims.context_in_dim, pooled_projection_dim=dims.vec_in_dim, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56))
    key_map = comfy.utils.flux_to_diffusers(flux_unet_config(dims))
    out = convert_state_dict(sd, key_map, model.state_dict(), lambda k: _get(sd, k))
    model.load_state_dict(out, strict=True)
    return model.eval()


def _get(sd: dict, key: str) -> torch.Tensor:
    if key in sd:
        return sd[key]
    alt = key[: -len(".scale")] + ".weight" if key.endswith(".scale") else key
    return sd[alt]  # newer ComfyUI names RMSNorm scales ".weight"


def packed_inputs(batch: int = 2, h: int = 4, w: int = 6, txt: int = 5, seed: int = 0, dims: FluxDims = TINY_FLUX):
    """Packed Flux inputs: img [B, h*w, 64], img_ids [h*w, 3], txt [B, txt, ctx], txt_ids, y, t, guidance."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, h * w, 64, generator=g)
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return dict(img=img, img_ids=ids.reshape(-1, 3), txt=torch.randn(batch, txt, dims.context_in_dim, generator=g),
                txt_ids=torch.zeros(txt, 3), y=torch.randn(batch, dims.vec_in_dim, generator=g),
                t=torch.tensor([0.7] * batch), guidance=torch.tensor([3.5] * batch))


def comfy_forward(model, inputs, extra_options: dict | None = None) -> torch.Tensor:
    """The packed-token forward of ComfyUI's Flux with the MODEL's transformer_options (its patches)."""
    import copy

    dm = model.get_model_object("diffusion_model")
    options = copy.copy(model.model_options.get("transformer_options", {}))
    options.update(extra_options or {})
    b = inputs["img"].shape[0]
    with torch.no_grad():
        return dm.forward_orig(inputs["img"], inputs["img_ids"][None].expand(b, -1, -1), inputs["txt"],
                               inputs["txt_ids"][None].expand(b, -1, -1), timesteps=inputs["t"], y=inputs["y"],
                               guidance=inputs["guidance"], transformer_options=options)


class BlockProbe:
    """A foreign patch around what is registered at a block: records the block's output image stream."""

    def __init__(self, inner):
        self.inner, self.outputs = inner, []

    def __call__(self, args, extra):
        out = self.inner(args, extra) if self.inner is not None else extra["original_block"](args)
        self.outputs.append(out["img"].clone())
        return out


def block_output(model, block: tuple[str, int], x: torch.Tensor, refs=None, seed: int = 1,
                 dims: FluxDims = TINY_FLUX) -> torch.Tensor:
    """The image stream out of ``block`` (("double_block" | "single_block", i)) of the first sample, when
    ComfyUI's Flux forward runs the latent ``x`` [1, 16, H, W] (with reference latents ``refs``, as Kontext
    does) through its wrapper chain, as a sampler calls it."""
    probed = model.clone()
    current = probed.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    probe = BlockProbe(current.get(block))
    probed.set_model_patch_replace(probe, "dit", *block)
    options = dict(probed.model_options.get("transformer_options", {}))
    options["wrappers"] = {kind: dict(by_key) for kind, by_key in probed.wrappers.items()}
    g = torch.Generator().manual_seed(seed)
    dm = probed.get_model_object("diffusion_model")
    with torch.no_grad():
        dm(x, torch.tensor([0.7]), torch.randn(1, 5, dims.context_in_dim, generator=g),
           y=torch.randn(1, dims.vec_in_dim, generator=g), guidance=torch.tensor([3.5]), ref_latents=refs,
           transformer_options=options)
    return probe.outputs[-1][0]


# --------------------------------------------------------------------------------------------------
# A tiny Flux *file* that ComfyUI's loaders load (UNETLoader), for headless workflows
# --------------------------------------------------------------------------------------------------
# Its text width is the tiny SD1.5 CLIP's (64), so the tiny checkpoint's CLIPTextEncode conditions it.
TINY_FLUX_WORKFLOW = FluxDims(hidden_size=256, num_heads=2, depth=3, depth_single_blocks=2, context_in_dim=64,
                              vec_in_dim=32)
TINY_FLUX_FILE = "tiny_flux.safetensors"


class TinyFlux(comfy.supported_models.Flux):
    """ComfyUI's Flux config for the tiny file: ComfyUI's detection reads the widths and block counts from
    the tensors, but fixes the head count for Flux.1 (24 on 0.3.75); the tiny model has 2 heads of 128."""

    unet_config = {"image_model": "flux", "guidance_embed": True, "hidden_size": TINY_FLUX_WORKFLOW.hidden_size}
    unet_extra_config = {"num_heads": TINY_FLUX_WORKFLOW.num_heads}


def register_tiny_flux() -> None:
    """Put TinyFlux in front of ComfyUI's model list (idempotent)."""
    models = comfy.supported_models.models
    while TinyFlux in models:
        models.remove(TinyFlux)
    models.insert(0, TinyFlux)


def flux_file_state_dict(seed: int = 0, dims: FluxDims = TINY_FLUX_WORKFLOW) -> dict[str, torch.Tensor]:
    """The tiny model's tensors under the released Flux key names (RMSNorm scales as ``.scale``)."""
    sd = build_flux(seed, dims).model.diffusion_model.state_dict()
    return {(k[: -len(".weight")] + ".scale" if k.endswith("_norm.weight") else k): v.contiguous() for k, v in sd.items()}


# --------------------------------------------------------------------------------------------------
# The Flux example workflow on the fixtures
# --------------------------------------------------------------------------------------------------
# Canonical download names the example uses -> what stands in for them in the fixture tree.
FLUX_CANONICAL = {"diffusion_models": "flux1-dev.safetensors", "ipadapter": "flux-ip-adapter-v2.safetensors",
                  "clip_vision": "clip_vision_l.safetensors"}
# Files the example names but the run replaces (placeholders, so the frontend-style validation passes).
FLUX_PLACEHOLDERS = (("text_encoders", "t5xxl_fp16.safetensors"), ("text_encoders", "clip_l.safetensors"),
                     ("vae", "ae.safetensors"))


def install_flux_fixtures(models_dir) -> None:
    """Write the tiny Flux (as ``tiny_flux.safetensors`` and under the example's name), the tiny XLabs v2
    file, ViT-L's name for the tiny 224-px encoder, and placeholders; register TinyFlux. Idempotent."""
    import os
    from pathlib import Path

    import folder_paths
    from safetensors.torch import save_file

    from harness import adapter_factory

    register_tiny_flux()
    models_dir = Path(models_dir)
    unet = models_dir / "diffusion_models" / TINY_FLUX_FILE
    if not unet.exists():
        unet.parent.mkdir(parents=True, exist_ok=True)
        save_file(flux_file_state_dict(seed=2), str(unet))
    targets = {
        "diffusion_models": unet,
        "ipadapter": adapter_factory.write_xlabs_flux(models_dir / "ipadapter" / "flux-ip-adapter-v2-tiny.safetensors",
                                                      "v2", seed=4, dims=TINY_FLUX_WORKFLOW),
        "clip_vision": models_dir / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    }
    for folder, name in FLUX_CANONICAL.items():
        link = models_dir / folder / name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(targets[folder], link)
    for folder, name in FLUX_PLACEHOLDERS:
        path = models_dir / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    for folder in (*FLUX_CANONICAL, "text_encoders", "vae"):
        folder_paths.filename_list_cache.pop(folder, None)


def sampling_graph(prefix: str, seed: int = 5) -> dict:
    """An API prompt: the tiny Flux file (Load Diffusion Model), the tiny SD1.5 CLIP's text, KSampler with CFG
    (2 steps, 64x48) and SaveLatent under ``prefix``. Node "1" is the MODEL, "6" the sampler, "7" the save."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_FLUX_FILE, "weight_dtype": "default"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["2", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["2", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix}},
    }


INSTANTX_EXAMPLE = ("flux1-dev-instantx-ip-adapter.bin", "flux_instantx_reference.ipadpt",
                    "sigclip_vision_patch14_384.safetensors")  # the example's names


def install_instantx_flux_example(models_dir, input_dir) -> None:
    """The Flux fixtures, a tiny InstantX FLUX file, a pooled-SigLIP-shaped vector and a tiny SigLIP file with
    its pooling head, under the example's names (the SigLIP name replaces another fixture's stand-in)."""
    from pathlib import Path

    import folder_paths
    from safetensors import safe_open

    from harness import adapter_factory, tiny_sd3
    from harness.dims import INSTANTX_FLUX_TINY
    from ipadapter_next.ipadapter.embeds_file import save_embeds

    install_flux_fixtures(models_dir)
    adapter_factory.write_instantx_flux(Path(models_dir) / "ipadapter" / INSTANTX_EXAMPLE[0], seed=6,
                                        dims=TINY_FLUX_WORKFLOW)
    pooled = torch.randn(1, INSTANTX_FLUX_TINY[0], generator=torch.Generator().manual_seed(8))
    save_embeds(pooled, Path(input_dir) / INSTANTX_EXAMPLE[1])
    siglip = Path(models_dir) / "clip_vision" / INSTANTX_EXAMPLE[2]
    if siglip.exists():
        with safe_open(str(siglip), "pt") as f:
            if "vision_model.head.probe" not in f.keys():
                siglip.unlink()
    if not siglip.exists():
        tiny_sd3.write_tiny_siglip_file(siglip)
    for folder in ("ipadapter", "clip_vision"):
        folder_paths.filename_list_cache.pop(folder, None)


def tiny_flux_prompt(prompt: dict, text_checkpoint: str = "tiny_sd15.safetensors", size: int = 64) -> dict:
    """An API prompt of the Flux example, rewired for the fixtures: the tiny SD1.5 checkpoint's CLIP
    replaces DualCLIPLoader, SaveLatent replaces VAE Decode + Save Image (no tiny Flux VAE), 64 px."""
    prompt = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "DualCLIPLoader":
            prompt[node_id] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": text_checkpoint}}
            for other in prompt.values():  # its CLIP output is slot 0; the checkpoint's is slot 1
                for name, value in other["inputs"].items():
                    if isinstance(value, list) and value == [node_id, 0]:
                        other["inputs"][name] = [node_id, 1]
        elif kind == "EmptySD3LatentImage":
            inputs.update(width=size, height=size)
        elif kind == "KSampler":
            inputs["steps"] = min(inputs["steps"], 2)
        elif kind == "VAEDecode":
            prompt[node_id] = {"class_type": "SaveLatent",
                               "inputs": {"samples": inputs["samples"], "filename_prefix": "flux/example"}}
    for node_id in [i for i, n in prompt.items() if n["class_type"] in ("VAELoader", "SaveImage")]:
        del prompt[node_id]
    return prompt


def add_embeds_adapter(prompt: dict, ipadapter_file: str, pos_embeds: str, neg_embeds: str, weight: float,
                       **inputs) -> dict:
    """Put IPAdapter Model Loader, two Load Embeds and IPAdapter Embeds between node "1" (the MODEL) and the
    sampler "6" of a sampling graph; ``inputs`` override the Embeds node's defaults."""
    prompt["10"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ipadapter_file}}
    prompt["11"] = {"class_type": "IPAdapterLoadEmbeds", "inputs": {"embeds": pos_embeds}}
    prompt["12"] = {"class_type": "IPAdapterLoadEmbeds", "inputs": {"embeds": neg_embeds}}
    prompt["13"] = {"class_type": "IPAdapterEmbeds", "inputs": {
        "model": ["1", 0], "ipadapter": ["10", 0], "pos_embed": ["11", 0], "neg_embed": ["12", 0], "weight": weight,
        "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only", **inputs}}
    prompt["6"]["inputs"]["model"] = ["13", 0]
    return prompt
