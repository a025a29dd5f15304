"""Widths of the real models and of their tiny stand-ins used by the test fixtures.

Every fixture (tiny UNets, tiny CLIP vision encoders, synthetic IP-Adapter checkpoints) takes its
sizes from here, so the pieces fit together exactly as the full-size ones do. The tiny sizes keep
the real topology (layer counts, token counts, attention-head size 64 where the real models have it)
and scale the widths down.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetDims:
    """Widths a UNet exposes to an IP-Adapter."""

    context_dim: int  # text-context width: to_k_ip / to_v_ip input
    block_widths: tuple[int, ...]  # channels per resolution level (diffusers block_out_channels)
    model_channels: int


@dataclass(frozen=True)
class ClipVisionDims:
    """A CLIP vision encoder: hidden width (penultimate states), projection width (image_embeds), input size."""

    name: str
    hidden_size: int
    projection_dim: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    image_size: int = 224
    patch_size: int = 14

    @property
    def tokens(self) -> int:  # CLS + patches: 257 at 224 px, 577 at 336 px
        return (self.image_size // self.patch_size) ** 2 + 1


FULL_UNET = {
    "sd15": UNetDims(context_dim=768, block_widths=(320, 640, 1280, 1280), model_channels=320),
    "sdxl": UNetDims(context_dim=2048, block_widths=(320, 640, 1280), model_channels=320),
}
TINY_UNET = {
    # SD1.5 keeps 8 heads per attention; SDXL keeps 64-channel heads (1 head at 64, 2 at 128).
    "sd15": UNetDims(context_dim=64, block_widths=(32, 64, 128, 128), model_channels=32),
    "sdxl": UNetDims(context_dim=128, block_widths=(32, 64, 128), model_channels=32),
}

FULL_CLIP = {
    "vit-h": ClipVisionDims("ViT-H", 1280, 1024, 5120, 16, 32),
    "vit-g": ClipVisionDims("ViT-bigG", 1664, 1280, 8192, 16, 48),
    "vit-l-336": ClipVisionDims("ViT-L-336", 1024, 768, 4096, 16, 24, image_size=336),
}
TINY_CLIP = {
    # Widths are the real ones / 32; 3 layers. The real relations hold: bigG's projection width equals
    # ViT-H's hidden width, ViT-L's hidden width equals ViT-H's projection width.
    "vit-h": ClipVisionDims("tiny ViT-H", 40, 32, 160, 2, 3),
    "vit-g": ClipVisionDims("tiny ViT-bigG", 52, 40, 208, 2, 3),
    "vit-l-336": ClipVisionDims("tiny ViT-L-336", 32, 24, 128, 2, 3, image_size=336),
}

# Face-recognition embedding (insightface ArcFace) width and the FaceID LoRA rank.
FULL_FACE_EMBED, TINY_FACE_EMBED = 512, 16
FULL_LORA_RANK, TINY_LORA_RANK = 128, 4
# Perceiver/Resampler attention heads are always 64 wide (diffusers infers heads = to_q rows // 64).
RESAMPLER_DIM_HEAD = 64


@dataclass(frozen=True)
class FluxDims:
    """Widths a Flux transformer exposes to an IP-Adapter, and its block counts (ComfyUI's FluxParams names)."""

    hidden_size: int
    num_heads: int
    depth: int  # double blocks (the XLabs IP-Adapter patches each)
    depth_single_blocks: int
    context_in_dim: int  # T5 width: the IP tokens' width
    vec_in_dim: int  # pooled CLIP-L width


FULL_FLUX = FluxDims(hidden_size=3072, num_heads=24, depth=19, depth_single_blocks=38, context_in_dim=4096, vec_in_dim=768)
# 128-wide heads (Flux's RoPE axes 16+56+56), few blocks; the T5 width stays 4096 so the released
# 4- and 16-token projections keep their exact row counts (diffusers tells v1 from v2 by 65536 rows).
TINY_FLUX = FluxDims(hidden_size=256, num_heads=2, depth=3, depth_single_blocks=2, context_in_dim=4096, vec_in_dim=32)
# XLabs Flux IP-Adapter versions: image tokens. v1 and v2 read CLIP ViT-L/14 image_embeds (768 wide, 224 px);
# the tiny stand-in is the tiny ViT-H (224 px, its image_embeds width).
XLABS_FLUX_TOKENS = {"v1": 4, "v2": 16}
FULL_VIT_L_EMBEDS = 768


@dataclass(frozen=True)
class SD3Dims:
    """An SD3 MMDiT (ComfyUI: hidden = 64 x depth, heads of 64) and InstantX's IP-Adapter for it."""

    depth: int  # joint blocks (one IP processor each)
    context_dim: int  # T5 / joint attention width
    pooled_dim: int  # adm_in_channels
    siglip_width: int  # SigLIP hidden states width (1152 for so400m)
    siglip_tokens: int  # 729 at 384 px
    resampler_dim: int  # TimeResampler width (1280), also the IP timestep-embedding width
    resampler_heads: int  # of 64
    resampler_depth: int
    queries: int  # image tokens (64)
    timestep_in_dim: int = 320

    @property
    def hidden_size(self) -> int:
        return 64 * self.depth


FULL_SD35_LARGE = SD3Dims(depth=38, context_dim=4096, pooled_dim=2048, siglip_width=1152, siglip_tokens=729,
                          resampler_dim=1280, resampler_heads=20, resampler_depth=4, queries=64)
# Resampler depth 4 as released: diffusers' SD3 loader assumes it.
TINY_SD35 = SD3Dims(depth=4, context_dim=64, pooled_dim=64, siglip_width=48, siglip_tokens=10, resampler_dim=128,
                    resampler_heads=2, resampler_depth=4, queries=8, timestep_in_dim=32)

# InstantX FLUX.1-dev IP-Adapter: SigLIP so400m pooled width and image tokens (full), tiny stand-ins.
INSTANTX_FLUX_FULL = (1152, 128)
INSTANTX_FLUX_TINY = (48, 4)
