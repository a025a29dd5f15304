"""Apply an adapter to a ComfyUI MODEL: check, encode, project, resolve weights, patch a clone."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import dit_patch, flux_instantx_patch, sd3_patch
from .adapter import Adapter
from .attention import AdapterEntry, apply_entries, apply_entry
from .curves import WeightCurve, bind_curve
from .encode import check_encoder, combine_embeds, encode_images, negative_embeds
from .errors import FaceIDError, ModelMismatchError
from .inputs import require_finite, require_images
from .flux import is_dit
from .flux_instantx import FAMILY as FLUX_INSTANTX
from .flux import unsupported as unsupported_on_dit
from .layers import ARCH_NAMES, layer_map, model_arch
from .progress import tracked
from .tiles import enhance_features, tile_reference
from .weights import (COMPOSITION_LAYERS, LayerWeight, Weight, as_frame_weights, find_embeds_scaling,
                      resolve_layer_weights)


def require_non_faceid(adapter: Adapter, node: str = "this node") -> None:
    """Non-FaceID nodes call this: a FaceID adapter there gets a message naming the node to use."""
    spec = adapter.spec
    if not spec.is_faceid:
        return
    use = "IPAdapter FaceID Kolors" if spec.is_kolors else "IPAdapter FaceID (or IPAdapter FaceID Batch)"
    raise FaceIDError(
        f"{adapter.name} is a FaceID adapter ({spec.label}): it needs a face embedding, which {node} does not "
        f"compute. Use the {use} node with an IPAdapter InsightFace Loader (or face_embeds)."
    )


def check_model(adapter: Adapter, model, what: str = "This node") -> None:
    arch = model_arch(model)
    want = adapter.spec.arch
    if is_dit(want):
        raise ValueError(unsupported_on_dit(what, adapter.name, want))
    if arch != want:
        have = ARCH_NAMES.get(arch, "not an SD1.5/SDXL UNet")
        raise ModelMismatchError(
            f"{adapter.name} is an {ARCH_NAMES[want]} IP-Adapter ({len(layer_map(want))} cross-attention layers) "
            f"but the connected model is {have}. Use an IP-Adapter made for {have} models, or load an "
            f"{ARCH_NAMES[want]} checkpoint."
        )
    context = model.model.model_config.unet_config.get("context_dim")
    if context is not None and context != adapter.spec.context_dim:
        raise ModelMismatchError(
            f"{adapter.name} expects a text-context width of {adapter.spec.context_dim}, the connected "
            f"model has {context}; this adapter belongs to another base model."
        )


@dataclass(frozen=True)
class Embeds:
    """Features for the reference(s) and the negative, before projection.

    ``cond_extra`` / ``uncond_extra`` are extra projection inputs (FaceID-Plus: ``clip_embeds``,
    ``shortcut``, ``scale``).
    """

    cond: Tensor
    uncond: Tensor
    cond_extra: dict = field(default_factory=dict)
    uncond_extra: dict = field(default_factory=dict)


def encode_for(adapter: Adapter, clip_vision, image: Tensor, image_negative: Tensor | None = None,
               batch_size: int = 0, negative_mode: str = "black image", mask: Tensor | None = None,
               enhance_tiles: int = 1, enhance_ratio: float = 1.0) -> Embeds:
    """Encoder features of ``image`` and of the negative; ``enhance_tiles`` > 1 adds the ClipVision
    Enhancer's tile features (see ``tiles.enhance_features``; the negative is never tiled)."""
    require_non_faceid(adapter)
    require_images("image", image)
    require_images("image_negative", image_negative)
    if clip_vision is None:
        raise ValueError(
            f"{adapter.name} needs a CLIP vision model: connect `clip_vision` (Load CLIP Vision with "
            f"{adapter.spec.encoder.model if adapter.spec.encoder else 'its encoder'})."
        )
    check_encoder(adapter.spec, clip_vision, adapter.name)
    output = adapter.spec.encoder.output
    cond = encode_images(clip_vision, image, output, batch_size, mask=mask)
    uncond = negative_embeds(clip_vision, output, cond, image_negative, negative_mode, batch_size)
    if enhance_tiles > 1:
        cond = enhance_features(clip_vision, image, cond, output, enhance_tiles, enhance_ratio, batch_size)
    return Embeds(cond, uncond)


def compute_dtype(model) -> torch.dtype:
    """The dtype the UNet computes in (fp8-stored weights compute in their manual-cast dtype)."""
    base = model.model
    return getattr(base, "manual_cast_dtype", None) or base.get_dtype()


