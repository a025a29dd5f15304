"""InstantX SD3.5 image prompts on ComfyUI's MMDiT, through the joint-block patch point.

ComfyUI's MMDiT calls ``patches_replace["dit"][("double_block", i)](args, extra)`` with ``args`` = {img, txt,
vec, transformer_options} and ``extra["original_block"]`` (same on 0.3.75 and 0.33.0). InstantX's processor
adds, inside the block's attention and before its output projection, for the image tokens:

    attn_img += w * Attn(norm_q(q), [norm_k(k); norm_ip_k(K_ip)], [v; V_ip])

with q, k, v the image stream's raw projections and K_ip, V_ip from the image tokens adaptively normed with
the resampler's timestep embedding. The patch computes q, k, v from the block's input, then runs the wrapped
block (or another extension's patch) with an attention override in a copy of ``transformer_options`` that adds
the term to the image part of the block's one joint attention (chaining an override already set).

The resampler's tokens depend on the timestep: they and each block's K/V are cached for the current timestep
(one sampling step), not for the run.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from comfy.ldm.modules.diffusionmodules.mmdit import modulate, split_qkv

from .attention import _current_sigma, _resize_batch
from .curves import bind_curve
from .dit_patch import BlockPatch
from .encode import combine_embeds
from .errors import ModelMismatchError
from .flux import resolve_block_weights, token_grid_for
from .layers import LayerSite
from .masks import resample_mask
from .sd3 import ARCH_NAME, rms_norm


def block_sites(count: int) -> tuple[LayerSite, ...]:
    return tuple(LayerSite(key=("double_block", n, 0), ckpt_index=n, transformer_index=n) for n in range(count))


@dataclass(frozen=True, eq=False)
class SD3Entry:
    """One application: features of the reference(s) and negative, resampled per timestep. Immutable."""

    resampler: Any
    layers: Any
    patchers: tuple
    cond: torch.Tensor  # [1 or N, T, D] SigLIP features (N images joined along tokens after resampling)
    uncond: torch.Tensor
    weights: Mapping  # site key -> LayerWeight; a weight may be per latent (a 1-D tensor)
    timestep: Callable[[torch.Tensor], torch.Tensor]  # sigma -> the model's timestep (what the resampler reads)
    sigma_start: float = float("inf")
    sigma_end: float = 0.0
    mask: torch.Tensor | None = None
    mask_interpolation: str = "bilinear"
    curve: Any = None  # curves.BoundCurve: weight multiplier per call, from the sigma
    unfold: bool = False  # image i conditions latent i (Batch nodes) instead of all images every latent
    _cache: dict = field(default_factory=dict, repr=False)  # this step's tokens and K/V
    _masks: dict = field(default_factory=dict, repr=False)  # (grid, device, dtype) -> resampled mask, kept
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def active(self, sigma: float | None) -> bool:
        return sigma is None or self.sigma_end <= sigma <= self.sigma_start

    def multiplier(self, sigma: float | None) -> float:
        return 1.0 if self.curve is None else self.curve.at(sigma)

    def mask_on(self, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """The mask on the image-token grid, resampled once per grid, device and dtype for the whole run."""
        key = (grid, like.device, like.dtype)
        hit = self._masks.get(key)
        if hit is None:
            hit = resample_mask(self.mask, grid, self.mask_interpolation).to(like.device, like.dtype)
            with self._lock:
                self._masks[key] = hit
        return hit

    def _step_cache(self, sigma: float | None) -> dict:
        with self._lock:
            if self._cache.get("sigma", object()) != sigma:  # a new step: drop the last step's tensors
                self._cache.clear()
                self._cache["sigma"] = sigma
            return self._cache

    def kv(self, index: int, sigma: float | None, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(K_c, V_c, K_u, V_u) of block ``index`` at this step: [1, heads, tokens, 64] each (all images
        joined along the tokens), or unfolded [images, heads, tokens, 64]."""
        cache = self._step_cache(sigma)
        key = ("kv", index, like.device, like.dtype)
        if key in cache:
            return cache[key]
        tokens = self._tokens(cache, sigma, like)
        params = {k: v.to(like.device, like.dtype) for k, v in self.layers[str(index)].state_dict().items()}
        with torch.no_grad():
            out = []
            for t, temb in tokens:
                k, v = _layer_kv(params, t, temb)
                if not self.unfold:  # several images share one softmax: join them along the tokens
                    k, v = (a.transpose(0, 1).reshape(1, a.shape[1], -1, a.shape[-1]) for a in (k, v))
                out += [k, v]
        out = tuple(out)
        with self._lock:
            cache[key] = out
        return out

    def _tokens(self, cache: dict, sigma: float | None, like: torch.Tensor):
        key = ("tokens", like.device, like.dtype)
        if key in cache:
            return cache[key]
        s = torch.tensor([1.0 if sigma is None else sigma], device=like.device)
        p = next(self.resampler.parameters())
        with torch.no_grad():
            t = self.timestep(s).to(p.device, torch.float32)
            pairs = []
            for feats in (self.cond, self.uncond):
                x = feats.to(p.device, p.dtype)
                tokens, temb = self.resampler(x, t.expand(x.shape[0]))
                pairs.append((tokens.to(like.device, like.dtype), temb.to(like.device, like.dtype)))
        with self._lock:
            cache[key] = pairs
        return pairs


