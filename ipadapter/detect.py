"""Detection: which IP-Adapter family a checkpoint is, from its tensor names and shapes alone.

Detection never looks at the file name: the projection kind comes from which ``image_proj`` keys exist
(``PROJECTIONS``), its widths and token counts are measured from the shapes, the base architecture from
the number of ``N.to_k_ip`` layers, and the family is the ``families.FAMILIES`` record that matches what
was seen. Meta tensors are enough (see ``model_files.read_checkpoint_shapes``).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from . import flux, flux_instantx, sd3
from .encoders import FULL_WIDTHS, KnownWidths
from .errors import TensorShapeError, UnknownAdapterError
from .families import FAMILIES, MATCH_FIELDS, AdapterSpec, EncoderRequirement, Family, family
from .files import check_sections, split_sections
from .layers import ARCH_NAMES, ARCHITECTURES, arch_for_layer_count, layer_map
from .lora import LORA_KEY, checkpoint_lora_rank
from .projection import projection_layout, split_tokens

__all__ = ["PROJECTIONS", "Projection", "check_shapes", "detect"]

_OUTPUT_LABEL = {"image_embeds": "image_embeds", "penultimate_hidden_states": "penultimate"}


# --------------------------------------------------------------------------------------------------
# Projection kinds: how each is recognised (first match wins) and measured
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Projection:
    kind: str
    marker: str  # image_proj key whose presence selects this kind
    required: tuple[str, ...]  # image_proj keys that must then be present


def _resampler_keys(prefix: str, with_latents: bool) -> tuple[str, ...]:
    keys = ["latents"] if with_latents else []
    keys += [f"{prefix}{m}.weight" for m in ("proj_in", "proj_out", "norm_out")]
    keys += [f"{prefix}layers.0.0.{m}.weight" for m in ("to_q", "to_kv", "to_out")]
    return tuple(keys)


# Order matters: FaceID-Plus and the full-face MLP also hold proj.2, the FaceID MLP also holds norm.
PROJECTIONS: tuple[Projection, ...] = (
    Projection("faceid_plus", "perceiver_resampler.proj_in.weight",
               ("proj.0.weight", "proj.2.weight", "norm.weight") + _resampler_keys("perceiver_resampler.", False)),
    Projection("mlp", "proj.3.weight", ("proj.0.weight", "proj.2.weight", "proj.3.weight")),
    Projection("resampler", "latents", _resampler_keys("", True)),
    Projection("faceid", "proj.2.weight", ("proj.0.weight", "proj.2.weight", "norm.weight")),
    Projection("image_proj", "proj.weight", ("proj.weight", "norm.weight")),
)


@dataclass(frozen=True)
class _Measured:
    token_dim: int  # width of the projected tokens
    tokens: int | None  # None: one token per encoder token (full-face MLP)
    clip_output: str | None = None
    clip_width: int | None = None
    face_width: int | None = None
    resampler_dim: int | None = None  # internal width of a (face-)perceiver
    resampler_output: int | None = None
    resampler_input: int | None = None  # proj_in input width of a plain Resampler


def _rows(sd, key) -> int:
    return int(sd[key].shape[0])


def _cols(sd, key) -> int:
    return int(sd[key].shape[-1])


def _measure_image_proj(p) -> _Measured:
    c = _rows(p, "norm.weight")
    return _Measured(c, split_tokens(_rows(p, "proj.weight"), c, "image_proj", "proj.weight"),
                     clip_output="image_embeds", clip_width=_cols(p, "proj.weight"))


def _measure_mlp(p) -> _Measured:
    return _Measured(_rows(p, "proj.3.weight"), None,
                     clip_output="penultimate_hidden_states", clip_width=_cols(p, "proj.0.weight"))


def _measure_resampler(p) -> _Measured:
    return _Measured(_rows(p, "proj_out.weight"), int(p["latents"].shape[1]),
                     resampler_dim=int(p["latents"].shape[-1]), resampler_output=_rows(p, "proj_out.weight"),
                     resampler_input=_cols(p, "proj_in.weight"))


def _measure_faceid(p) -> _Measured:
    c = _rows(p, "norm.weight")
    return _Measured(c, split_tokens(_rows(p, "proj.2.weight"), c, "faceid", "proj.2.weight"),
                     face_width=_cols(p, "proj.0.weight"))


def _measure_faceid_plus(p) -> _Measured:
    base = _measure_faceid(p)
    return replace(base, clip_output="penultimate_hidden_states",
                   clip_width=_cols(p, "perceiver_resampler.proj_in.weight"),
                   resampler_dim=_rows(p, "perceiver_resampler.proj_in.weight"),
                   resampler_output=_rows(p, "perceiver_resampler.proj_out.weight"))


_MEASURE = {
    "image_proj": _measure_image_proj,
    "mlp": _measure_mlp,
    "resampler": _measure_resampler,
    "faceid": _measure_faceid,
    "faceid_plus": _measure_faceid_plus,
}


# --------------------------------------------------------------------------------------------------
# Layers and the match
# --------------------------------------------------------------------------------------------------
_IP_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")


@dataclass(frozen=True)
class _Layers:
    count: int
    arch: str
    context_dim: int
    lora_rank: int | None


def _read_layers(ip: Mapping[str, torch.Tensor], where: str) -> _Layers:
    k_ids, v_ids = set(), set()
    for key in ip:
        m = _IP_KEY.match(key)
        if m:
            (k_ids if m.group(2) == "to_k_ip" else v_ids).add(int(m.group(1)))
    if not k_ids:
        some = ", ".join(sorted(ip)[:4])
        raise UnknownAdapterError(f"{where}: the ip_adapter section has no 'N.to_k_ip.weight' keys (found: {some})")
    if k_ids != v_ids:
        raise UnknownAdapterError(f"{where}: to_k_ip and to_v_ip keys do not pair up (only one of them for N = {sorted(k_ids ^ v_ids)[:8]})")
    count = len(k_ids)
    arch = arch_for_layer_count(count)
    if arch is None:
        known = " or ".join(f"{len(layer_map(a))} ({ARCH_NAMES[a]})" for a in ARCHITECTURES)
        raise UnknownAdapterError(
            f"{where}: {count} cross-attention layers (to_k_ip keys); an IP-Adapter has {known}. "
            "Other base models are not supported."
        )
    expected = {site.ckpt_index for site in layer_map(arch)}
    if k_ids != expected:
        raise UnknownAdapterError(f"{where}: to_k_ip keys are not numbered 1, 3, ..., {max(expected)} (got {sorted(k_ids)[:6]}...)")
    # The context width most layers take; a layer that differs is named by check_shapes.
    widths = Counter(int(ip[f"{n}.{w}.weight"].shape[-1]) for n in k_ids for w in ("to_k_ip", "to_v_ip"))
    return _Layers(count, arch, widths.most_common(1)[0][0], checkpoint_lora_rank(ip))


def _projection_of(p: Mapping[str, torch.Tensor], where: str) -> Projection:
    for proj in PROJECTIONS:
        if proj.marker in p:
            missing = [k for k in proj.required if k not in p]
            if missing:
                raise UnknownAdapterError(f"{where}: looks like a {proj.kind} projection but lacks {', '.join(missing)}")
            return proj
    raise UnknownAdapterError(
        f"{where}: unrecognised image_proj section (keys: {', '.join(sorted(p)[:6])}); "
        f"expected one of the markers {', '.join(x.marker for x in PROJECTIONS)}. {_families_line()}"
    )


def _families_line() -> str:
    return "Known families: " + ", ".join(f.name for f in FAMILIES) + "."


def _encoder(m: _Measured, widths: KnownWidths, image_size: int) -> EncoderRequirement | None:
    if m.clip_output is None:
        return None
    known = widths.encoder(m.clip_output, m.clip_width)
    if known is None:
        return EncoderRequirement(f"CLIP vision ({_OUTPUT_LABEL[m.clip_output]} width {m.clip_width})",
                                  m.clip_output, m.clip_width, image_size)
    return EncoderRequirement(known.name, m.clip_output, m.clip_width, known.image_size, known.key)


def detect(state_dicts: Mapping, source: str | None = None, *, widths: KnownWidths = FULL_WIDTHS) -> AdapterSpec:
    """Recognise an IP-Adapter from its tensor names and shapes (meta tensors are fine).

    ``state_dicts``: ``{"image_proj": {...}, "ip_adapter": {...}}`` (flat prefixed keys are accepted too).
    ``source`` names the file in error messages. ``widths`` names encoders and face embeddings by width."""
    where = source or "checkpoint"
    if not (isinstance(state_dicts.get("image_proj"), Mapping) and isinstance(state_dicts.get("ip_adapter"), Mapping)):
        state_dicts = check_sections(state_dicts, split_sections(state_dicts), where)
    p, ip = state_dicts["image_proj"], state_dicts["ip_adapter"]
    if not p or not ip:
        check_sections(state_dicts, {"image_proj": dict(p), "ip_adapter": dict(ip)}, where)
    if flux.is_xlabs(ip):  # a Flux DiT adapter: its own layout (ipadapter/flux.py)
        return flux.detect_xlabs(p, ip, where, widths)
    if sd3.is_instantx_sd3(ip):  # InstantX SD3.5 (ipadapter/sd3.py)
        return sd3.detect_sd3(p, ip, where)
    if flux_instantx.is_instantx_flux(ip):  # InstantX FLUX.1-dev (ipadapter/flux_instantx.py)
        return flux_instantx.detect_instantx_flux(p, ip, where)

    layers = _read_layers(ip, where)
    proj = _projection_of(p, where)
    try:
        m = _MEASURE[proj.kind](p)
    except ValueError as exc:  # the projection's shapes do not fit together
        raise UnknownAdapterError(f"{where}: {exc}") from exc

    encoder_key = None
    if m.clip_output is not None:
        enc = widths.encoder(m.clip_output, m.clip_width)
        encoder_key = enc.key if enc else None
    resampler_input = None
    if proj.kind == "resampler":
        if m.resampler_input in widths.face_embed_widths:
            resampler_input = "face"
        elif widths.encoder("penultimate_hidden_states", m.resampler_input) is not None:
            resampler_input = "clip"
            encoder_key = widths.encoder("penultimate_hidden_states", m.resampler_input).key
        # else undetermined: a width neither table knows
    seen = {
        "projection": proj.kind,
        "arch": layers.arch,
        "lora": layers.lora_rank is not None,
        "resampler_input": resampler_input,
        "dim_is_output": None if m.resampler_dim is None else m.resampler_dim == m.resampler_output,
        "token_dim_is_context": m.token_dim == layers.context_dim,
        "encoder": encoder_key,
    }

    fam = _match(seen, where, m, layers)

    if proj.kind == "resampler":  # a plain Resampler reads CLIP states or (unnorm portrait) a face embedding
        if fam.face_embedding is None:
            m = replace(m, clip_output="penultimate_hidden_states", clip_width=m.resampler_input)
        else:
            m = replace(m, face_width=m.resampler_input)
    encoder = _encoder(m, widths, fam.image_size)
    tokens = m.tokens if m.tokens is not None else encoder.tokens
    spec = AdapterSpec(
        family=fam.name,
        label=fam.label,
        arch=layers.arch,
        tokens=tokens,
        projection=proj.kind,
        context_dim=layers.context_dim,
        token_dim=m.token_dim,
        layer_count=layers.count,
        encoder=encoder,
        face_embed_dim=m.face_width,
        face_embedding=fam.face_embedding,
        has_lora=layers.lora_rank is not None,
        lora_rank=layers.lora_rank,
        is_faceid=fam.is_faceid,
        is_portrait=fam.is_portrait,
        is_kolors=fam.is_kolors,
        faceid_v2=fam.faceid_v2,
        source=source,
    )
    check_shapes(spec, state_dicts, where)
    return spec


# --------------------------------------------------------------------------------------------------
# Every tensor's shape against the detected family
# --------------------------------------------------------------------------------------------------
def _ip_layer_shapes(spec: AdapterSpec, ip: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Expected shapes of the ip_adapter section: ``N.to_k_ip/to_v_ip`` [layer width, context width] and the
    FaceID LoRA's [rank, in] / [out, rank] matrices. A layer's width is its multiple of the UNet's
    model_channels (the layer map) times the model_channels most layers agree on."""
    sites = {site.ckpt_index: site for site in layer_map(spec.arch)}
    bases = Counter(int(ip[f"{n}.to_k_ip.weight"].shape[0]) // s.width_mult for n, s in sites.items()
                    if f"{n}.to_k_ip.weight" in ip and ip[f"{n}.to_k_ip.weight"].ndim == 2)
    base = bases.most_common(1)[0][0] if bases else 0
    expected: dict[str, tuple[int, ...]] = {}
    for n, site in sites.items():
        for name in ("to_k_ip", "to_v_ip"):
            expected[f"{n}.{name}.weight"] = (site.width_mult * base, spec.context_dim)
    if spec.lora_rank is not None:
        for key in ip:
            m = LORA_KEY.match(key)
            site = m and sites.get(int(m.group(1)) | 1)  # attn1 (even N) shares the block with attn2 N + 1
            if not site:
                continue
            width = site.width_mult * base
            n, proj, matrix = int(m.group(1)), m.group(2), m.group(3)
            in_width = spec.context_dim if n % 2 == 1 and proj in ("to_k", "to_v") else width
            expected[key] = (spec.lora_rank, in_width) if matrix == "down" else (width, spec.lora_rank)
    return expected


