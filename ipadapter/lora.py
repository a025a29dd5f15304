"""The FaceID LoRA as ComfyUI weight patches on a cloned MODEL.

FaceID checkpoints were trained together with a rank-128 LoRA on q, k, v and out of every attention
layer of the UNet (attn1 and attn2). The checkpoint keeps it inside ``ip_adapter`` as
``N.to_{q,k,v,out}_lora.{down,up}.weight``, where ``N`` is the diffusers processor index (down, up, mid
blocks; attn1 = even N, attn2 = the odd N after it). ``layers.layer_map`` already maps every odd N to
its ComfyUI attention site, so attn1 of the same transformer block is ``N - 1``.

The patch is ComfyUI's own "lora" weight adapter (``W + strength * up @ down``, no alpha scaling, as the
reference's ``LoRALinearLayer`` with ``network_alpha=None``), added with ``ModelPatcher.add_patches`` on
a clone: ComfyUI merges and unmerges it with the rest of its patches. The separately published
``*_lora.safetensors`` files (kohya or diffusers key names) go through ComfyUI's LoRA loader unchanged.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

from torch import Tensor

import comfy.lora
import comfy.lora_convert  # noqa: F401  (kohya/diffusers key conversions ComfyUI applies to LoRA files)
import comfy.utils
from comfy.weight_adapter.lora import LoRAAdapter

from .errors import LoraError
from .inputs import require_finite
from .layers import AttnKey, layer_map, spatial_transformers

__all__ = [
    "LORA_KEY",
    "LORA_TARGETS",
    "LoraError",
    "apply_faceid_lora",
    "apply_lora_file",
    "checkpoint_lora_patches",
    "checkpoint_lora_rank",
    "transformer_block_paths",
]

# Checkpoint projection name -> weight inside ComfyUI's CrossAttention (to_out is Sequential(Linear, Dropout)).
LORA_TARGETS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
# The LoRA's keys inside a checkpoint's ip_adapter section: processor N, projection, matrix.
LORA_KEY = re.compile(r"^(\d+)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def checkpoint_lora_rank(ip_sd: Mapping[str, Tensor]) -> int | None:
    """Rank of the FaceID LoRA in a checkpoint's ip_adapter section (rows of its first down matrix;
    shapes are enough, meta tensors work); None when the section carries no LoRA."""
    downs = sorted(k for k in ip_sd if (m := LORA_KEY.match(k)) and m.group(3) == "down")
    return int(ip_sd[downs[0]].shape[0]) if downs else None


def transformer_block_paths(model) -> dict[AttnKey, str]:
    """ComfyUI attention site ``(block, id, j)`` -> state-dict prefix of its BasicTransformerBlock,
    e.g. ``("input", 1, 0) -> "diffusion_model.input_blocks.1.1.transformer_blocks.0"``, read from the
    MODEL's UNet."""
    unet = model.get_model_object("diffusion_model")
    return {(name, block_id, j): f"diffusion_model.{path}.transformer_blocks.{j}"
            for name, block_id, path, st in spatial_transformers(unet) for j in range(len(st.transformer_blocks))}


def _processor_sites(arch: str) -> dict[int, tuple[AttnKey, str]]:
    """Checkpoint processor index N -> (attention site, "attn1" | "attn2")."""
    sites: dict[int, tuple[AttnKey, str]] = {}
    for site in layer_map(arch):
        sites[site.ckpt_index] = (site.key, "attn2")
        sites[site.ckpt_index - 1] = (site.key, "attn1")
    return sites


