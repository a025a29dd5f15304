"""Reading IP-Adapter checkpoints and recognising their family from tensor names and shapes.

A checkpoint holds two sections: ``image_proj`` (the projection model that turns CLIP vision or face
features into image tokens) and ``ip_adapter`` (``N.to_k_ip.weight`` / ``N.to_v_ip.weight`` for every
cross-attention processor ``N`` of the base UNet, plus processor LoRA weights in FaceID files).

Detection never looks at the file name: the family comes from which projection keys exist and from
their shapes, matched against one table of frozen records (``FAMILIES``). The only thing the tensors
cannot tell is FaceID-Plus v1 from v2 (identical tensors); that is the caller's explicit option, see
``resolve_faceid_v2``.

Widths that name an encoder (1024 = ViT-H image_embeds, ...) are data too (``KnownWidths``); tests with
tiny stand-in models pass their own table, real files use ``FULL_WIDTHS``.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

__all__ = [
    "AdapterSpec",
    "CheckpointError",
    "EncoderRequirement",
    "FAMILIES",
    "FACEID_V2_OPTIONS",
    "FULL_WIDTHS",
    "Family",
    "KnownEncoder",
    "KnownWidths",
    "NotAnAdapterError",
    "PROJECTIONS",
    "UnknownAdapterError",
    "UnsafeCheckpointError",
    "detect",
    "family",
    "inspect_checkpoint",
    "read_checkpoint",
    "read_checkpoint_shapes",
    "resolve_faceid_v2",
    "split_sections",
]

StateDicts = dict[str, dict[str, torch.Tensor]]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

# Cross-attention layer count -> base architecture.
LAYER_COUNTS = {16: "sd15", 70: "sdxl"}
CLIP_PATCH_SIZE = 14  # every supported CLIP vision encoder uses 14-px patches (257 tokens at 224 px)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A file could not be read as an IP-Adapter checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that needs arbitrary code to load; refused."""


class UnknownAdapterError(CheckpointError):
    """The tensors do not match any known IP-Adapter family."""


class NotAnAdapterError(UnknownAdapterError):
    """The file holds tensors, but not IP-Adapter ones (a CLIP vision model, a LoRA, ...)."""


