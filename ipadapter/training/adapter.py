"""The trainable adapter: a projection model and every layer's to_k_ip / to_v_ip in ONE fused matrix.

Fusing the layers' K/V weights makes the image branch of a whole UNet one matmul per step (forward and
backward), one tensor for the optimiser, and one split whose backward is a single concatenation. The
checkpoint's per-layer tensors are views of that matrix (``ip_adapter_section``).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import layer_map, spatial_transformers

__all__ = ["FusedIPLayers", "TrainableAdapter", "text_kv_weights"]


class FusedIPLayers(nn.Module):
    """Rows [k_1; v_1; k_3; v_3; ...] of width C (the text context), in checkpoint order N = 1, 3, 5, ..."""

    def __init__(self, widths: Mapping[int, int], context_dim: int):
        super().__init__()
        self.order = tuple(sorted(widths))  # checkpoint indices N
        self.sizes = tuple(w for n in self.order for w in (widths[n], widths[n]))  # k rows, v rows
        self.weight = nn.Parameter(torch.empty(sum(self.sizes), context_dim))

    @classmethod
    def from_pairs(cls, pairs: Mapping[int, tuple[Tensor, Tensor]]) -> "FusedIPLayers":
        """From {N: (to_k_ip weight, to_v_ip weight)}: copied into the fused matrix as fp32."""
        widths = {n: k.shape[0] for n, (k, _) in pairs.items()}
        context = next(iter(pairs.values()))[0].shape[1]
        layers = cls(widths, context)
        with torch.no_grad():
            layers.weight.copy_(torch.cat([t.detach().float().cpu() for n in layers.order for t in pairs[n]]))
        return layers

    def kv(self, tokens: Tensor, dtype: torch.dtype) -> dict[int, tuple[Tensor, Tensor]]:
        """Image tokens [B, T, C] -> {N: (K [B, T, h], V [B, T, h])} in ``dtype``, from one matmul."""
        fused = F.linear(tokens.to(dtype), self.weight.to(dtype))  # [B, T, sum of rows]
        parts = torch.split(fused, self.sizes, dim=-1)
        return {n: (parts[2 * i], parts[2 * i + 1]) for i, n in enumerate(self.order)}

    def section(self) -> dict[str, Tensor]:
        """The checkpoint's ``ip_adapter`` tensors (contiguous fp32 copies)."""
        parts = torch.split(self.weight.detach(), self.sizes, dim=0)
        out = {}
        for i, n in enumerate(self.order):
            out[f"{n}.to_k_ip.weight"] = parts[2 * i].contiguous().clone()
            out[f"{n}.to_v_ip.weight"] = parts[2 * i + 1].contiguous().clone()
        return out


class TrainableAdapter(nn.Module):
    """``image_proj`` (a projection module whose keys are the checkpoint's) and the fused IP layers."""

    def __init__(self, image_proj: nn.Module, layers: FusedIPLayers):
        super().__init__()
        self.image_proj = image_proj
        self.layers = layers

    def sections(self) -> dict[str, dict[str, Tensor]]:
        """The two checkpoint sections, as every loader reads them."""
        proj = {k: v.detach().float().contiguous().clone() for k, v in self.image_proj.state_dict().items()}
        return {"image_proj": proj, "ip_adapter": self.layers.section()}


def text_kv_weights(unet: nn.Module, arch: str) -> dict[int, tuple[Tensor, Tensor]]:
    """{N: (attn2.to_k.weight, attn2.to_v.weight)} of every cross-attention layer, keyed by the checkpoint
    index N the layer map gives it: the reference's initialisation of to_k_ip / to_v_ip."""
    blocks = {(name, block_id): st for name, block_id, _, st in spatial_transformers(unet)}
    out = {}
    for site in layer_map(arch):
        attn2 = blocks[site.key[:2]].transformer_blocks[site.key[2]].attn2
        out[site.ckpt_index] = (attn2.to_k.weight, attn2.to_v.weight)
    return out