def _probably(spec: AdapterSpec) -> str:
    files = ", ".join(family(spec.family).checkpoints)
    return f"It looks like {spec.label} (family {spec.family}, released as {files})"


def check_shapes(spec: AdapterSpec, state_dicts: Mapping, source: str) -> None:
    """Every tensor of the file against the shapes ``spec``'s family gives it; TensorShapeError naming the
    file, each wrong tensor with the expected and the found shape, and what the file probably is.

    Run at detection, so a damaged file fails when it is loaded (or skipped when a preset looks for it),
    never later inside sampling. Shapes only: meta tensors are fine."""
    p, ip = state_dicts["image_proj"], state_dicts["ip_adapter"]
    problems: list[str] = []
    try:
        proj_expected = projection_layout(spec.projection, p)
    except ValueError as exc:
        raise TensorShapeError(f"{source}: the image_proj tensors do not fit together ({exc}). {_probably(spec)}, "
                               "but the file is damaged or was altered; download it again.") from exc
    for section, tensors, expected in (("image_proj", p, proj_expected), ("ip_adapter", ip, _ip_layer_shapes(spec, ip))):
        for key in sorted(expected, key=_natural):
            if key not in tensors:
                if section == "image_proj":
                    problems.append(f"{section}.{key} is missing (expected {list(expected[key])})")
                continue
            found = tuple(tensors[key].shape)
            if found != expected[key]:
                problems.append(f"{section}.{key} is {list(found)}, expected {list(expected[key])}")
        if section == "image_proj":
            problems += [f"{section}.{key} is not part of a {spec.projection} projection"
                         for key in sorted(set(tensors) - set(expected), key=_natural)]
    if problems:
        raise TensorShapeError(
            f"{source}: {len(problems)} tensor(s) do not have the shapes of its family: {'; '.join(problems[:6])}"
            f"{' ...' if len(problems) > 6 else ''}. {_probably(spec)}, but the file is damaged or was altered; "
            "download it again.")


