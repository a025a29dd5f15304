"""The DiT block patch: XLabs-style image prompts on Flux's double blocks, through ComfyUI's block patch point.

ComfyUI's Flux calls ``transformer_options["patches_replace"]["dit"][("double_block", i)](args, extra)`` with
``args`` = {img, txt, vec, pe, attn_mask, transformer_options} and ``extra["original_block"]`` (runs the
block); the patch returns {"img", "txt"}. Both tested runtimes (0.3.75 and 0.33.0) pass the same keys.
For each active adapter the patch adds, after the block (as XLabs and diffusers do):

    img_out += sum over entries of  w_block * Attn(q_img, K_ip, V_ip)   [* mask]

where ``q_img`` is the block's own image-stream query (modulated LayerNorm, qkv, QK-RMSNorm, no RoPE),
computed from the block's input before the block runs (the block updates ``img`` in place).
A patch registered before at the same key (another extension's) is wrapped and called instead of the
original block; patch objects never change once attached.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from comfy.ldm.flux.layers import apply_mod
from comfy.patcher_extension import WrappersMP

from .attention import AdapterEntry, _current_sigma, patch_models
from .errors import ModelMismatchError
from .flux import ARCH_NAME, block_sites, resolve_block_weights, token_grid_for
from .layers import LayerSite


# transformer_options key: (rows, cols) of the image tokens of the latent being generated, noted by
# ``TokenGridWrapper`` before the blocks run. The blocks only see a token count, which is ambiguous, and
# with reference latents (Kontext) the image stream also holds the references' tokens after the latent's.
TOKEN_GRID = "ipadapter_next_token_grid"


class TokenGridWrapper:
    """DIFFUSION_MODEL wrapper (ComfyUI's wrapper chain: other extensions' wrappers stay) that notes the
    latent's image-token grid in a copy of the call's transformer_options, for the block patches' masks."""

    def __init__(self, patch_size: int):
        self.patch_size = patch_size

    def __call__(self, executor, x, *args, **kwargs):
        p = self.patch_size
        grid = ((x.shape[-2] + p // 2) // p, (x.shape[-1] + p // 2) // p)  # as Flux packs the latent
        if isinstance(kwargs.get("transformer_options"), dict):
            kwargs["transformer_options"] = {**kwargs["transformer_options"], TOKEN_GRID: grid}
        else:  # Flux passes (timestep, context, y, guidance, ref_latents, control, transformer_options)
            i = max((i for i, a in enumerate(args) if isinstance(a, dict)), default=None)
            if i is not None:
                args = (*args[:i], {**args[i], TOKEN_GRID: grid}, *args[i + 1:])
        return executor(x, *args, **kwargs)

    def __deepcopy__(self, memo):  # immutable
        return self


def add_token_grid(patched, diffusion_model) -> None:
    """Register ``TokenGridWrapper`` on ``patched`` (a clone) once."""
    if not patched.get_wrappers(WrappersMP.DIFFUSION_MODEL, TOKEN_GRID):
        patched.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, TOKEN_GRID,
                                     TokenGridWrapper(int(getattr(diffusion_model, "patch_size", 2))))


def image_token_mask(entry: AdapterEntry, img: torch.Tensor, n_chunks: int, options: dict) -> torch.Tensor:
    """``entry``'s mask on the image tokens ``img`` [B, L, C]: [rows, L, 1].

    On the latent's own grid when the wrapper noted it (tokens past it, a reference latent's, get 0: the
    mask says where the image prompt acts on the picture being made); otherwise (the model called
    without ComfyUI's wrappers) on the grid of L tokens closest to the mask's aspect ratio."""
    length = img.shape[1]
    grid = options.get(TOKEN_GRID)
    if grid is None or grid[0] * grid[1] > length:
        grid = token_grid_for(length, tuple(entry.mask.shape[-2:]))
    area = grid[0] * grid[1]
    # mask_batch places the mask on the grid it is given as the "latent" size.
    m = entry.mask_batch(img[:, :area], {"original_shape": grid}, n_chunks)
    if area < length:
        m = torch.cat([m, m.new_zeros(m.shape[0], length - area, m.shape[2])], dim=1)
    return m


def image_query(block, img: torch.Tensor, vec) -> torch.Tensor:
    """The image stream's attention query of a ComfyUI Flux DoubleStreamBlock: [B, heads, L, head_dim]."""
    mod = block.img_mod(vec)[0] if block.modulation else vec[0][0]
    x = apply_mod(block.img_norm1(img), 1 + mod.scale, mod.shift)
    qkv = block.img_attn.qkv(x)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, _ = block.img_attn.norm(q, k, v)
    return q


class BlockPatch:
    """A ``patches_replace["dit"]`` entry: the entries applied at one block and the patch it wraps (another
    extension's, or None for the block itself). Immutable; subclasses add the image branch (``__call__``)."""

    def __init__(self, site: LayerSite, entries: tuple, inner: Callable | None, diffusion_model):
        self.site = site
        self.entries = entries
        self.inner = inner
        self.diffusion_model = diffusion_model
        self._weighted = tuple(e for e in entries if site.key in e.weights)  # weight-0 blocks cost nothing

    # ComfyUI 0.3.75 deep-copies model_options on clone; the patch is immutable, so sharing is right.
    def __deepcopy__(self, memo):
        return self

    def to(self, *args, **kwargs):  # K/V follow the call's device; only a wrapped foreign patch may move
        move = getattr(self.inner, "to", None)
        moved = self.inner if move is None else move(*args, **kwargs)
        return self if moved is self.inner else type(self)(self.site, self.entries, moved, self.diffusion_model)

    def models(self) -> list:
        return patch_models(self.entries, self.inner)


class DoubleBlockIP(BlockPatch):
    """Replace patch for one double block: the wrapped block (or patch) plus every entry's image branch."""

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        sigma = _current_sigma(options)
        # One curve lookup per entry and call; a curve at 0 turns the entry off for this call.
        active = [(e, m) for e in self._weighted if e.active(sigma) for m in (e.multiplier(sigma),) if m != 0.0]
        q = None
        if active:  # before the block: it adds into img in place
            block = self.diffusion_model.double_blocks[self.site.ckpt_index]
            with torch.no_grad():
                q = image_query(block, args["img"], args["vec"])
        out = self.inner(args, extra) if self.inner is not None else extra["original_block"](args)
        if q is None:
            return out
        img = out["img"]
        batch, heads, length, head_dim = q.shape
        like = img[:, :length]  # [B, L, C]: batch, device and dtype for the cached K/V
        cond_or_uncond = tuple(options.get("cond_or_uncond") or (0,))
        total = None
        for entry, m in active:
            ip_k, ip_v = entry.kv_at(self.site, like, cond_or_uncond, None, m)  # cached K/V at the curve's weight
            k = ip_k.view(batch, -1, heads, head_dim).transpose(1, 2)
            v = ip_v.view(batch, -1, heads, head_dim).transpose(1, 2)
            ip = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, heads * head_dim)
            if entry.mask is not None:
                ip = ip * image_token_mask(entry, like, len(cond_or_uncond), options)
            total = ip if total is None else total + ip
        out = dict(out)
        out["img"] = img + total.to(img.dtype)
        return out