def project_pair(adapter: Adapter, cond: Tensor, uncond: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Project reference and negative features; a negative reused across applies is projected once."""
    uncond_tokens = adapter.remembered(uncond, dtype)
    if uncond_tokens is not None:
        return adapter.project(cond, dtype=dtype), uncond_tokens
    if cond.shape[1:] == uncond.shape[1:]:  # one batch
        tokens = adapter.project(torch.cat([cond, uncond]), dtype=dtype)
        cond_tokens, uncond_tokens = tokens[: cond.shape[0]], tokens[cond.shape[0]:]
    else:
        cond_tokens, uncond_tokens = adapter.project(cond, dtype=dtype), adapter.project(uncond, dtype=dtype)
    adapter.remember(uncond, dtype, uncond_tokens)
    return cond_tokens, uncond_tokens


def _prepare_mask(mask: Tensor | None) -> Tensor | None:
    if mask is None:
        return None
    return mask[None] if mask.dim() == 2 else mask


def apply_adapter(
    model,
    adapter: Adapter,
    embeds: Embeds,
    *,
    weight: Weight | list[float] = 1.0,
    weight_type: str = "linear",
    weight_composition: float | None = None,
    boost: float | None = None,
    layer_weights=None,
    unfold: bool = False,
    attention_mode: str = "decoupled",
    **entry_options,
):
    """Return a patched clone of ``model``; ``model`` itself is unchanged.

    ``weight`` may be a list (one value per frame, e.g. from IPAdapter Weights): with ``unfold`` latent i
    gets weight i, otherwise the first value is used, as in the old extension. ``entry_options`` are
    ``make_entry``'s (combine, start_at, end_at, embeds_scaling, attn_mask, mask_interpolation,
    token_transform, weight_curve). ``attention_mode`` "joint" is Fooocus's one softmax over text and image
    tokens (see ``ATTENTION_MODES``)."""
    for name, value in (("weight", weight), ("weight_composition", weight_composition), ("boost", boost),
                        ("start_at", entry_options.get("start_at", 0.0)), ("end_at", entry_options.get("end_at", 1.0))):
        require_finite(name, value)  # before the per-architecture paths, so every one of them is covered
    if adapter.spec.arch == "sd3" or is_dit(adapter.spec.arch):
        unsupported_on_transformers(adapter, attention_mode)
    if adapter.spec.arch == "sd3":  # InstantX SD3.5: one patch per joint block (ipadapter/sd3_patch.py)
        return sd3_patch.apply_sd3_adapter(model, adapter, embeds, weight=weight, weight_type=weight_type,
                                           layer_weights=layer_weights, unfold=unfold,
                                           weight_composition=weight_composition, **entry_options)
    if adapter.spec.family == FLUX_INSTANTX:  # one patch per double and single block (flux_instantx_patch.py)
        if entry_options.get("embeds_scaling", "V only") != "V only" or entry_options.get("token_transform"):
            raise ValueError(f"{adapter.name}: the InstantX FLUX adapter normalises its keys, so the weight scales "
                             f"the values only: set embeds_scaling to 'V only' (token transforms are not available).")
        weights, sites = flux_instantx_patch.resolve(model, adapter, weight_type, frame_weight(weight, unfold),
                                                     layer_weights, weight_composition)
        entry = make_entry(model, adapter, embeds, weights, unfold=unfold, **entry_options)
        return flux_instantx_patch.apply_instantx_entries(model, (entry,), sites)
    if is_dit(adapter.spec.arch):  # Flux: one patch per double block (ipadapter/dit_patch.py)
        weights, blocks = dit_patch.resolve(model, adapter, weight_type, frame_weight(weight, unfold), layer_weights,
                                            weight_composition)
        entry = make_entry(model, adapter, embeds, weights, unfold=unfold, **entry_options)
        return dit_patch.apply_dit_entries(model, (entry,), blocks)
    check_model(adapter, model)
    resolve = joint_layer_weights if find_attention_mode(attention_mode) else resolve_layer_weights
    weights = resolve(adapter.spec.arch, weight_type, frame_weight(weight, unfold), weight_composition, boost,
                      layer_weights)
    entry = make_entry(model, adapter, embeds, weights, unfold=unfold, attention_mode=attention_mode,
                       **entry_options)
    return apply_entry(model, entry, adapter.spec.arch)


def block_streams(model, adapter: Adapter) -> dict[str, int] | None:
    """The patched block streams of a Flux / SD3.5 ``adapter`` on ``model`` ({"double": n[, "single": m]},
    checked against the adapter with the usual errors); None for a UNet adapter."""
    if adapter.spec.arch == "sd3":
        return {"double": len(sd3_patch.mmdit_model(model, adapter).joint_blocks)}
    if not is_dit(adapter.spec.arch):
        return None
    singles = adapter.spec.family == FLUX_INSTANTX  # XLabs acts on the double blocks only
    dm = dit_patch.flux_blocks_checked(model, adapter, with_singles=singles)
    return {"double": len(dm.double_blocks), **({"single": len(dm.single_blocks)} if singles else {})}


def unsupported_on_transformers(adapter: Adapter, attention_mode: str) -> None:
    """UNet-only controls on a Flux / SD3.5 adapter: refused before anything is patched."""
    if find_attention_mode(attention_mode):
        raise ValueError(unsupported_on_dit("attention_mode 'joint' (Fooocus's one softmax)", adapter.name,
                                            adapter.spec.arch) + " Set attention_mode to 'decoupled'.")


# attention_mode -> joint? "decoupled": the adapters' own design, image attention added to the text's;
# "joint": Fooocus's, image tokens appended to the text tokens in one softmax.
ATTENTION_MODE_TABLE: dict[str, bool] = {"decoupled": False, "joint": True}
ATTENTION_MODES = tuple(ATTENTION_MODE_TABLE)


def find_attention_mode(name: str) -> bool:
    """True for a joint mode; ValueError listing the choices for an unknown one."""
    if name not in ATTENTION_MODE_TABLE:
        raise ValueError(f"unknown attention_mode {name!r}; choose one of {', '.join(ATTENTION_MODES)}")
    return ATTENTION_MODE_TABLE[name]


def joint_layer_weights(arch: str, weight_type: str = "linear", weight: Weight = 1.0, *args) -> dict:
    """``resolve_layer_weights`` for joint mode: the layers the weight type reaches keep their entry at weight 0,
    because a joint image prompt at weight 0 still appends its tokens (Fooocus's weight-0 result)."""
    reached = resolve_layer_weights(arch, weight_type, 1.0, *args)
    weighted = resolve_layer_weights(arch, weight_type, weight, *args)
    return {key: weighted.get(key, LayerWeight(0.0, lw.swap)) for key, lw in reached.items()}


def frame_weight(weight, unfold: bool) -> Weight:
    """A number, or with ``unfold`` a per-frame tensor when several values are given."""
    w = as_frame_weights(weight)
    if isinstance(w, Tensor) and not unfold:
        return float(w[0])
    return w


def make_entry(
    model,
    adapter: Adapter,
    embeds: Embeds,
    weights: dict,
    *,
    combine: str = "concat",
    start_at: float = 0.0,
    end_at: float = 1.0,
    embeds_scaling: str = "V only",
    attn_mask: Tensor | None = None,
    unfold: bool = False,
    mask_interpolation: str = "bilinear",
    token_transform=None,
    weight_curve: WeightCurve | None = None,
    attention_mode: str = "decoupled",
    uncond_tokens: Tensor | None = None,
    gate=None,
) -> AdapterEntry:
    """Combine and project ``embeds`` and bundle them with resolved per-layer ``weights`` into one entry.

    ``uncond_tokens``: a negative already in token space (Fooocus's file), used as it is instead of projecting
    ``embeds.uncond``. ``gate``: an extra on/off from the sigma (``fooocus.FooocusStop``)."""
    find_embeds_scaling(embeds_scaling)  # fail here, not in the middle of sampling
    require_finite("start_at", start_at)
    require_finite("end_at", end_at)
    joint = find_attention_mode(attention_mode)
    if joint and attn_mask is not None:
        raise ValueError("attn_mask is not available with attention_mode 'joint' (the image tokens share the "
                         "text's softmax, so they cannot be cut out per region): disconnect attn_mask or use "
                         "attention_mode 'decoupled'.")
    cond, uncond = embeds.cond, embeds.uncond
    if not unfold and combine != "concat" and cond.shape[0] > 1:
        cond = combine_embeds(cond, combine)
        uncond = uncond[:1]
    if uncond_tokens is not None:
        cond_tokens = adapter.project(cond, dtype=compute_dtype(model))
    elif embeds.cond_extra or embeds.uncond_extra:
        dtype = compute_dtype(model)
        cond_tokens = adapter.project(cond, dtype=dtype, **embeds.cond_extra)
        uncond_tokens = adapter.project(uncond, dtype=dtype, **embeds.uncond_extra)
    else:
        cond_tokens, uncond_tokens = project_pair(adapter, cond, uncond, compute_dtype(model))
    if token_transform is not None:
        cond_tokens, uncond_tokens = token_transform(cond_tokens), token_transform(uncond_tokens)
    sampling = model.get_model_object("model_sampling")
    widths = adapter.layer_widths
    return AdapterEntry(
        layers=adapter.model.ip_adapter,
        patchers=(adapter.patcher,),
        cond=cond_tokens,
        uncond=uncond_tokens,
        weights=weights,
        sigma_start=float(sampling.percent_to_sigma(start_at)),
        sigma_end=float(sampling.percent_to_sigma(end_at)),
        mask=_prepare_mask(attn_mask),
        mask_interpolation=mask_interpolation,
        scaling=embeds_scaling,
        unfold=unfold,
        layer_widths=widths,
        max_width=max(widths.values()),
        joint=joint,
        curve=bind_curve(weight_curve, sampling),
        gate=gate,
    )


STYLE_COMPOSITION_SDXL_ONLY = "Style + Composition transfer is only available for SDXL models at the moment."


def split_composition(weights: dict, arch: str) -> tuple[dict, dict]:
    """(style layers, composition layers) of a resolved weight map."""
    comp = set(COMPOSITION_LAYERS[arch])
    t_idx = {s.key: s.transformer_index for s in layer_map(arch)}
    style = {k: w for k, w in weights.items() if t_idx[k] not in comp}
    composition = {k: w for k, w in weights.items() if t_idx[k] in comp}
    return style, composition


def apply_style_composition(
    model,
    adapter: Adapter,
    style: Embeds,
    composition: Embeds,
    *,
    weight_style: Weight | list[float] = 1.0,
    weight_composition: float = 1.0,
    expand_style: bool = False,
    unfold: bool = False,
    **entry_options,
):
    """Style image on the style layers, composition image on the composition layers (SDXL, and with the
    experimental block maps of ``block_maps`` Flux and SD3.5).

    Two entries, one per image: each layer has exactly one of them, which is the old extension's
    "cond_alt" (the composition tokens replace the style tokens at the composition layer).
    ``expand_style`` puts the style image on every other layer ("strong style and composition").
    """
    require_finite("weight_style", weight_style)
    require_finite("weight_composition", weight_composition)
    arch = adapter.spec.arch
    if is_dit(arch):  # two stacked applications on disjoint blocks
        styled = apply_adapter(model, adapter, style, weight=weight_style, unfold=unfold,
                               weight_type="strong style transfer" if expand_style else "style transfer",
                               **entry_options)
        return apply_adapter(styled, adapter, composition, weight=weight_composition, weight_type="composition",
                             unfold=unfold, **entry_options)
    check_model(adapter, model, "Style & Composition")
    if arch != "sdxl":
        raise ValueError(f"{STYLE_COMPOSITION_SDXL_ONLY} {adapter.name} is an {ARCH_NAMES[arch]} adapter: use "
                         "an SDXL model and adapter, or on SD1.5 use IPAdapter Advanced with weight_type "
                         "'style and composition' (one image for both).")
    weight_type = "strong style and composition" if expand_style else "style and composition"
    weights = resolve_layer_weights(arch, weight_type, frame_weight(weight_style, unfold), weight_composition)
    style_weights, composition_weights = split_composition(weights, arch)
    entries = [make_entry(model, adapter, embeds, w, unfold=unfold, **entry_options)
               for embeds, w in ((style, style_weights), (composition, composition_weights)) if w]
    return apply_entries(model, entries, arch)


def apply_tiled(
    model,
    adapter: Adapter,
    clip_vision,
    image: Tensor,
    *,
    weight: Weight | list[float] = 1.0,
    weight_type: str = "linear",
    sharpening: float = 0.0,
    attn_mask: Tensor | None = None,
    image_negative: Tensor | None = None,
    batch_size: int = 0,
    negative_mode: str = "black image",
    unfold: bool = False,
    **entry_options,
) -> tuple[object, Tensor, Tensor]:
    """IPAdapter Tiled: cut the reference into 256-pixel tiles (see ``tiles.tile_reference``) and apply
    each tile with a mask that covers its own region. Returns (model, tiles, masks)."""
    check_model(adapter, model, "IPAdapter Tiled")
    require_images("image", image)
    require_finite("weight", weight)
    tiles, masks = tile_reference(image, attn_mask, sharpening)
    weights = resolve_layer_weights(adapter.spec.arch, weight_type, frame_weight(weight, unfold))
    entries = []
    for tile, mask in tracked(list(zip(tiles, masks))):
        embeds = encode_for(adapter, clip_vision, tile, image_negative, batch_size, negative_mode)
        entries.append(make_entry(model, adapter, embeds, weights, attn_mask=mask, unfold=unfold, **entry_options))
    return apply_entries(model, entries, adapter.spec.arch), torch.cat(tiles), torch.cat(masks)