def _natural(key: str):
    return [int(part) if part.isdigit() else part for part in key.split(".")]


def _match(seen: Mapping[str, object], where: str, m: _Measured, layers: _Layers) -> Family:
    exact, loose = [], []
    for fam in FAMILIES:
        undetermined = False
        for name in MATCH_FIELDS:
            want = getattr(fam, name)
            if want is None:
                continue
            got = seen[name]
            if got is None:
                undetermined = True
            elif got != want:
                break
        else:
            (loose if undetermined else exact).append(fam)
    if len(exact) == 1:
        return exact[0]
    candidates = exact or loose
    if len(candidates) == 1:
        return candidates[0]
    preferred = [f for f in candidates if f.preferred]
    if len(preferred) == 1:
        return preferred[0]
    found = ", ".join(f"{k}={v}" for k, v in seen.items())
    found += f", token width {m.token_dim}, context width {layers.context_dim}, {layers.count} layers"
    if m.clip_width is not None:
        found += f", encoder width {m.clip_width}"
    if m.resampler_dim is not None:
        found += f", resampler width {m.resampler_dim} -> {m.resampler_output}"
    if not candidates:
        raise UnknownAdapterError(f"{where}: no known IP-Adapter family has this layout ({found}). {_families_line()}")
    raise UnknownAdapterError(
        f"{where}: ambiguous layout, could be {', '.join(f.name for f in candidates)} ({found})."
    )
