"""SigLIP's pooled vector (the vision model's attention-pooling head), which ComfyUI's CLIP vision loader leaves
out: InstantX's FLUX.1-dev IP-Adapter reads it (``pooler_output`` of transformers' ``SiglipVisionModel``).

ComfyUI's SigLIP gives ``last_hidden_state`` after the final LayerNorm, the head's input. The head's weights
stay in the SigLIP file (``vision_model.head.*``: a learned probe, one multi-head attention of the probe over
the tokens, LayerNorm, residual MLP with tanh-GELU); this module reads them from the file and runs the head.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

import comfy.model_management as mm
import comfy.utils

from .encode import encode_images
from .errors import EncoderMismatchError

HEAD_PREFIXES = ("vision_model.head.", "head.")
LAYER_NORM_EPS = 1e-6  # SigLIP's layer_norm_eps
_HEAD_KEYS = ("probe", "attention.in_proj_weight", "attention.in_proj_bias", "attention.out_proj.weight",
              "attention.out_proj.bias", "layernorm.weight", "layernorm.bias", "mlp.fc1.weight", "mlp.fc1.bias",
              "mlp.fc2.weight", "mlp.fc2.bias")
_heads: dict = {}
_lock = threading.Lock()


def read_head(path: str) -> dict[str, torch.Tensor]:
    """The pooling head's tensors from a SigLIP file (cached per path and modification time)."""
    import os

    key = (path, os.path.getmtime(path))
    with _lock:
        if key in _heads:
            return _heads[key]
    sd = comfy.utils.load_torch_file(path, safe_load=True)
    for prefix in HEAD_PREFIXES:
        head = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if head:
            break
    missing = [k for k in _HEAD_KEYS if k not in head]
    if missing:
        raise EncoderMismatchError(
            f"{os.path.basename(path)} has no complete SigLIP attention-pooling head (missing vision_model.head."
            f"{', vision_model.head.'.join(missing[:3])}...). Use a SigLIP so400m-patch14-384 file saved with its "
            f"head (e.g. the vision part of google/siglip-so400m-patch14-384).")
    with _lock:
        _heads[key] = head
    return head


def pool(head: dict[str, torch.Tensor], tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, D] final-normed tokens -> [B, D] pooled vectors."""
    h = {k: v.to(tokens.device, tokens.dtype) for k, v in head.items()}
    b, _, d = tokens.shape
    if h["probe"].shape[-1] != d:
        raise EncoderMismatchError(f"the SigLIP head is {h['probe'].shape[-1]} wide but the connected encoder's "
                                   f"tokens are {d} wide: use the head of the same SigLIP model")
    wq, wk, wv = h["attention.in_proj_weight"].chunk(3)
    bq, bk, bv = h["attention.in_proj_bias"].chunk(3)

    def split(x):
        return x.view(b, -1, heads, d // heads).transpose(1, 2)

    q = split(F.linear(h["probe"].expand(b, -1, -1), wq, bq))
    attn = F.scaled_dot_product_attention(q, split(F.linear(tokens, wk, bk)), split(F.linear(tokens, wv, bv)))
    x = F.linear(attn.transpose(1, 2).reshape(b, -1, d), h["attention.out_proj.weight"], h["attention.out_proj.bias"])
    y = F.layer_norm(x, (d,), h["layernorm.weight"], h["layernorm.bias"], eps=LAYER_NORM_EPS)
    y = F.linear(F.gelu(F.linear(y, h["mlp.fc1.weight"], h["mlp.fc1.bias"]), approximate="tanh"),
                 h["mlp.fc2.weight"], h["mlp.fc2.bias"])
    return (x + y)[:, 0]


def pooled_embeds(clip_vision, images: torch.Tensor, siglip_path: str) -> torch.Tensor:
    """IMAGE [B, H, W, 3] -> [B, D] pooled SigLIP vectors from the connected encoder and the file's head."""
    if hasattr(getattr(clip_vision.model, "visual_projection", None), "weight"):  # a CLIP, not SigLIP
        raise EncoderMismatchError("the connected CLIP vision model is not SigLIP; load the SigLIP so400m-patch14-384 "
                                   "file with Load CLIP Vision")
    head = read_head(siglip_path)
    tokens = encode_images(clip_vision, images, "last_hidden_state")
    heads = clip_vision.model.vision_model.encoder.layers[0].self_attn.heads
    with torch.no_grad():
        return pool(head, tokens.float(), heads).to(mm.intermediate_device())
