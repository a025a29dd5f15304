"""The attn2 replace patch: ComfyUI's text cross-attention plus every applied adapter's image branch.

    out = inner(q, k, v) + sum over active entries of  w_layer * Attn(q, K_ip, V_ip) [* mask]

Joint entries (Fooocus's formulation, ``joint=True``) instead append their K_ip / V_ip to the text's k / v
before ``inner`` runs, so text and image tokens share one softmax; several joint entries all append to it.
A weight curve (``curve``) multiplies an entry's weight per UNet call: the cached K/V are rescaled by that
one number (``AdapterEntry.kv_at``), never rebuilt.

``inner`` is whatever was registered at the key before (another extension's patch, or ComfyUI's own
attention when nothing was). Patch objects never change once attached: applying another adapter
builds a new patch holding the old entries plus the new one.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

import comfy.ldm.modules.attention as comfy_attention

from .layers import AttnKey, LayerSite, layer_map
from .masks import resample_mask, token_grid
from .weights import LayerWeight, find_embeds_scaling

# AnimateDiff context windows: (full_length, sub_idxs) of the frames this UNet call sees, or None.
Frames = tuple[int, tuple[int, ...]] | None


@dataclass(frozen=True, eq=False)
class AdapterEntry:
    """One application of an adapter: image tokens, where and how strongly they act. Immutable."""

    layers: Any  # mapping str(N) -> module with to_k_ip / to_v_ip (the adapter's ip_adapter section)
    patchers: tuple  # ModelPatchers that hold the weights, loaded with the UNet
    cond: torch.Tensor  # [N, T, C] projected tokens of the reference image(s)
    uncond: torch.Tensor  # [N or 1, T, C] tokens of the negative
    weights: Mapping[AttnKey, LayerWeight]  # only layers with a non-zero weight; a weight may be per frame
    sigma_start: float = float("inf")
    sigma_end: float = 0.0
    mask: torch.Tensor | None = None  # [B, H, W] in [0, 1]
    mask_interpolation: str = "bilinear"
    scaling: str = "V only"
    unfold: bool = False  # image i conditions latent i, instead of all images conditioning every latent
    layer_widths: Mapping[int, int] = field(default_factory=dict)  # N -> channels, for the C penalty
    max_width: int = 1280
    joint: bool = False  # one softmax over text + image tokens (Fooocus); weight-0 layers stay in ``weights``
    curve: Any = None  # curves.BoundCurve: weight multiplier per UNet call, from the sigma
    gate: Any = None  # extra on/off from the sigma (fooocus.FooocusStop): ``active(sigma) -> bool``
    _cache: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def active(self, sigma: float | None) -> bool:
        if sigma is None:
            return True
        return self.sigma_end <= sigma <= self.sigma_start and (self.gate is None or self.gate.active(sigma))

    def multiplier(self, sigma: float | None) -> float:
        return 1.0 if self.curve is None else self.curve.at(sigma)

    # Raw K/V per layer, device and dtype: computed once, reused by every step of every sampling run.
    def _kv(self, site: LayerSite, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        key = ("kv", site.key, q.device, q.dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        layer = self.layers[str(site.ckpt_index)]
        cond, uncond = self._token_batches()
        if self.weights[site.key].swap:  # cond sees no image, uncond sees the reference
            cond, uncond = torch.zeros_like(cond), cond
        # Weights may be stored in another dtype or device than q: cast them here, once per layer.
        wk = layer.to_k_ip.weight.to(q.device, q.dtype)
        wv = layer.to_v_ip.weight.to(q.device, q.dtype)
        bk, bv = (None if b is None else b.to(q.device, q.dtype) for b in (layer.to_k_ip.bias, layer.to_v_ip.bias))
        cond, uncond = cond.to(q.device, q.dtype), uncond.to(q.device, q.dtype)
        with torch.no_grad():
            out = F.linear(cond, wk, bk), F.linear(cond, wv, bv), F.linear(uncond, wk, bk), F.linear(uncond, wv, bv)
        with self._lock:
            self._cache[key] = out
        return out

    def _token_batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        cond, uncond = self.cond, self.uncond
        if uncond.shape[0] != cond.shape[0]:
            uncond = _resize_batch(uncond, cond.shape[0])
        if not self.unfold:  # several reference images share one softmax: join them along tokens
            cond = cond.reshape(1, -1, cond.shape[-1])
            uncond = uncond.reshape(1, -1, uncond.shape[-1])
        return cond, uncond

    def _scaled(self, site, w, kc, vc, ku, vu):
        """``w`` is a number or a [rows, 1, 1] tensor of per-frame weights (one per latent)."""
        width = self.layer_widths.get(site.ckpt_index, self.max_width)
        return find_embeds_scaling(self.scaling).scale(w, width, self.max_width, kc, vc, ku, vu)

    def kv_batch(self, site: LayerSite, q: torch.Tensor, cond_or_uncond: tuple[int, ...],
                 frames: Frames = None) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V laid out like q's batch: one chunk per cond_or_uncond entry (1 = uncond, else cond).

        Unfolded, row i of each chunk holds image i and weight i (both cut or padded to the batch, or
        picked by an AnimateDiff context window ``frames``); otherwise every row holds all images.
        """
        per = q.shape[0] // len(cond_or_uncond)
        key = ("batch", site.key, q.device, q.dtype, cond_or_uncond, per, frames)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        tokens_frames = frames if self.unfold else None
        kc, vc, ku, vu = (_frame_rows(t, per, tokens_frames) for t in self._kv(site, q))
        w = self.weights[site.key].weight
        if isinstance(w, torch.Tensor):
            w = _frame_rows(w, per, frames).to(q.device, q.dtype).view(-1, 1, 1)
        with torch.no_grad():
            kc, vc, ku, vu = self._scaled(site, w, kc, vc, ku, vu)
            out = (torch.cat([ku if c == 1 else kc for c in cond_or_uncond]),
                   torch.cat([vu if c == 1 else vc for c in cond_or_uncond]))
        with self._lock:
            self._cache[key] = out
        return out

    def kv_at(self, site: LayerSite, q: torch.Tensor, cond_or_uncond: tuple[int, ...], frames: Frames,
              m: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``kv_batch`` at this call's weight multiplier ``m`` (from the curve): the cached K/V rescaled."""
        if frames is None:
            k, v = self.kv_batch(site, q, cond_or_uncond)
        else:
            k, v = self.kv_batch(site, q, cond_or_uncond, frames)
        if m == 1.0:
            return k, v
        scaling = find_embeds_scaling(self.scaling)
        if scaling.k_scaled:
            k = k * m
        if scaling.v_mean:
            v = torch.add(v, self._mean_batch(site, q, cond_or_uncond, frames), alpha=m - 1.0)
        else:
            v = v * m
        return k, v

    def _mean_batch(self, site: LayerSite, q: torch.Tensor, cond_or_uncond: tuple[int, ...],
                    frames: Frames) -> torch.Tensor:
        """The weighted token mean of V (``EmbedsScaling.mean_part``) laid out like ``kv_batch``."""
        per = q.shape[0] // len(cond_or_uncond)
        key = ("mean", site.key, q.device, q.dtype, cond_or_uncond, per, frames)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        _, vc, _, vu = (_frame_rows(t, per, frames if self.unfold else None) for t in self._kv(site, q))
        w = self.weights[site.key].weight
        if isinstance(w, torch.Tensor):
            w = _frame_rows(w, per, frames).to(q.device, q.dtype).view(-1, 1, 1)
        scaling = find_embeds_scaling(self.scaling)
        width = self.layer_widths.get(site.ckpt_index, self.max_width)
        with torch.no_grad():
            mc, mu = (scaling.mean_part(w, width, self.max_width, t) for t in (vc, vu))
            out = torch.cat([mu if c == 1 else mc for c in cond_or_uncond])
        with self._lock:
            self._cache[key] = out
        return out

    def mask_batch(self, q: torch.Tensor, extra_options: dict, n_chunks: int,
                   frames: Frames = None) -> torch.Tensor | None:
        if self.mask is None:
            return None
        seq_len = q.shape[1]
        latent_hw = tuple(extra_options["original_shape"][-2:])
        act = extra_options.get("activations_shape")
        grid = token_grid(seq_len, latent_hw, tuple(act[-2:]) if act is not None else None)
        per = q.shape[0] // n_chunks
        key = ("mask", grid, q.device, q.dtype, n_chunks, per, frames)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        m = resample_mask(self.mask, grid, self.mask_interpolation)
        if m.shape[0] > 1:  # one mask per latent: lay it out like the batch
            m = _frame_rows(m, per, frames).repeat(n_chunks, 1, 1)
        m = m.to(q.device, q.dtype)
        with self._lock:
            self._cache[key] = m
        return m


def _resize_batch(t: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat a batch of 1 to n, or cut/pad (repeating the last item) a batch of several to n."""
    if t.shape[0] == n:
        return t
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:]).contiguous()
    if t.shape[0] > n:
        return t[:n]
    return torch.cat([t, t[-1:].expand(n - t.shape[0], *t.shape[1:])])


def _frame_rows(t: torch.Tensor, per: int, frames: Frames) -> torch.Tensor:
    """Rows for the latents of this call: the batch, or the context window's frames of the whole animation."""
    if frames is None:
        return _resize_batch(t, per)
    full_length, sub_idxs = frames
    return _resize_batch(t, full_length)[list(sub_idxs)]


def _frames(extra_options: dict) -> Frames:
    ad = extra_options.get("ad_params")
    if not ad or ad.get("sub_idxs") is None:
        return None
    return int(ad["full_length"]), tuple(int(i) for i in ad["sub_idxs"])


# The current sigma as a float, read once per UNet call: every patch of that call sees the same
# sigmas tensor object, so only the first of the 16-70 attention calls reads it from the device.
_sigma_slot: tuple[torch.Tensor | None, float | None] = (None, None)


def _current_sigma(extra_options: dict) -> float | None:
    global _sigma_slot
    sigmas = extra_options.get("sigmas")
    if sigmas is None:
        return None
    tensor, value = _sigma_slot
    if tensor is sigmas:
        return value
    value = float(sigmas.flatten()[0])
    _sigma_slot = (sigmas, value)
    return value


class IPAttention:
    """attn2 replace patch for one key. Holds immutable entries and the wrapped previous patch."""

    def __init__(self, site: LayerSite, entries: tuple[AdapterEntry, ...], inner: Callable | None):
        self.site = site
        self.entries = entries
        self.inner = inner
        self._weighted = tuple(e for e in entries if site.key in e.weights)  # weight-0 layers are skipped

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        active = ()
        if self._weighted:
            sigma = _current_sigma(extra_options)
            # One curve lookup per entry and UNet call: later layers of the call find it cached.
            active = tuple((e, e.multiplier(sigma)) for e in self._weighted if e.active(sigma))
            cond_or_uncond = tuple(extra_options.get("cond_or_uncond") or (0,))
            frames = _frames(extra_options)
            if any(e.joint for e, _ in active):
                k, v = self._joined(q, k, v, active, cond_or_uncond, frames)
        if self.inner is not None:
            out = self.inner(q, k, v, extra_options)
        else:  # exactly what ComfyUI computes without a patch
            # extra_options carries the block's transformer_options (minus the patch tables), so an
            # optimized_attention_override another extension set is honoured here as on unpatched layers.
            out = comfy_attention.optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                                      transformer_options=extra_options)
        owned = False  # out is a tensor this call made (not the inner patch's): safe to add into
        for entry, m in active:
            if entry.joint or m == 0.0:  # joint: already in out; decoupled at weight 0: nothing to add
                continue
            ip_k, ip_v = entry.kv_at(self.site, q, cond_or_uncond, frames, m)
            # A handful of image tokens: PyTorch's fused attention is the fast choice on every device
            # (ComfyUI's CPU default, sub-quadratic chunking, costs 2-3x more per call here).
            ip = comfy_attention.attention_pytorch(q, ip_k, ip_v, heads)
            mask = entry.mask_batch(q, extra_options, len(cond_or_uncond), frames)
            if mask is not None:
                ip.mul_(mask)
            if owned:
                out.add_(ip)
            else:
                out, owned = out + ip, True
        return out

    def _joined(self, q, k, v, active, cond_or_uncond, frames) -> tuple[torch.Tensor, torch.Tensor]:
        """Text k / v with every active joint entry's image tokens appended (weight 0 included: Fooocus)."""
        ks, vs = [k], [v]
        for entry, m in active:
            if entry.joint:
                ip_k, ip_v = entry.kv_at(self.site, q, cond_or_uncond, frames, m)
                ks.append(ip_k)
                vs.append(ip_v)
        return torch.cat(ks, dim=1), torch.cat(vs, dim=1)

    # ComfyUI 0.3.75 deep-copies model_options on clone; sharing is what newer versions do and what we want.
    def __deepcopy__(self, memo):
        return self

    def to(self, *args, **kwargs):
        # K/V are moved per call to q's device; only a wrapped foreign patch may need moving.
        if self.inner is not None and hasattr(self.inner, "to"):
            moved = self.inner.to(*args, **kwargs)
            if moved is not self.inner:
                return IPAttention(self.site, self.entries, moved)
        return self

    def models(self) -> list:
        return patch_models(self.entries, self.inner)


def patch_models(entries: Sequence[AdapterEntry], inner) -> list:
    """The adapters' ModelPatchers (loaded with the model by ComfyUI), then the wrapped patch's models."""
    found = []
    for entry in entries:
        found.extend(p for p in entry.patchers if p not in found)
    if inner is not None and hasattr(inner, "models"):
        found.extend(inner.models())
    return found


def attn2_patches(model) -> dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def apply_entry(model, entry: AdapterEntry, arch: str):
    """Clone ``model`` and add ``entry`` at every cross-attention site of ``arch``; the input is unchanged."""
    return apply_entries(model, (entry,), arch)


def apply_entries(model, entries: Sequence[AdapterEntry], arch: str):
    """Clone ``model`` once and add every entry (in order) at every cross-attention site of ``arch``."""
    patched = model.clone()
    current = attn2_patches(patched)
    added = tuple(entries)
    for site in layer_map(arch):
        existing = current.get(site.key, current.get(site.key[:2]))
        if isinstance(existing, IPAttention):
            new = IPAttention(site, existing.entries + added, existing.inner)
        else:
            new = IPAttention(site, added, existing)
        patched.set_model_attn2_replace(new, site.key[0], site.key[1], site.key[2])
    return patched
