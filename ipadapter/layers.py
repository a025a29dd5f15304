"""The UNet architectures an IP-Adapter plugs into: their names, one explicit layer map each, and
reading which one a ComfyUI MODEL is.

ComfyUI calls an attn2 replace patch with ``extra_options["block"]`` = ("input", id) / ("middle", 0) /
("output", id) and ``block_index`` = the BasicTransformerBlock inside that block's SpatialTransformer.
Checkpoints number their ``N.to_k_ip`` layers in diffusers' processor registration order
(down blocks, then up blocks, then the mid block), attn1/attn2 alternating, so cross-attention layer i
of that walk is ``N = 2 * i + 1``. ComfyUI's ``transformer_index`` counts SpatialTransformers in
execution order (input, middle, output); the old extension's per-block weights are keyed by it.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from comfy.ldm.modules.attention import SpatialTransformer

AttnKey = tuple[str, int, int]


@dataclass(frozen=True)
class LayerSite:
    key: AttnKey  # ComfyUI attn2 patch key: (block name, block id, block_index)
    ckpt_index: int  # N of "N.to_k_ip.weight" in the checkpoint
    transformer_index: int  # ComfyUI's SpatialTransformer counter (execution order)
    width_mult: int = 1  # the layer's width in multiples of the UNet's model_channels (to_k_ip rows)

    @property
    def block(self) -> str:
        return self.key[0]


# (block id, transformer depth, width in multiples of model_channels) of every attention-carrying block.
_BLOCKS: dict[str, dict[str, tuple[tuple[int, int, int], ...]]] = {
    "sd15": {
        "input": ((1, 1, 1), (2, 1, 1), (4, 1, 2), (5, 1, 2), (7, 1, 4), (8, 1, 4)),
        "middle": ((0, 1, 4),),
        "output": ((3, 1, 4), (4, 1, 4), (5, 1, 4), (6, 1, 2), (7, 1, 2), (8, 1, 2), (9, 1, 1), (10, 1, 1), (11, 1, 1)),
    },
    "sdxl": {
        "input": ((4, 2, 2), (5, 2, 2), (7, 10, 4), (8, 10, 4)),
        "middle": ((0, 10, 4),),
        "output": ((0, 10, 4), (1, 10, 4), (2, 10, 4), (3, 2, 2), (4, 2, 2), (5, 2, 2)),
    },
}
ARCHITECTURES = tuple(_BLOCKS)
ARCH_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}  # how messages name each architecture
_EXECUTION_ORDER = ("input", "middle", "output")
_CHECKPOINT_ORDER = ("input", "output", "middle")  # diffusers: down, up, mid


@lru_cache(maxsize=None)
def layer_map(arch: str) -> tuple[LayerSite, ...]:
    """Every cross-attention site of ``arch`` in execution order (16 for sd15, 70 for sdxl)."""
    if arch not in _BLOCKS:
        raise ValueError(f"unknown UNet architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    blocks = _BLOCKS[arch]
    ckpt_index: dict[AttnKey, int] = {}
    for name in _CHECKPOINT_ORDER:
        for block_id, depth, _ in blocks[name]:
            for j in range(depth):
                ckpt_index[(name, block_id, j)] = 2 * len(ckpt_index) + 1
    sites = []
    t_idx = 0
    for name in _EXECUTION_ORDER:
        for block_id, depth, mult in blocks[name]:
            for j in range(depth):
                key = (name, block_id, j)
                sites.append(LayerSite(key=key, ckpt_index=ckpt_index[key], transformer_index=t_idx, width_mult=mult))
            t_idx += 1
    return tuple(sites)


def transformer_count(arch: str) -> int:
    """Number of SpatialTransformers (distinct transformer_index values): 16 for sd15, 11 for sdxl."""
    return layer_map(arch)[-1].transformer_index + 1


def arch_for_layer_count(count: int) -> str | None:
    """The architecture with ``count`` cross-attention layers (what a checkpoint's to_k_ip keys count)."""
    for arch in ARCHITECTURES:
        if len(layer_map(arch)) == count:
            return arch
    return None


# --------------------------------------------------------------------------------------------------
# Reading a ComfyUI UNet
# --------------------------------------------------------------------------------------------------
_BLOCK_GROUPS = (("input", "input_blocks"), ("middle", "middle_block"), ("output", "output_blocks"))


def spatial_transformers(unet) -> Iterator[tuple[str, int, str, SpatialTransformer]]:
    """Every SpatialTransformer of a ComfyUI UNet in execution order, as (block name, block id,
    state-dict path such as ``input_blocks.1.1``, module). Its position inside a block is read, not
    assumed. Raises AttributeError for a model that is not a UNet (DiT / flow models)."""
    for name, attr in _BLOCK_GROUPS:
        group = getattr(unet, attr)
        blocks = [(0, group)] if name == "middle" else list(enumerate(group))
        for block_id, block in blocks:
            prefix = attr if name == "middle" else f"{attr}.{block_id}"
            for pos, layer in enumerate(block):
                if isinstance(layer, SpatialTransformer):
                    yield name, block_id, f"{prefix}.{pos}", layer


def unet_attn2_keys(model) -> list[AttnKey]:
    """The attn2 keys ComfyUI will emit for this MODEL, read from its UNet's SpatialTransformers."""
    unet = model.get_model_object("diffusion_model")
    return [(name, block_id, j) for name, block_id, _, st in spatial_transformers(unet)
            for j in range(len(st.transformer_blocks))]


def model_arch(model) -> str | None:
    """``"sd15"`` / ``"sdxl"`` when the MODEL's UNet has exactly that layer map; None otherwise."""
    try:
        keys = unet_attn2_keys(model)
    except AttributeError:  # not a UNet (DiT/flow models)
        return None
    for arch in ARCHITECTURES:
        if keys == [site.key for site in layer_map(arch)]:  # layer_map is in execution order too
            return arch
    return None