def checkpoint_lora_patches(lora_sd: Mapping[str, Tensor], arch: str, model, source: str = "adapter") -> dict[str, LoRAAdapter]:
    """``{ComfyUI weight key: LoRAAdapter}`` for the ``N.to_*_lora`` tensors of a FaceID checkpoint."""
    pairs: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, tensor in lora_sd.items():
        m = LORA_KEY.match(key)
        if m:
            pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = tensor
    if not pairs:
        raise LoraError(f"{source} carries no FaceID LoRA (no 'N.to_q_lora.down.weight' keys in ip_adapter).")
    sites = _processor_sites(arch)
    paths = transformer_block_paths(model)
    model_keys = set(model.model.state_dict().keys())
    patches: dict[str, LoRAAdapter] = {}
    for (n, proj), mats in sorted(pairs.items()):
        if set(mats) != {"down", "up"}:
            raise LoraError(f"{source}: LoRA of processor {n}.{proj} has only its {next(iter(mats))} matrix.")
        if n not in sites:
            raise LoraError(f"{source}: LoRA processor index {n} does not exist in an {arch} UNet "
                            f"({len(sites)} attention processors).")
        site, attn = sites[n]
        if site not in paths:
            raise LoraError(f"{source}: the connected model has no attention layer at {site}; the adapter is for {arch}.")
        weight_key = f"{paths[site]}.{attn}.{LORA_TARGETS[proj]}.weight"
        if weight_key not in model_keys:
            raise LoraError(f"{source}: the connected model has no weight {weight_key}.")
        up, down = mats["up"], mats["down"]
        # (up, down, alpha, mid, dora_scale, reshape): alpha None means no alpha/rank scaling.
        patches[weight_key] = LoRAAdapter(set(), (up, down, None, None, None, None))
    return patches


def _check_shapes(model, patches: Mapping[str, object], source: str) -> None:
    """Every low-rank patch must produce the model weight's shape (else ComfyUI would only log and skip)."""
    sd = model.model.state_dict()
    wrong = []
    for key, patch in patches.items():
        if not isinstance(patch, LoRAAdapter) or sd[key].ndim != 2:
            continue
        up, down = patch.weights[0], patch.weights[1]
        if (up.shape[0], down.shape[1]) != tuple(sd[key].shape):
            wrong.append(f"{key}: LoRA {up.shape[0]}x{down.shape[1]}, model {sd[key].shape[0]}x{sd[key].shape[1]}")
    if wrong:
        raise LoraError(f"{source}: {len(wrong)} of its {len(patches)} LoRA weights do not fit the connected model "
                        f"(e.g. {wrong[0]}); it belongs to another base model.")


def apply_faceid_lora(model, adapter, strength: float):
    """A clone of ``model`` with the adapter's own FaceID LoRA patched in at ``strength`` (0 returns the
    model unchanged). ``adapter`` is a loaded ``Adapter`` whose checkpoint holds the LoRA."""
    require_finite("strength", strength)
    if strength == 0:
        return model
    patches = checkpoint_lora_patches(adapter.extra, adapter.spec.arch, model, adapter.name)
    _check_shapes(model, patches, adapter.name)
    patched = model.clone()
    patched.add_patches(patches, strength)
    return patched


def apply_lora_file(model, lora: str | os.PathLike | Mapping[str, Tensor], strength: float):
    """A clone of ``model`` with a separately published FaceID LoRA file (``*_lora.safetensors``, kohya or
    diffusers key names) at ``strength``, through ComfyUI's own LoRA loader (model only, as the old
    Unified FaceID loader did)."""
    require_finite("lora_strength", strength)
    if strength == 0:
        return model
    name = os.path.basename(lora) if not isinstance(lora, Mapping) else "LoRA"
    sd = comfy.utils.load_torch_file(str(lora), safe_load=True) if not isinstance(lora, Mapping) else lora
    convert = getattr(getattr(comfy, "lora_convert", None), "convert_lora", None)
    sd = convert(sd) if convert is not None else sd
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(sd, key_map, log_missing=False)
    if not patches:
        sample = ", ".join(sorted(sd)[:3])
        raise LoraError(f"{name} matches no weight of the connected model (keys like {sample}); it is not a "
                        "LoRA for this UNet, or the FaceID LoRA of another base model.")
    _check_shapes(model, patches, name)
    patched = model.clone()
    patched.add_patches(patches, strength)
    return patched