# --------------------------------------------------------------------------------------------------
# Encoders and the widths that name them
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderRequirement:
    """The image encoder output an adapter's projection expects."""

    model: str  # "CLIP ViT-H", or a generic "CLIP vision (penultimate width 40)" for unknown widths
    output: str  # "image_embeds" | "penultimate_hidden_states"
    width: int
    image_size: int = 224
    key: str | None = None  # canonical encoder key ("vit-h", "vit-g", "vit-l-336"); None when unknown

    @property
    def tokens(self) -> int:
        """Tokens of the penultimate hidden states: CLS + one per patch."""
        return (self.image_size // CLIP_PATCH_SIZE) ** 2 + 1


@dataclass(frozen=True)
class KnownEncoder:
    key: str
    name: str
    hidden_size: int  # width of the penultimate hidden states
    projection_dim: int  # width of image_embeds
    image_size: int = 224

    def width(self, output: str) -> int:
        return self.hidden_size if output == "penultimate_hidden_states" else self.projection_dim


@dataclass(frozen=True)
class KnownWidths:
    """Widths that identify encoders and face embeddings."""

    encoders: tuple[KnownEncoder, ...]
    face_embed_widths: tuple[int, ...]

    def encoder(self, output: str, width: int) -> KnownEncoder | None:
        for enc in self.encoders:
            if enc.width(output) == width:
                return enc
        return None

    @classmethod
    def from_dims(cls, clip_dims: Mapping[str, object], face_embed_width: int) -> "KnownWidths":
        """Build a table from objects with ``name``, ``hidden_size``, ``projection_dim``, ``image_size``
        (such as the harness's ClipVisionDims), keyed by the canonical encoder key."""
        encoders = tuple(
            KnownEncoder(key, f"CLIP {d.name}", d.hidden_size, d.projection_dim, getattr(d, "image_size", 224))
            for key, d in clip_dims.items()
        )
        return cls(encoders, (face_embed_width,))


FULL_WIDTHS = KnownWidths(
    encoders=(
        KnownEncoder("vit-h", "CLIP ViT-H", hidden_size=1280, projection_dim=1024),
        KnownEncoder("vit-g", "CLIP ViT-bigG", hidden_size=1664, projection_dim=1280),
        KnownEncoder("vit-l-336", "CLIP ViT-L-336", hidden_size=1024, projection_dim=768, image_size=336),
    ),
    face_embed_widths=(512,),  # insightface ArcFace (buffalo_l, antelopev2)
)

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


def _split_tokens(rows: int, width: int, key: str) -> int:
    if width <= 0 or rows % width:
        raise UnknownAdapterError(f"{key} has {rows} rows, not a multiple of the token width {width}")
    return rows // width


def _measure_image_proj(p) -> _Measured:
    c = _rows(p, "norm.weight")
    return _Measured(c, _split_tokens(_rows(p, "proj.weight"), c, "proj.weight"),
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
    return _Measured(c, _split_tokens(_rows(p, "proj.2.weight"), c, "proj.2.weight"), face_width=_cols(p, "proj.0.weight"))


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
# The families table
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """One checkpoint family. The match fields are compared with what the tensors show; None = any."""

    name: str
    label: str
    checkpoints: tuple[str, ...]  # released files with this layout
    # -- match fields --
    projection: str
    arch: str
    lora: bool | None = None  # processor LoRA keys in ip_adapter
    resampler_input: str | None = None  # "clip" | "face": what a plain Resampler reads
    dim_is_output: bool | None = None  # Resampler internal width == output width
    token_dim_is_context: bool = True  # projected tokens already have the UNet context width
    encoder: str | None = None  # canonical encoder key, where only the encoder tells families apart
    preferred: bool = False  # the pick among look-alikes when the width names no known encoder/face model
    # -- behaviour --
    image_size: int = 224  # encoder input size when the encoder width is not a known one
    face_embedding: str | None = None  # insightface output: "normed_embedding" | "embedding"
    is_portrait: bool = False
    is_kolors: bool = False
    faceid_v2: bool | None = False  # None: v1/v2 is the caller's option (identical tensors)

    @property
    def is_faceid(self) -> bool:
        return self.face_embedding is not None


_MATCH_FIELDS = ("projection", "arch", "lora", "resampler_input", "dim_is_output", "token_dim_is_context", "encoder")

FAMILIES: tuple[Family, ...] = (
    Family("ip-adapter_sd15", "SD1.5 (ViT-H image embeds)",
           ("ip-adapter_sd15", "ip-adapter_sd15_light", "ip-adapter_sd15_light_v11"),
           "image_proj", "sd15", lora=False, encoder="vit-h", preferred=True),
    Family("ip-adapter_sd15_vit-G", "SD1.5 (ViT-bigG image embeds)", ("ip-adapter_sd15_vit-G",),
           "image_proj", "sd15", lora=False, encoder="vit-g"),
    Family("ip-adapter-plus_sd15", "SD1.5 Plus (Resampler)",
           ("ip-adapter-plus_sd15", "ip-adapter-plus-face_sd15", "ip_plus_composition_sd15"),
           "resampler", "sd15", lora=False, resampler_input="clip"),
    Family("ip-adapter-full-face_sd15", "SD1.5 full face (MLP over all CLIP tokens)", ("ip-adapter-full-face_sd15",),
           "mlp", "sd15", lora=False),
    Family("ip-adapter_sdxl", "SDXL (ViT-bigG image embeds)", ("ip-adapter_sdxl",),
           "image_proj", "sdxl", lora=False, encoder="vit-g", preferred=True),
    Family("ip-adapter_sdxl_vit-h", "SDXL (ViT-H image embeds)", ("ip-adapter_sdxl_vit-h",),
           "image_proj", "sdxl", lora=False, encoder="vit-h"),
    Family("ip-adapter-plus_sdxl_vit-h", "SDXL Plus (Resampler, ViT-H)",
           ("ip-adapter-plus_sdxl_vit-h", "ip-adapter-plus-face_sdxl_vit-h", "ip_plus_composition_sdxl"),
           "resampler", "sdxl", lora=False, resampler_input="clip", dim_is_output=False, preferred=True),
    Family("ip-adapter-faceid_sd15", "SD1.5 FaceID", ("ip-adapter-faceid_sd15",),
           "faceid", "sd15", lora=True, face_embedding="normed_embedding"),
    Family("ip-adapter-faceid_sdxl", "SDXL FaceID", ("ip-adapter-faceid_sdxl",),
           "faceid", "sdxl", lora=True, face_embedding="normed_embedding"),
    Family("ip-adapter-faceid-plus_sd15", "SD1.5 FaceID Plus (v1/v2)",
           ("ip-adapter-faceid-plus_sd15", "ip-adapter-faceid-plusv2_sd15"),
           "faceid_plus", "sd15", face_embedding="normed_embedding", faceid_v2=None),
    Family("ip-adapter-faceid-plus_sdxl", "SDXL FaceID Plus (v2)", ("ip-adapter-faceid-plusv2_sdxl",),
           "faceid_plus", "sdxl", face_embedding="normed_embedding", faceid_v2=None),
    Family("ip-adapter-faceid-portrait_sd15", "SD1.5 FaceID Portrait",
           ("ip-adapter-faceid-portrait_sd15", "ip-adapter-faceid-portrait-v11_sd15"),
           "faceid", "sd15", lora=False, face_embedding="normed_embedding", is_portrait=True),
    Family("ip-adapter-faceid-portrait_sdxl", "SDXL FaceID Portrait", ("ip-adapter-faceid-portrait_sdxl",),
           "faceid", "sdxl", lora=False, face_embedding="normed_embedding", is_portrait=True),
    Family("ip-adapter-faceid-portrait_sdxl_unnorm", "SDXL FaceID Portrait (unnormalised embedding)",
           ("ip-adapter-faceid-portrait_sdxl_unnorm",),
           "resampler", "sdxl", lora=False, resampler_input="face", dim_is_output=False,
           face_embedding="embedding", is_portrait=True),
    Family("Kolors-IP-Adapter-Plus", "Kolors Plus (Resampler, ViT-L-336)", ("ip_adapter_plus_general",),
           "resampler", "sdxl", lora=False, resampler_input="clip", dim_is_output=True,
           image_size=336, is_kolors=True),
    Family("Kolors-IP-Adapter-FaceID-Plus", "Kolors FaceID Plus", ("ipa-faceid-plus",),
           "faceid_plus", "sdxl", token_dim_is_context=False, image_size=336,
           face_embedding="normed_embedding", is_kolors=True, faceid_v2=True),
)

_FAMILY_BY_NAME = {f.name: f for f in FAMILIES}


def family(name: str) -> Family:
    """The table record of a family (by its name or by the name of a released file with that layout)."""
    if name in _FAMILY_BY_NAME:
        return _FAMILY_BY_NAME[name]
    stem = Path(name).stem
    for fam in FAMILIES:
        if stem in fam.checkpoints:
            return fam
    raise KeyError(f"no IP-Adapter family named {name!r}; known: {', '.join(_FAMILY_BY_NAME)}")


# --------------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterSpec:
    family: str
    label: str
    arch: str  # "sd15" | "sdxl"
    tokens: int  # image tokens per reference image (per face for portrait)
    projection: str  # "image_proj" | "mlp" | "resampler" | "faceid" | "faceid_plus"
    context_dim: int  # width to_k_ip / to_v_ip take
    token_dim: int  # width of the projected tokens (== context_dim except Kolors FaceID)
    layer_count: int  # 16 (sd15) or 70 (sdxl)
    encoder: EncoderRequirement | None
    face_embed_dim: int | None
    face_embedding: str | None  # "normed_embedding" | "embedding" (insightface attribute) | None
    has_lora: bool
    lora_rank: int | None
    is_faceid: bool
    is_portrait: bool
    is_kolors: bool
    faceid_v2: bool | None  # None: FaceID-Plus v1/v2 undecided (see resolve_faceid_v2 / with_faceid_v2)
    source: str | None = field(default=None, compare=False)

    def with_faceid_v2(self, v2: bool) -> "AdapterSpec":
        """Fix FaceID-Plus v1/v2 from the caller's option; families where the tensors decide keep theirs."""
        return replace(self, faceid_v2=bool(v2)) if self.faceid_v2 is None else self

    def describe(self) -> str:
        parts = [f"{self.family} ({self.label}): {self.arch}, {self.projection}, {self.tokens} tokens"]
        if self.encoder is not None:
            parts.append(f"needs {self.encoder.model} {self.encoder.output} (width {self.encoder.width}, {self.encoder.image_size} px)")
        if self.face_embed_dim is not None:
            parts.append(f"face embedding {self.face_embedding} ({self.face_embed_dim})")
        if self.has_lora:
            parts.append(f"LoRA rank {self.lora_rank}")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# FaceID-Plus v1 / v2
# --------------------------------------------------------------------------------------------------
FACEID_V2_OPTIONS = ("auto from file name", "v1", "v2")
_V2_NAME = re.compile(r"plus[-_ ]?v2")


def resolve_faceid_v2(option: str, file_name: str | None = None) -> bool:
    """True for FaceID-Plus v2. ``option`` is one of FACEID_V2_OPTIONS; only "auto from file name" reads
    the file name, as a hint (``plusv2`` in it means v2)."""
    opt = option.strip().lower()
    if opt == "v1":
        return False
    if opt == "v2":
        return True
    if opt in ("auto from file name", "auto"):
        return bool(_V2_NAME.search(Path(file_name or "").name.lower()))
    raise ValueError(f"unknown FaceID v2 option {option!r}; expected one of {', '.join(FACEID_V2_OPTIONS)}")


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------
# Training-state files name the sections after the IPAdapter module's attributes: image_proj_model
# (the projection) and adapter_modules (ModuleList of the UNet's attention processors, same N keys).
_SECTION_ALIASES = {
    "image_proj": "image_proj",
    "image_proj_model": "image_proj",
    "ip_adapter": "ip_adapter",
    "adapter_modules": "ip_adapter",
}


def split_sections(state: Mapping) -> StateDicts:
    """Normalise a loaded mapping (nested sections, flat prefixed keys, or a ``state_dict`` wrapper)
    into ``{"image_proj": {...}, "ip_adapter": {...}}``. Keys outside the sections are dropped."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping) and not any(
        k in state for k in _SECTION_ALIASES
    ):
        state = state["state_dict"]
    out: StateDicts = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, Mapping):
            section = _SECTION_ALIASES.get(key)
            if section is not None:
                out[section].update({k: v for k, v in value.items() if isinstance(v, torch.Tensor)})
            continue
        if not isinstance(value, torch.Tensor):
            continue
        head, _, rest = key.partition(".")
        section = _SECTION_ALIASES.get(head)
        if section is not None and rest:
            out[section][rest] = value
    return out


# What a non-adapter file probably is, from its key names (first match wins).
_OTHER_FILE_KINDS = (
    (re.compile(r"(^|\.)(vision_model|visual)\."), "a CLIP vision encoder (it belongs in models/clip_vision)"),
    (re.compile(r"lora_unet_|lora_te\d?_|\.lora_(up|down)\.|\.lora_[AB]\.|\.lora\.(up|down)\."), "a LoRA (it belongs in models/loras)"),
    (re.compile(r"^model\.diffusion_model\."), "a Stable Diffusion checkpoint (it belongs in models/checkpoints)"),
    (re.compile(r"^(input_blocks|middle_block|output_blocks|down_blocks|up_blocks|mid_block)\."), "a UNet (it belongs in models/unet)"),
    (re.compile(r"^(encoder|decoder)\.(conv_in|down|up|mid)"), "a VAE (it belongs in models/vae)"),
    (re.compile(r"^(text_model|transformer\.text_model)\."), "a CLIP text encoder"),
)


def _what_is(keys: list[str]) -> str:
    for pattern, what in _OTHER_FILE_KINDS:
        if any(pattern.search(k) for k in keys):
            return what
    return "no IP-Adapter tensors"


def _check_sections(raw: Mapping, sections: StateDicts, source: str) -> StateDicts:
    if sections["image_proj"] and sections["ip_adapter"]:
        return sections
    keys = sorted(str(k) for k in raw.keys())
    sample = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
    if not sections["image_proj"] and not sections["ip_adapter"]:
        raise NotAnAdapterError(
            f"{source} is not an IP-Adapter checkpoint: it has no 'image_proj' / 'ip_adapter' sections; "
            f"its {len(keys)} entries ({sample}) look like {_what_is(keys)}."
        )
    missing = "image_proj" if not sections["image_proj"] else "ip_adapter"
    raise NotAnAdapterError(
        f"{source} is an incomplete IP-Adapter checkpoint: the '{missing}' section is missing "
        f"(found {len(sections['image_proj'])} image_proj and {len(sections['ip_adapter'])} ip_adapter tensors)."
    )


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", torch.uint8), "F8_E5M2": getattr(torch, "float8_e5m2", torch.uint8),
}


def _load_pickle(path: Path, mmap: bool) -> Mapping:
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path.name} is a pickle that needs code to load (not just tensors), so it was refused. "
            f"If you trust its source, convert it to .safetensors (load it once with torch.load(weights_only=False) "
            f"and save the tensors with safetensors.torch.save_file). Details: {str(exc).splitlines()[0]}"
        ) from exc
    except Exception as exc:  # truncated/corrupt zip, wrong format, ...
        raise CheckpointError(f"{path.name} could not be read as a torch checkpoint: {exc}") from exc
    if not isinstance(data, Mapping):
        raise NotAnAdapterError(f"{path.name} is not an IP-Adapter checkpoint: it holds a {type(data).__name__}, not a dict of tensors.")
    return data


def _read(path: str | Path, meta: bool) -> StateDicts:
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file")
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                if meta:
                    raw = {}
                    for k in f.keys():
                        sl = f.get_slice(k)
                        raw[k] = torch.empty(sl.get_shape(), dtype=_SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.uint8), device="meta")
                else:
                    raw = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise CheckpointError(f"{path.name} could not be read as safetensors: {exc}") from exc
    elif suffix in PICKLE_SUFFIXES:
        raw = _load_pickle(path, mmap=meta)
    else:
        raise CheckpointError(
            f"{path.name}: unsupported file type {suffix or '(none)'}; IP-Adapters are .safetensors (preferred) or .bin/.pt/.pth/.ckpt"
        )
    sections = _check_sections(raw, split_sections(raw), path.name)
    if meta:
        sections = {s: {k: t.to("meta") for k, t in sd.items()} for s, sd in sections.items()}
    return sections


def read_checkpoint(path: str | Path) -> StateDicts:
    """Load an IP-Adapter file as ``{"image_proj": {...}, "ip_adapter": {...}}`` (CPU tensors).

    ``.safetensors``: flat ``image_proj.*`` / ``ip_adapter.*`` keys (``adapter_modules.*`` and
    ``image_proj_model.*`` from training states are accepted as aliases). ``.bin/.pt/.pth/.ckpt``: a
    nested dict, loaded with ``weights_only=True``; a pickle that needs code is refused."""
    return _read(path, meta=False)


def read_checkpoint_shapes(path: str | Path) -> StateDicts:
    """Like ``read_checkpoint`` but every tensor is on the meta device (shapes and dtypes only).
    For .safetensors only the header is read."""
    return _read(path, meta=True)


def inspect_checkpoint(path: str | Path, widths: KnownWidths = FULL_WIDTHS) -> AdapterSpec:
    """Detect a file's family from its shapes alone (cheap: no tensor data for .safetensors)."""
    return detect(read_checkpoint_shapes(path), source=Path(path).name, widths=widths)


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------
_IP_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")
_LORA_KEY = re.compile(r"^(\d+)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")


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
    if count not in LAYER_COUNTS:
        raise UnknownAdapterError(
            f"{where}: {count} cross-attention layers (to_k_ip keys); an IP-Adapter has 16 (SD1.5) or 70 (SDXL, Kolors). "
            "Other base models are not supported."
        )
    expected = set(range(1, 2 * count, 2))
    if k_ids != expected:
        raise UnknownAdapterError(f"{where}: to_k_ip keys are not numbered 1, 3, ..., {2 * count - 1} (got {sorted(k_ids)[:6]}...)")
    widths = {int(ip[f"{n}.to_k_ip.weight"].shape[-1]) for n in k_ids} | {int(ip[f"{n}.to_v_ip.weight"].shape[-1]) for n in k_ids}
    if len(widths) != 1:
        raise UnknownAdapterError(f"{where}: to_k_ip / to_v_ip input widths differ between layers ({sorted(widths)})")
    rank = None
    downs = [k for k in ip if _LORA_KEY.match(k) and k.endswith(".down.weight")]
    if downs:
        rank = int(ip[sorted(downs)[0]].shape[0])
    return _Layers(count, LAYER_COUNTS[count], widths.pop(), rank)


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
        state_dicts = _check_sections(state_dicts, split_sections(state_dicts), where)
    p, ip = state_dicts["image_proj"], state_dicts["ip_adapter"]
    if not p or not ip:
        _check_sections(state_dicts, {"image_proj": dict(p), "ip_adapter": dict(ip)}, where)

    layers = _read_layers(ip, where)
    proj = _projection_of(p, where)
    m = _MEASURE[proj.kind](p)

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
    return AdapterSpec(
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


def _match(seen: Mapping[str, object], where: str, m: _Measured, layers: _Layers) -> Family:
    exact, loose = [], []
    for fam in FAMILIES:
        undetermined = False
        for name in _MATCH_FIELDS:
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