def dit_patches(model) -> dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})


def flux_model(model, adapter_name: str, spec, with_singles: bool = False):
    """The connected MODEL's Flux diffusion model, checked against the adapter; clear errors otherwise.
    ``with_singles``: the adapter has one layer per double and single block (InstantX), not per double block."""
    dm = model.get_model_object("diffusion_model")
    blocks = getattr(dm, "double_blocks", None)
    params = getattr(dm, "params", None)
    if blocks is None or params is None or not hasattr(params, "context_in_dim"):
        raise ModelMismatchError(
            f"{adapter_name} is a {ARCH_NAME} IP-Adapter ({spec.label}) but the connected model is "
            f"{type(dm).__name__}, not {ARCH_NAME}. Load a {ARCH_NAME}.1 model (Load Diffusion Model), or use an "
            f"IP-Adapter made for this model.")
    count = len(blocks) + (len(dm.single_blocks) if with_singles else 0)
    what = "double and single blocks" if with_singles else "double blocks"
    if count != spec.layer_count or params.context_in_dim != spec.context_dim:
        raise ModelMismatchError(
            f"{adapter_name} was made for a {ARCH_NAME} model with {spec.layer_count} {what} and text width "
            f"{spec.context_dim}; the connected model has {count} {what} and text width "
            f"{params.context_in_dim}. Use a {ARCH_NAME}.1 dev/schnell model.")
    return dm


def apply_dit_entries(model, entries: Sequence[AdapterEntry], block_count: int):
    """Clone ``model`` once and add every entry at every double block; the input is unchanged."""
    patched = model.clone()
    dm = patched.get_model_object("diffusion_model")
    current = dit_patches(patched)
    added = tuple(entries)
    for site in block_sites(block_count):
        key = ("double_block", site.ckpt_index)
        existing = current.get(key)
        if isinstance(existing, DoubleBlockIP):
            new = DoubleBlockIP(site, existing.entries + added, existing.inner, dm)
        else:
            new = DoubleBlockIP(site, added, existing, dm)
        patched.set_model_patch_replace(new, "dit", "double_block", site.ckpt_index)
    add_token_grid(patched, dm)
    return patched


def flux_blocks_checked(model, adapter, with_singles: bool = False):
    """``flux_model`` plus the IP layers' width against the model's."""
    dm = flux_model(model, adapter.name, adapter.spec, with_singles)
    hidden = next(iter(adapter.layer_widths.values()))
    if hidden != dm.hidden_size:
        raise ModelMismatchError(f"{adapter.name}'s IP layers are {hidden} wide; the connected {ARCH_NAME} model's "
                                 f"blocks are {dm.hidden_size} wide. Use an IP-Adapter made for this model.")
    return dm


def resolve(model, adapter, weight_type: str, weight, layer_weights=None,
            weight_composition: float | None = None) -> tuple[dict, int]:
    """Check the MODEL against a DiT ``adapter``; (per-block weights, double-block count) for its entry."""
    dm = flux_blocks_checked(model, adapter)
    count = len(dm.double_blocks)
    return resolve_block_weights(block_sites(count), weight_type, weight, layer_weights,
                                 weight_composition=weight_composition), count
