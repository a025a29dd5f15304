"""Helpers for the diffusers parity tests: a diffusers twin of the tiny ComfyUI UNet, and how to call both.

The diffusers ``UNet2DConditionModel`` is configured with the topology of ``harness.tiny_models`` and
receives the ComfyUI UNet's own weights through ComfyUI's map ``comfy.utils.unet_to_diffusers`` (loaded
strictly, every diffusers parameter filled). Nothing here imports the library under test.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.loaders.ip_adapter import IPAdapterMixin

import comfy.utils
from comfy.ldm.modules.attention import SpatialTransformer

from harness import tiny_models
from harness.dims import TINY_UNET


def diffusers_config(arch: str) -> dict:
    """``UNet2DConditionModel`` kwargs equal to the tiny ComfyUI UNet of ``arch``."""
    dims = TINY_UNET[arch]
    if arch == "sd15":
        return dict(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=dims.block_widths,
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=dims.context_dim,
            attention_head_dim=8,  # diffusers' legacy name: this is the number of heads (ComfyUI num_heads=8)
            norm_num_groups=32,
            use_linear_projection=False,
        )
    if arch == "sdxl":
        widths = dims.block_widths
        return dict(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=widths,
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            cross_attention_dim=dims.context_dim,
            # number of heads per level so that every head is 64 wide (ComfyUI num_head_channels=64)
            attention_head_dim=tuple(max(1, w // 64) for w in widths),
            norm_num_groups=32,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
    raise ValueError(arch)


def diffusers_state_dict(comfy_unet: torch.nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """The ComfyUI UNet's weights under diffusers names, via ComfyUI's own key map."""
    unet_config = tiny_models.tiny_unet_config(arch)
    mapping = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key -> ldm key
    ldm = comfy_unet.state_dict()
    out = {}
    for diffusers_key, ldm_key in mapping.items():
        if ldm_key in ldm:
            out[diffusers_key] = ldm[ldm_key].detach().clone()
    return out


def build_diffusers_unet(comfy_unet: torch.nn.Module, arch: str) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(**diffusers_config(arch))
    sd = diffusers_state_dict(comfy_unet, arch)
    # ComfyUI's map also lists class_embedding.* beside add_embedding.* for label_emb: keep what exists.
    own = unet.state_dict()
    sd = {k: v for k, v in sd.items() if k in own}
    unet.load_state_dict(sd, strict=True)  # every diffusers parameter comes from the ComfyUI UNet
    return unet.eval().float()


# ------------------------------------------------------------------------------------------------
# Where each diffusers attention sits in ComfyUI, derived from ComfyUI's key map and module walk
# ------------------------------------------------------------------------------------------------

ATTN2_PROCESSOR = re.compile(r"^((?:down_blocks|up_blocks|mid_block)(?:\.\d+)?\.attentions\.\d+)\.transformer_blocks\.(\d+)\.attn2\.processor$")


def comfy_block_of(arch: str) -> dict[str, tuple[str, int]]:
    """diffusers ``...attentions.j`` prefix -> ComfyUI block ``("input"|"middle"|"output", id)``."""
    mapping = comfy.utils.unet_to_diffusers(tiny_models.tiny_unet_config(arch))
    out = {}
    for d_key, ldm_key in mapping.items():
        if d_key.endswith(".proj_in.weight") and ".attentions." in d_key:
            prefix = d_key[: -len(".proj_in.weight")]
            m = re.match(r"^(input_blocks|middle_block|output_blocks)\.(?:(\d+)\.)?", ldm_key)
            name = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[m.group(1)]
            out[prefix] = (name, int(m.group(2)) if name != "middle" else 0)
    return out


def transformer_indices(comfy_unet: torch.nn.Module) -> dict[tuple[str, int], int]:
    """ComfyUI block -> transformer_index (SpatialTransformer counter in execution order)."""
    order = []
    groups = [("input", enumerate(comfy_unet.input_blocks)), ("middle", [(0, comfy_unet.middle_block)]),
              ("output", enumerate(comfy_unet.output_blocks))]
    for name, blocks in groups:
        for block_id, block in blocks:
            if any(isinstance(m, SpatialTransformer) for m in block):
                order.append((name, block_id))
    return {b: i for i, b in enumerate(order)}


def diffusers_scales_as_layer_weights(unet: UNet2DConditionModel, comfy_unet: torch.nn.Module, arch: str) -> dict:
    """The per-processor scales of a diffusers UNet as our ``layer_weights`` {(t_idx, block_index): scale}."""
    blocks = comfy_block_of(arch)
    t_of = transformer_indices(comfy_unet)
    out = {}
    for name, proc in unet.attn_processors.items():
        m = ATTN2_PROCESSOR.match(name)
        if m is None:
            continue
        (scale,) = proc.scale
        out[(t_of[blocks[m.group(1)]], int(m.group(2)))] = float(scale)
    return out


def set_scale(unet: UNet2DConditionModel, scale) -> None:
    """diffusers' own ``set_ip_adapter_scale`` (a pipeline method) on a bare UNet."""
    IPAdapterMixin.set_ip_adapter_scale(_UNetHolder(unet), scale)


@dataclass
class _UNetHolder:
    unet: UNet2DConditionModel


def load_ip_adapter_into(base: UNet2DConditionModel, state_dict: dict) -> UNet2DConditionModel:
    """A copy of ``base`` with the original-format adapter loaded by diffusers' own UNet loader."""
    unet = copy.deepcopy(base)
    sd = {section: {k: v.clone() for k, v in tensors.items()} for section, tensors in state_dict.items()}
    unet._load_ip_adapter_weights([sd], low_cpu_mem_usage=False)
    return unet.eval()


def diffusers_mask(mask: torch.Tensor) -> torch.Tensor:
    """[H, W] mask -> binarized [1, 1, H, W] per diffusers' ``IPAdapterMaskProcessor`` (one adapter, one image)."""
    h, w = mask.shape
    processed = IPAdapterMaskProcessor().preprocess(mask[None, None], height=h, width=w)  # [1, 1, H, W]
    return processed.reshape(1, 1, h, w)


# ------------------------------------------------------------------------------------------------
# Forward calls
# ------------------------------------------------------------------------------------------------


def comfy_forward(patcher, x, t, context, y=None, cond_or_uncond=(1, 0)) -> torch.Tensor:
    """Raw ComfyUI UNet call with the patcher's transformer_options (its attn2 replace patches)."""
    to = patcher.model_options.get("transformer_options", {})
    options = dict(to)  # the UNet writes block / transformer_index / original_shape into it
    options["cond_or_uncond"] = list(cond_or_uncond)
    options["sigmas"] = torch.full((x.shape[0] // len(cond_or_uncond),), 1.0)
    options["uuids"] = [None] * len(cond_or_uncond)
    unet = patcher.model.diffusion_model
    with torch.no_grad():
        return unet(x, timesteps=t, context=context, y=y, transformer_options=options)


def diffusers_forward(unet, x, t, context, added=None, image_embeds=None, masks=None) -> torch.Tensor:
    added = dict(added or {})
    if image_embeds is not None:
        added["image_embeds"] = image_embeds
    kwargs = {}
    if masks is not None:
        kwargs["cross_attention_kwargs"] = {"ip_adapter_masks": masks}
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added or None, **kwargs).sample
