"""Unified Loader presets: one table saying which files each preset uses, and finding them on disk.

A preset names, per base architecture, an IP-Adapter family (its tensor layout, ``families.FAMILIES``),
the old extension's file-name patterns (as hints and to tell apart files of one layout, such as PLUS and
PLUS FACE), the CLIP vision encoder, and for FaceID the LoRA patterns and the insightface model.

Files are recognised by what they are:

* CLIP vision: any file in ``models/clip_vision`` (sub-folders too) whose tensors are the preset's encoder,
  e.g. h94's ``image_encoder/model.safetensors`` kept under its own name. Files whose names match the old
  patterns are preferred; a name match whose tensors are another encoder is skipped.
* IP-Adapter: a file whose name matches the preset's pattern and whose tensors have the preset's layout;
  when no name matches, any file with that layout, provided no other preset shares the layout.
* FaceID LoRA: by name pattern in ``models/loras``.

When files are missing, ``PresetFilesMissing`` lists every file the preset looks for, what is accepted
in its place and the folders to put it in.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import folder_paths

from .encoders import KnownWidths, known_widths
from .errors import CheckpointError, PresetFilesMissing, PresetUnsupported
from .layers import ARCH_NAMES
from .model_files import identify_clip_vision, identify_ipadapter
from .output_files import file_version

_EXT = r"\.(safetensors|bin)$"


@dataclass(frozen=True)
class EncoderFile:
    """A CLIP vision encoder: the name the old extension wanted, its pattern, and where it comes from."""

    key: str  # encoders.KnownEncoder key
    label: str
    canonical: str
    pattern: str  # the old extension's regex (searched, case-insensitive)
    source: str


ENCODERS: dict[str, EncoderFile] = {e.key: e for e in (
    EncoderFile("vit-h", "CLIP ViT-H/14", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
                r"(ViT.H.14.*s32B.b79K|ipadapter.*sd15|sd1.?5.*model)\.(bin|safetensors)",
                "huggingface.co/h94/IP-Adapter, file models/image_encoder/model.safetensors"),
    EncoderFile("vit-g", "CLIP ViT-bigG/14", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
                r"(ViT.bigG.14.*39B.b160k|ipadapter.*sdxl|sdxl.*model)\.(bin|safetensors)",
                "huggingface.co/h94/IP-Adapter, file sdxl_models/image_encoder/model.safetensors"),
    EncoderFile("vit-l-336", "CLIP ViT-L/14-336", "clip-vit-large-patch14-336.bin",
                r"clip.vit.large.patch14.336\.(bin|safetensors)",
                "huggingface.co/Kwai-Kolors/Kolors-IP-Adapter-Plus, file image_encoder/pytorch_model.bin"),
)}


@dataclass(frozen=True)
class Variant:
    """What a preset uses on one architecture."""

    family: str  # checkpoint family (tensor layout) of the IP-Adapter
    patterns: tuple[str, ...]  # old file-name regexes, in order of preference
    canonical: str  # the file to download
    lora_patterns: tuple[str, ...] = ()
    lora_canonical: str | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    loader: str  # the node that offers it: "standard" | "faceid" | "community"
    encoder: str  # ENCODERS key
    variants: Mapping[str, Variant]  # arch -> files; an arch without an entry is not supported
    source: str  # where the IP-Adapter files come from
    insightface: str | None = None  # insightface model name (FaceID presets)
    faceid_v2: bool = False  # FaceID Plus v2 (the tensors cannot tell v1 from v2)
    unsupported_hint: str = ""  # said when the model's architecture has no variant


def _v(family: str, *patterns: str, canonical: str, lora: tuple[str, ...] = (), lora_canonical: str | None = None):
    return Variant(family, tuple(patterns), canonical, lora, lora_canonical)


_H94 = "huggingface.co/h94/IP-Adapter"
_FACEID = "huggingface.co/h94/IP-Adapter-FaceID"

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("LIGHT - SD1.5 only (low strength)", "standard", "vit-h", {
        "sd15": _v("ip-adapter_sd15", r"sd15.light.v11" + _EXT, r"sd15.light" + _EXT,
                   canonical="ip-adapter_sd15_light_v11.bin"),
    }, _H94, unsupported_hint="The light model exists for SD1.5 only."),
    Preset("STANDARD (medium strength)", "standard", "vit-h", {
        "sd15": _v("ip-adapter_sd15", r"ip.adapter.sd15" + _EXT, canonical="ip-adapter_sd15.safetensors"),
        "sdxl": _v("ip-adapter_sdxl_vit-h", r"ip.adapter.sdxl.vit.h" + _EXT,
                   canonical="ip-adapter_sdxl_vit-h.safetensors"),
    }, _H94),
    Preset("VIT-G (medium strength)", "standard", "vit-g", {
        "sd15": _v("ip-adapter_sd15_vit-G", r"sd15.vit.g" + _EXT, canonical="ip-adapter_sd15_vit-G.safetensors"),
        "sdxl": _v("ip-adapter_sdxl", r"ip.adapter.sdxl" + _EXT, canonical="ip-adapter_sdxl.safetensors"),
    }, _H94),
    Preset("PLUS (high strength)", "standard", "vit-h", {
        "sd15": _v("ip-adapter-plus_sd15", r"ip.adapter.plus.sd15" + _EXT, canonical="ip-adapter-plus_sd15.safetensors"),
        "sdxl": _v("ip-adapter-plus_sdxl_vit-h", r"plus.sdxl.vit.h" + _EXT,
                   canonical="ip-adapter-plus_sdxl_vit-h.safetensors"),
    }, _H94),
    Preset("PLUS FACE (portraits)", "standard", "vit-h", {
        "sd15": _v("ip-adapter-plus_sd15", r"plus.face.sd15" + _EXT, canonical="ip-adapter-plus-face_sd15.safetensors"),
        "sdxl": _v("ip-adapter-plus_sdxl_vit-h", r"plus.face.sdxl.vit.h" + _EXT,
                   canonical="ip-adapter-plus-face_sdxl_vit-h.safetensors"),
    }, _H94),
    Preset("FULL FACE - SD1.5 only (portraits stronger)", "standard", "vit-h", {
        "sd15": _v("ip-adapter-full-face_sd15", r"full.face.sd15" + _EXT, canonical="ip-adapter-full-face_sd15.safetensors"),
    }, _H94, unsupported_hint="The full-face model exists for SD1.5 only."),
    Preset("FACEID", "faceid", "vit-h", {
        "sd15": _v("ip-adapter-faceid_sd15", r"faceid.sd15" + _EXT, canonical="ip-adapter-faceid_sd15.bin",
                   lora=(r"faceid.sd15.lora\.safetensors$",), lora_canonical="ip-adapter-faceid_sd15_lora.safetensors"),
        "sdxl": _v("ip-adapter-faceid_sdxl", r"faceid.sdxl" + _EXT, canonical="ip-adapter-faceid_sdxl.bin",
                   lora=(r"faceid.sdxl.lora\.safetensors$",), lora_canonical="ip-adapter-faceid_sdxl_lora.safetensors"),
    }, _FACEID, insightface="buffalo_l"),
    Preset("FACEID PLUS - SD1.5 only", "faceid", "vit-h", {
        "sd15": _v("ip-adapter-faceid-plus_sd15", r"faceid.plus.sd15" + _EXT, canonical="ip-adapter-faceid-plus_sd15.bin",
                   lora=(r"faceid.plus.sd15.lora\.safetensors$",),
                   lora_canonical="ip-adapter-faceid-plus_sd15_lora.safetensors"),
    }, _FACEID, insightface="buffalo_l", unsupported_hint="FaceID Plus v1 exists for SD1.5 only; use FACEID PLUS V2."),
    Preset("FACEID PLUS V2", "faceid", "vit-h", {
        "sd15": _v("ip-adapter-faceid-plus_sd15", r"faceid.plusv2.sd15" + _EXT,
                   canonical="ip-adapter-faceid-plusv2_sd15.bin",
                   lora=(r"faceid.plusv2.sd15.lora\.safetensors$",),
                   lora_canonical="ip-adapter-faceid-plusv2_sd15_lora.safetensors"),
        "sdxl": _v("ip-adapter-faceid-plus_sdxl", r"faceid.plusv2.sdxl" + _EXT,
                   canonical="ip-adapter-faceid-plusv2_sdxl.bin",
                   lora=(r"faceid.plusv2.sdxl.lora\.safetensors$",),
                   lora_canonical="ip-adapter-faceid-plusv2_sdxl_lora.safetensors"),
    }, _FACEID, insightface="buffalo_l", faceid_v2=True),
    Preset("FACEID PORTRAIT (style transfer)", "faceid", "vit-h", {
        "sd15": _v("ip-adapter-faceid-portrait_sd15", r"portrait.v11.sd15" + _EXT, r"portrait.sd15" + _EXT,
                   canonical="ip-adapter-faceid-portrait-v11_sd15.bin"),
        "sdxl": _v("ip-adapter-faceid-portrait_sdxl", r"portrait.sdxl" + _EXT,
                   canonical="ip-adapter-faceid-portrait_sdxl.bin"),
    }, _FACEID, insightface="buffalo_l"),
    Preset("FACEID PORTRAIT UNNORM - SDXL only (strong)", "faceid", "vit-h", {
        "sdxl": _v("ip-adapter-faceid-portrait_sdxl_unnorm", r"portrait.sdxl.unnorm" + _EXT,
                   canonical="ip-adapter-faceid-portrait_sdxl_unnorm.bin"),
    }, _FACEID, insightface="buffalo_l", unsupported_hint="The unnormalised portrait model exists for SDXL only."),
    Preset("Composition", "community", "vit-h", {
        "sd15": _v("ip-adapter-plus_sd15", r"plus.composition.sd15\.safetensors$",
                   canonical="ip_plus_composition_sd15.safetensors"),
        "sdxl": _v("ip-adapter-plus_sdxl_vit-h", r"plus.composition.sdxl\.safetensors$",
                   canonical="ip_plus_composition_sdxl.safetensors"),
    }, "huggingface.co/ostris/ip-composition-adapter"),
    Preset("Kolors", "community", "vit-l-336", {
        "sdxl": _v("Kolors-IP-Adapter-Plus", r"(ip_adapter_plus_general|kolors.ip.adapter.plus)" + _EXT,
                   canonical="Kolors-IP-Adapter-Plus.bin"),
    }, "huggingface.co/Kwai-Kolors/Kolors-IP-Adapter-Plus",
        unsupported_hint="The Kolors IP-Adapter works with Kolors models only."),
)}


def preset_names(loader: str) -> list[str]:
    """The presets a Unified Loader node offers, in table order."""
    return [p.name for p in PRESETS.values() if p.loader == loader]


def _shared_layouts() -> set[tuple[str, str]]:
    """(arch, family) pairs used by more than one preset: such files are told apart by name only."""
    seen: dict[tuple[str, str], int] = {}
    for p in PRESETS.values():
        for arch, v in p.variants.items():
            seen[(arch, v.family)] = seen.get((arch, v.family), 0) + 1
    return {k for k, n in seen.items() if n > 1}


SHARED_LAYOUTS = _shared_layouts()


# --------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedPreset:
    preset: Preset
    arch: str
    ipadapter_path: str
    clip_vision_path: str
    lora_path: str | None
    insightface_model: str | None


@dataclass
class _Need:
    """One file a preset looks for, and what the search found."""

    role: str  # "IP-Adapter" | "CLIP vision" | "FaceID LoRA"
    folder: str  # folder_paths name
    canonical: str
    accepts: str
    source: str
    found: str | None = None  # relative name
    path: str | None = None
    skipped: list[str] = field(default_factory=list)  # "name (why)"


def _files(folder: str) -> list[str]:
    try:
        return sorted(folder_paths.get_filename_list(folder))
    except KeyError:  # folder type not registered
        return []


def _full(folder: str, name: str) -> str | None:
    return folder_paths.get_full_path(folder, name)


def _name_matches(patterns: tuple[str, ...], names: list[str]) -> list[str]:
    """Names matching the patterns: all matches of the first pattern first (.safetensors before other
    formats), then the next pattern's."""
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if re.search(pattern, n, re.IGNORECASE) and n not in out]
        out += sorted(hits, key=lambda n: (not n.lower().endswith(".safetensors"), n))
    return out


