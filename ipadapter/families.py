"""The IP-Adapter families table and the spec detection produces: what each family is and needs.

``FAMILIES`` holds one frozen record per checkpoint layout: the match fields ``detect`` compares with
what the tensors show, and the behaviour that follows (encoder input size, face embedding, portrait,
Kolors). ``AdapterSpec`` is the result of detection for one file. The only thing the tensors cannot
tell is FaceID-Plus v1 from v2 (identical tensors); that is the caller's explicit option, see
``resolve_faceid_v2``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .encoders import CLIP_PATCH_SIZE

__all__ = [
    "AdapterSpec",
    "EncoderRequirement",
    "FACEID_V2_OPTIONS",
    "FAMILIES",
    "MATCH_FIELDS",
    "Family",
    "family",
    "resolve_faceid_v2",
]


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


MATCH_FIELDS = ("projection", "arch", "lora", "resampler_input", "dim_is_output", "token_dim_is_context", "encoder")

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
# What detection says about one file
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