def _layer_kv(params: dict, tokens: torch.Tensor, temb: torch.Tensor):
    """A JointIPLayer's (K, V) with its parameters cast to the compute dtype/device."""
    shift, scale = F.linear(F.silu(temb), params["norm_ip.linear.weight"], params["norm_ip.linear.bias"]).chunk(2, dim=1)
    n = F.layer_norm(tokens, tokens.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    b, heads = n.shape[0], params["to_k_ip.weight"].shape[0] // 64
    k = F.linear(n, params["to_k_ip.weight"]).view(b, -1, heads, 64).transpose(1, 2)
    v = F.linear(n, params["to_v_ip.weight"]).view(b, -1, heads, 64).transpose(1, 2)
    return rms_norm(k, params["norm_ip_k.weight"]), v


class JointBlockIP(BlockPatch):
    """Replace patch for one MMDiT joint block; wraps what was registered there before."""

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        sigma = _current_sigma(options)
        # One curve lookup per entry and call; a curve at 0 turns the entry off for this call.
        active = [(e, m) for e in self._weighted if e.active(sigma) for m in (e.multiplier(sigma),) if m != 0.0]
        run = self.inner if self.inner is not None else (lambda a, e: e["original_block"](a))
        if not active:
            return run(args, extra)
        ip = self._ip(active, args, options, sigma)
        previous = options.get("optimized_attention_override")

        def add_image_prompt(func, *a, **kw):
            out = previous(func, *a, **kw) if previous is not None else func(*a, **kw)
            n = ip.shape[1]
            return torch.cat([out[:, :-n], out[:, -n:] + ip.to(out.dtype)], dim=1)

        args = dict(args)
        args["transformer_options"] = dict(options, optimized_attention_override=add_image_prompt)
        return run(args, extra)

    def _ip(self, active, args, options, sigma) -> torch.Tensor:
        block = self.diffusion_model.joint_blocks[self.site.ckpt_index].x_block
        x, c = args["img"], args["vec"]
        with torch.no_grad():
            shift, scale = block.adaLN_modulation(c).chunk(6, dim=1)[:2]
            q, k, v = split_qkv(block.attn.qkv(modulate(block.norm1(x), shift, scale)), block.attn.head_dim)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, L, 64]
            cond_or_uncond = tuple(options.get("cond_or_uncond") or (0,))
            per = x.shape[0] // len(cond_or_uncond)
            total = None
            for entry, multiplier in active:
                layer = entry.layers[str(self.site.ckpt_index)]
                wq = layer.norm_q["weight"].to(x.device, x.dtype)
                wk = layer.norm_k["weight"].to(x.device, x.dtype)
                kc, vc, ku, vu = entry.kv(self.site.ckpt_index, sigma, x)
                ip_k = torch.cat([_resize_batch(ku if ch == 1 else kc, per) for ch in cond_or_uncond])
                ip_v = torch.cat([_resize_batch(vu if ch == 1 else vc, per) for ch in cond_or_uncond])
                out = F.scaled_dot_product_attention(rms_norm(q, wq), torch.cat([rms_norm(k, wk), ip_k], dim=2),
                                                     torch.cat([v, ip_v], dim=2))
                out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1) * _rows(
                    entry.weights[self.site.key].weight * multiplier, per, len(cond_or_uncond), x)
                if entry.mask is not None:
                    grid = token_grid_for(x.shape[1], tuple(entry.mask.shape[-2:]))
                    m = entry.mask_on(grid, x)
                    out = out * (m if m.shape[0] == 1 else _resize_batch(m, per).repeat(len(cond_or_uncond), 1, 1))
                total = out if total is None else total + out
        return total