def _search(need: _Need, candidates: list[str], check: Callable[[str], str | None],
            fallback: list[str] = ()) -> None:
    """First candidate (then fallback file) whose path passes ``check`` (None = fits, else why not)."""
    for pool in (candidates, [n for n in fallback if n not in candidates]):
        for name in pool:
            path = _full(need.folder, name)
            if path is None:
                continue
            why = check(path)
            if why is None:
                need.found, need.path = name, path
                return
            if pool is candidates:
                need.skipped.append(f"{name} ({why})")


def _clip_vision_need(encoder: EncoderFile, widths: KnownWidths) -> _Need:
    need = _Need("CLIP vision", "clip_vision", encoder.canonical,
                 f"any file whose tensors are a {encoder.label} vision encoder, under any name and in any "
                 f"sub-folder (e.g. model.safetensors)", encoder.source)
    names = _files("clip_vision")

    def check(path: str) -> str | None:
        enc = identify_clip_vision(path, widths)
        if enc is not None and enc.key == encoder.key:
            return None
        return f"its tensors are {enc.name}" if enc is not None else "its tensors are not a known CLIP vision encoder"

    _search(need, _name_matches((encoder.pattern,), names), check, names)
    return need


def _ipadapter_need(variant: Variant, arch: str, source: str, widths: KnownWidths) -> _Need:
    by_name_only = (arch, variant.family) in SHARED_LAYOUTS
    accepts = "a file name matching " + " or ".join(f"/{p}/" for p in variant.patterns) + " (any case)"
    if not by_name_only:
        accepts += f", or any file with the {variant.family} tensor layout"
    need = _Need("IP-Adapter", "ipadapter", variant.canonical, accepts, source)
    names = _files("ipadapter")

    def check(path: str) -> str | None:
        try:
            spec = identify_ipadapter(path, widths)
        except CheckpointError as exc:
            return str(exc).split(": ", 1)[-1][:160]
        return None if spec.family == variant.family else f"its tensors are {spec.family}"

    _search(need, _name_matches(variant.patterns, names), check, [] if by_name_only else names)
    return need


