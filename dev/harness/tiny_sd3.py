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
