"""InstantX FLUX.1-dev image prompts on ComfyUI's Flux, through the double- and single-block patch points.

InstantX's processor, in every block (``q`` after the block's QK-RMSNorm and before RoPE):

    double block:  attn_img += w * Attn(q_img, RMSNorm(K_ip), V_ip)     (image stream, before img_attn.proj)
    single block:  attn     += w * Attn(q,     RMSNorm(K_ip), V_ip)     (whole text+image sequence, before linear2)

with K_ip, V_ip = to_k_ip(tokens), to_v_ip(tokens) split per head, and RMSNorm per head without weights.
The term sits inside the block (the double block's MLP reads the updated stream), so the patch computes it
from the block's input, then runs the wrapped block (or another extension's patch) with an attention
override in a copy of ``transformer_options`` that adds it to the block's one attention output (chaining an
override already there), as ``sd3_patch`` does. Both tested runtimes call ``("double_block", i)`` with
{img, txt, vec, pe, attn_mask, transformer_options} and ``("single_block", i)`` with {img (= text+image
tokens), vec, pe, attn_mask, transformer_options}.

K and V come from the shared ``AdapterEntry`` cache (computed once per run, V at the block's weight).
A mask multiplies the image tokens' term; in single blocks the text tokens keep theirs.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from comfy.ldm.flux.layers import apply_mod

from .attention import AdapterEntry, _current_sigma
from .dit_patch import BlockPatch, add_token_grid, flux_blocks_checked, image_query, image_token_mask
from .flux import resolve_block_weights
from .flux_instantx import NORM_EPS, block_sites, processor_weights
from .layers import LayerSite

_IMG_LEN = "ipadapter_next_img_tokens"  # image-token count, noted by the double blocks for the single ones


def single_query(block, x: torch.Tensor, vec) -> torch.Tensor:
    """The attention query of a ComfyUI Flux SingleStreamBlock over its whole sequence: [B, heads, L, head_dim]."""
    mod = block.modulation(vec)[0] if block.modulation else vec
    qkv = block.linear1(apply_mod(block.pre_norm(x), 1 + mod.scale, mod.shift))[..., :3 * block.hidden_size]
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, _ = block.norm(q, k, v)
    return q


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS)


class InstantXBlockIP(BlockPatch):
    """Replace patch for one double or single block: every entry's IP term added inside the block."""

    @property
    def single(self) -> bool:
        return self.site.key[0] == "single_block"

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        run = self.inner if self.inner is not None else (lambda a, e: e["original_block"](a))
        if not self.single and isinstance(options, dict):
            options[_IMG_LEN] = args["img"].shape[1]  # this call's dict; the single blocks read it
        sigma = _current_sigma(options)
        active = [(e, m) for e in self._weighted if e.active(sigma) for m in (e.multiplier(sigma),) if m != 0.0]
        if not active:
            return run(args, extra)
        ip = self._ip(active, args, options)
        previous = options.get("optimized_attention_override")
        if self.single:
            place = slice(None)
        else:
            block = self.diffusion_model.double_blocks[self.site.transformer_index]
            n = ip.shape[1]
            place = slice(0, n) if getattr(block, "flipped_img_txt", False) else slice(-n, None)

        def add_image_prompt(func, *a, **kw):
            out = previous(func, *a, **kw) if previous is not None else func(*a, **kw)
            out = out.clone()
            out[:, place] += ip.to(out.dtype)
            return out

        args = dict(args)
        args["transformer_options"] = dict(options, optimized_attention_override=add_image_prompt)
        return run(args, extra)

    def _ip(self, active, args: dict, options: dict) -> torch.Tensor:
        dm = self.diffusion_model
        with torch.no_grad():
            if self.single:
                q = single_query(dm.single_blocks[self.site.transformer_index], args["img"], args["vec"])
            else:
                q = image_query(dm.double_blocks[self.site.transformer_index], args["img"], args["vec"])
            batch, heads, length, head_dim = q.shape
            like = args["img"][:, :length]  # batch, device and dtype for the cached K/V
            cond_or_uncond = tuple(options.get("cond_or_uncond") or (0,))
            total = None
            for entry, m in active:
                ip_k, ip_v = entry.kv_at(self.site, like, cond_or_uncond, None, m)  # V at the block's weight
                k = rms_norm(ip_k.view(batch, -1, heads, head_dim).transpose(1, 2))
                v = ip_v.view(batch, -1, heads, head_dim).transpose(1, 2)
                out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, heads * head_dim)
                if entry.mask is not None:
                    out = self._masked(entry, out, options, len(cond_or_uncond))
                total = out if total is None else total + out
        return total

    def _masked(self, entry: AdapterEntry, out: torch.Tensor, options: dict, n_chunks: int) -> torch.Tensor:
        img_len = out.shape[1]
        if self.single:  # 0.33.0 names the image slice [start, end) of the joint sequence; 0.3.75: the
            img_slice = options.get("img_slice")  # count the double blocks noted
            img_len = (int(img_slice[1]) - int(img_slice[0])) if img_slice else int(options.get(_IMG_LEN, out.shape[1]))
        img = out[:, out.shape[1] - img_len:]
        mask = image_token_mask(entry, img, n_chunks, options)
        return torch.cat([out[:, :out.shape[1] - img_len], img * mask], dim=1)


def resolve(model, adapter, weight_type: str, weight, layer_weights=None,
            weight_composition: float | None = None) -> tuple[dict, tuple[LayerSite, ...]]:
    """Check the MODEL against the adapter; (per-block weights, sites of every processor)."""
    dm = flux_blocks_checked(model, adapter, with_singles=True)
    doubles, singles = len(dm.double_blocks), len(dm.single_blocks)
    sites = block_sites(doubles, singles)
    per = None if layer_weights is None else processor_weights(layer_weights, doubles, singles)
    return resolve_block_weights(sites, weight_type, weight, per, weight_composition=weight_composition), sites


def apply_instantx_entries(model, entries, sites: tuple[LayerSite, ...]):
    """Clone ``model`` once and add the entries at every double and single block; the input is unchanged."""
    patched = model.clone()
    dm = patched.get_model_object("diffusion_model")
    current = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for site in sites:
        kind, index = site.key[0], site.transformer_index
        existing = current.get((kind, index))
        if isinstance(existing, InstantXBlockIP):
            new = InstantXBlockIP(site, existing.entries + tuple(entries), existing.inner, dm)
        else:
            new = InstantXBlockIP(site, tuple(entries), existing, dm)
        patched.set_model_patch_replace(new, "dit", kind, index)
    add_token_grid(patched, dm)
    return patched