def _lora_need(variant: Variant, source: str) -> _Need:
    need = _Need("FaceID LoRA", "loras", variant.lora_canonical or "",
                 "a file name matching " + " or ".join(f"/{p}/" for p in variant.lora_patterns) + " (any case)",
                 source)
    _search(need, _name_matches(variant.lora_patterns, _files("loras")), lambda path: None)
    return need


def _folders(folder: str) -> str:
    try:
        paths = folder_paths.get_folder_paths(folder)
    except KeyError:
        paths = [os.path.join(folder_paths.models_dir, folder)]
    return " or ".join(paths)


def _missing_message(preset: Preset, arch: str, needs: list[_Need]) -> str:
    missing = [n for n in needs if n.path is None]
    lines = [f"IPAdapter preset '{preset.name}' ({ARCH_NAMES.get(arch, arch)}) cannot find "
             f"{len(missing)} of its {len(needs)} files:"]
    for n in needs:
        if n.path is not None:
            lines.append(f"  - {n.role}: found {n.found}")
            continue
        lines.append(f"  - {n.role}: MISSING {n.canonical} (download: {n.source}). Put it in {_folders(n.folder)}. "
                     f"Accepted: {n.accepts}.")
        if n.skipped:
            lines.append(f"      not used: {'; '.join(n.skipped)}")
    lines.append("The folders are searched again on the next run (no restart needed).")
    return "\n".join(lines)


