"""The training attn2 patch: differentiable decoupled attention on a ModelPatcher clone.

    out = SDPA(q, k_text, v_text) + SDPA(q, K_ip, V_ip)

This is not the inference ``IPAttention`` (which caches K/V and never builds a graph): here K_ip / V_ip
are this step's tensors, set on a shared ``StepTokens`` before the UNet call, with gradients flowing to
the projection and the fused IP layers. The UNet is not copied; the clone only carries the patches.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

import comfy.ldm.modules.attention as comfy_attention

from ..layers import LayerSite, layer_map

__all__ = ["StepTokens", "TrainAttention", "patch_for_training", "sdpa_override"]


class StepTokens:
    """The current step's per-layer image K/V ({N: (K, V)}), written by the trainer before each UNet call."""

    def __init__(self) -> None:
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}


class TrainAttention:
    """attn2 replace patch for one layer: text attention plus the image branch of this step."""

    def __init__(self, site: LayerSite, tokens: StepTokens):
        self.site = site
        self.tokens = tokens

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict) -> Tensor:
        heads = extra_options["n_heads"]
        ip_k, ip_v = self.tokens.kv[self.site.ckpt_index]
        # PyTorch's fused attention for both branches: it has a backward on every device (some of
        # ComfyUI's kernels do not) and is the fast choice for a handful of image tokens.
        out = comfy_attention.attention_pytorch(q, k, v, heads)
        return out + comfy_attention.attention_pytorch(q, ip_k, ip_v, heads)

    def __deepcopy__(self, memo):  # ComfyUI 0.3.75 deep-copies model_options on clone
        return self

    def to(self, *args, **kwargs):
        return self


def sdpa_override(func: Callable, *args, **kwargs):
    """``optimized_attention_override`` for the unpatched attentions (self-attention) while training:
    PyTorch SDPA instead of ComfyUI's device default (sub-quadratic chunks on CPU, kernels without backward)."""
    kwargs.pop("_inside_attn_wrapper", None)
    kwargs["_inside_attn_wrapper"] = True  # tells ComfyUI's wrapper not to call the override again
    return comfy_attention.attention_pytorch(*args, **kwargs)


def patch_for_training(model, arch: str, tokens: StepTokens):
    """A clone of ``model`` with a TrainAttention at every cross-attention site of ``arch``."""
    patched = model.clone()
    for site in layer_map(arch):
        patched.set_model_attn2_replace(TrainAttention(site, tokens), *site.key)
    return patched