def _rows(w, per: int, chunks: int, like: torch.Tensor):
    """A number as is; per-latent weights [F] as [rows, 1, 1] laid out like the batch (one chunk per
    cond_or_uncond entry, each cut or padded to the latents of this call)."""
    if not isinstance(w, torch.Tensor):
        return w
    return _resize_batch(w.reshape(-1, 1, 1), per).repeat(chunks, 1, 1).to(like.device, like.dtype)


def mmdit_model(model, adapter):
    dm = model.get_model_object("diffusion_model")
    blocks = getattr(dm, "joint_blocks", None)
    if blocks is None:
        raise ModelMismatchError(f"{adapter.name} is an {ARCH_NAME} IP-Adapter ({adapter.spec.label}) but the connected "
                                 f"model is {type(dm).__name__}, not an SD3 MMDiT. Load SD3.5 Large.")
    hidden = next(iter(adapter.layer_widths.values()))
    if len(blocks) != adapter.spec.layer_count or blocks[0].x_block.attn.qkv.in_features != hidden:
        raise ModelMismatchError(
            f"{adapter.name} was made for an SD3 MMDiT with {adapter.spec.layer_count} joint blocks of width {hidden} "
            f"(SD3.5 Large); the connected model has {len(blocks)} blocks of width "
            f"{blocks[0].x_block.attn.qkv.in_features}. Use SD3.5 Large.")
    if any(getattr(b.x_block, "x_block_self_attn", False) for b in blocks):
        raise ModelMismatchError(f"{adapter.name}: the connected MMDiT has extra self-attention blocks (SD3.5 Medium); "
                                 "the InstantX adapter is for SD3.5 Large.")
    return dm


def apply_sd3_adapter(model, adapter, embeds, *, weight=1.0, weight_type: str = "linear", layer_weights=None,
                      unfold: bool = False, combine: str = "concat", start_at: float = 0.0, end_at: float = 1.0,
                      embeds_scaling: str = "V only", attn_mask=None, mask_interpolation: str = "bilinear",
                      token_transform=None, weight_composition=None, boost=None, weight_curve=None):
    """``apply.apply_adapter`` for InstantX SD3.5: a patched clone of ``model``."""
    from .weights import as_frame_weights

    w = as_frame_weights(weight)
    if isinstance(w, torch.Tensor) and not unfold:  # a schedule without unfold: its first value, as on the UNet
        w = float(w[0])
    if embeds_scaling != "V only" or token_transform is not None:
        raise ValueError(f"{adapter.name}: on {ARCH_NAME} the weight scales the image prompt's attention output; "
                         f"embeds_scaling {embeds_scaling!r} and token transforms are not available (use 'V only').")
    dm = mmdit_model(model, adapter)
    sites = block_sites(len(dm.joint_blocks))
    weights = resolve_block_weights(sites, weight_type, w, layer_weights, ARCH_NAME, weight_composition)
    cond, uncond = embeds.cond, embeds.uncond
    if combine != "concat" and cond.shape[0] > 1 and not unfold:
        cond, uncond = combine_embeds(cond, combine), uncond[:1]
    # Several images: each is resampled on its own, their tokens joined (one softmax over all).
    sampling = model.get_model_object("model_sampling")
    entry = SD3Entry(resampler=adapter.model.image_proj, layers=adapter.model.ip_adapter, patchers=(adapter.patcher,),
                     cond=cond, uncond=uncond, weights=weights, timestep=sampling.timestep,
                     sigma_start=float(sampling.percent_to_sigma(start_at)),
                     sigma_end=float(sampling.percent_to_sigma(end_at)),
                     mask=None if attn_mask is None else (attn_mask[None] if attn_mask.dim() == 2 else attn_mask),
                     mask_interpolation=mask_interpolation, curve=bind_curve(weight_curve, sampling), unfold=unfold)
    patched = model.clone()
    current = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for site in sites:
        existing = current.get(("double_block", site.ckpt_index))
        if isinstance(existing, JointBlockIP):
            new = JointBlockIP(site, existing.entries + (entry,), existing.inner, dm)
        else:
            new = JointBlockIP(site, (entry,), existing, dm)
        patched.set_model_patch_replace(new, "dit", "double_block", site.ckpt_index)
    return patched


def dit_entries(model) -> tuple[SD3Entry, ...]:
    """The entries patched into a MODEL's first joint block (for inspection)."""
    patch = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {}).get(("double_block", 0))
    return patch.entries if isinstance(patch, JointBlockIP) else ()