def preset_version(preset_name: str, *, need_lora: bool = True) -> str:
    """What a Unified Loader's IS_CHANGED returns: for every architecture the preset has, the files it resolves
    to with their modification time and size (or why it does not resolve). ComfyUI runs the loader again
    when this changes: a file rewritten, added or removed. The MODEL input is not known at that point
    (IS_CHANGED sees widget values only), hence every architecture."""
    preset = PRESETS.get(preset_name)
    if preset is None:
        return ""
    parts = []
    for arch in sorted(preset.variants):
        try:
            r = resolve_preset(preset_name, arch, need_lora=need_lora)
        except (ValueError, OSError) as exc:
            parts.append(f"{arch}: {exc}")
            continue
        files = (r.ipadapter_path, r.clip_vision_path, r.lora_path)
        parts.append(f"{arch}: " + ", ".join(f"{path}@{file_version(path)}" for path in files if path))
    return "\n".join(parts)


# DiT models (no UNet): the diffusion model's block list -> (name, the adapters and encoders to load by hand).
# The presets are SD1.5/SDXL strength levels of h94's files, so these models get no preset rows.
TRANSFORMER_MODELS = {
    "double_blocks": ("Flux", "XLabs' flux-ip-adapter(-v2).safetensors with clip_vision_l.safetensors (IPAdapter "
                              "Advanced), or InstantX's FLUX.1-dev ip-adapter.bin with a pooled SigLIP vector "
                              "(IPAdapter Embeds)"),
    "joint_blocks": ("SD3.5", "InstantX's SD3.5-Large ip-adapter.bin with sigclip_vision_patch14_384.safetensors "
                              "(IPAdapter Advanced)"),
}


def refuse_transformer_model(model, preset_name: str) -> None:
    """A clear ``PresetUnsupported`` when the MODEL is a Flux or SD3 transformer."""
    dm = model.get_model_object("diffusion_model")
    for blocks, (name, files) in TRANSFORMER_MODELS.items():
        if hasattr(dm, blocks):
            raise PresetUnsupported(
                f"IPAdapter preset '{preset_name}': the Unified Loader presets are SD1.5/SDXL files, and the connected "
                f"model is {name}. Load the {name} IP-Adapter with IPAdapter Model Loader and its encoder with Load "
                f"CLIP Vision instead: {files}.")


def resolve_preset(preset_name: str, arch: str | None, *, need_lora: bool = True,
                   widths: KnownWidths | None = None) -> ResolvedPreset:
    """Find the files of ``preset_name`` for a model of architecture ``arch`` ("sd15" / "sdxl").

    ``need_lora=False`` leaves a missing FaceID LoRA out (``lora_path`` None) instead of raising.
    Raises ``PresetUnsupported`` when the preset has nothing for ``arch``, ``PresetFilesMissing`` (listing
    every file the preset looks for and the folders to put them in) when a file is not found."""
    preset = PRESETS.get(preset_name)
    if preset is None:
        raise ValueError(f"unknown IPAdapter preset {preset_name!r}; known: {', '.join(PRESETS)}")
    variant = preset.variants.get(arch) if arch is not None else None
    if variant is None:
        have = ARCH_NAMES.get(arch or "", "neither an SD1.5 nor an SDXL model")
        parts = [f"IPAdapter preset '{preset.name}' has no model for the connected model ({have})."]
        if preset.unsupported_hint:
            parts.append(preset.unsupported_hint)
        options = [p.name for p in PRESETS.values() if p.loader == preset.loader and arch in p.variants]
        if options:
            parts.append(f"For {have} models use: {', '.join(options)}.")
        raise PresetUnsupported(" ".join(parts))
    widths = widths or known_widths()
    needs = [_ipadapter_need(variant, arch, preset.source, widths), _clip_vision_need(ENCODERS[preset.encoder], widths)]
    lora = None
    if variant.lora_patterns:
        lora = _lora_need(variant, preset.source)
        if need_lora or lora.path is not None:
            needs.append(lora)
    if any(n.path is None for n in needs):
        raise PresetFilesMissing(_missing_message(preset, arch, needs))
    return ResolvedPreset(preset=preset, arch=arch, ipadapter_path=needs[0].path, clip_vision_path=needs[1].path,
                          lora_path=lora.path if lora is not None else None, insightface_model=preset.insightface)
