"""Reading tensor files: whole IP-Adapter checkpoints, shape-only headers, and a file's identity.

A checkpoint holds two sections: ``image_proj`` (the projection model) and ``ip_adapter`` (the
``N.to_k_ip`` / ``N.to_v_ip`` weights of every cross-attention processor ``N``, plus the FaceID LoRA).
``.safetensors`` files are preferred; torch pickles (``.bin/.pt/.pth/.ckpt``) are loaded with
``weights_only=True``, so a pickle that needs code to load is refused, everywhere in this pack. The
format is read from a file's first bytes, never from its extension. Loaded weights are checked once
(float dtypes, no NaN/Inf) so a damaged file fails at load, not as a black image.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import safetensors
import torch

from .errors import CheckpointError, NotAnAdapterError, UnsafeCheckpointError
from .flux import SECTION_ALIASES as FLUX_SECTION_ALIASES

__all__ = [
    "PICKLE_SUFFIXES",
    "SAFETENSORS_SUFFIXES",
    "Shapes",
    "StateDicts",
    "check_sections",
    "check_tensors",
    "file_identity",
    "load_pickle",
    "load_tensor_file",
    "pickle_shapes",
    "read_checkpoint",
    "read_safetensors_header",
    "split_sections",
    "tensor_file_kind",
]

StateDicts = dict[str, dict[str, torch.Tensor]]
Shapes = dict[str, tuple[int, ...]]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # the names files go by; the format is read from the bytes
_MAX_HEADER = 100 * 1024 * 1024  # a larger safetensors header means a corrupt or foreign file


def file_identity(path: str | os.PathLike) -> tuple[str, int, int]:
    """(real path, modification time in ns, size): the key under which a file's contents are cached,
    so an unchanged file is not read twice and a replaced one is."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_mtime_ns, st.st_size


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"  # a pickle protocol opcode: torch.save's legacy format
# What the first bytes of a file that is no tensor file usually mean, for the message.
_FOREIGN_STARTS = (
    (b"version https://git-lfs", "a Git LFS pointer (the download fetched the pointer, not the file)"),
    (b"<!doctype html", "an HTML page (a failed or blocked download)"),
    (b"<html", "an HTML page (a failed or blocked download)"),
    (b"{", "JSON text"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x1f\x8b", "a gzip archive"),
)


def _describe_bytes(head: bytes) -> str:
    if not head:
        return "the file is empty"
    lowered = head.lstrip().lower()
    for start, what in _FOREIGN_STARTS:
        if lowered.startswith(start.lower()):
            return f"it looks like {what}"
    return f"its first bytes are {head[:8].hex(' ')} ({head[:8]!r})"


def tensor_file_kind(path: str | os.PathLike) -> str:
    """``"safetensors"``, ``"zip"`` (torch.save) or ``"pickle"`` (torch.save, legacy format), read from the
    file's first bytes whatever its extension; CheckpointError saying what the bytes look like otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file")
    with open(path, "rb") as f:
        head = f.read(64)
    # Safetensors first: its 8-byte little-endian header length may well start with 0x80 or "PK"; the JSON
    # header's "{" right after it is what no torch file has there.
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_PICKLE_MAGIC):
        return "pickle"
    raise CheckpointError(
        f"{path.name} is not a tensor file (safetensors or torch checkpoint): {_describe_bytes(head)}. "
        "Download it again from its source."
    )


# --------------------------------------------------------------------------------------------------
# Shapes only
# --------------------------------------------------------------------------------------------------
def read_safetensors_header(path: str | os.PathLike) -> Shapes:
    """Tensor name -> shape from a .safetensors header; reads 8 bytes plus the header, no tensor data."""
    name = Path(path).name
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{name} is too short to be a safetensors file ({len(head)} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length <= 1 or length > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{name} has no valid safetensors header (header length {length} in a file of "
                                  f"{size} bytes): the file is damaged or not a safetensors file.")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"{name} has an unreadable safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{name} has no valid safetensors header")
    shapes: Shapes = {}
    end = 0
    try:
        for k, v in header.items():
            if k == "__metadata__" or not isinstance(v, dict) or "shape" not in v:
                continue
            shapes[k] = tuple(int(n) for n in v["shape"])
            end = max(end, int(v.get("data_offsets", (0, 0))[1]))
    except (TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{name} has a malformed safetensors header ({exc})") from exc
    if 8 + length + end > size:  # a download cut short: the header promises more data than the file has
        raise CheckpointError(f"{name} is truncated: its header describes {8 + length + end} bytes, the file has "
                              f"{size}. Download it again.")
    return shapes


def _flatten(obj, prefix: str, out: Shapes) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = tuple(obj.shape)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(k, str):
                _flatten(v, f"{prefix}.{k}" if prefix else k, out)


def pickle_shapes(path: str | os.PathLike) -> Shapes:
    """Tensor name -> shape of a torch file (nested sections joined with '.'); a zip-format file is
    memory-mapped, so its tensor data stays on disk."""
    out: Shapes = {}
    _flatten(load_pickle(Path(path), mmap=True), "", out)
    return out


# --------------------------------------------------------------------------------------------------
# Whole files
# --------------------------------------------------------------------------------------------------
def load_pickle(path: Path, mmap: bool) -> Mapping:
    """A torch file's dict, loaded with ``weights_only=True`` (``mmap``: memory-mapped where the format
    allows). Raises UnsafeCheckpointError for a pickle that needs code, CheckpointError otherwise."""
    path = Path(path)
    try:
        # Memory-mapping needs the zip format and a path; torch.load hands a path ending in .safetensors to
        # safetensors, so such a file (a torch file misnamed) is read through a file object instead.
        if mmap and tensor_file_kind(path) == "zip" and path.suffix.lower() != ".safetensors":
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:
            with open(path, "rb") as f:
                data = torch.load(f, map_location="cpu", weights_only=True)
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


def read_checkpoint(path: str | os.PathLike) -> StateDicts:
    """Load an IP-Adapter file as ``{"image_proj": {...}, "ip_adapter": {...}}`` (CPU tensors).

    ``.safetensors``: flat ``image_proj.*`` / ``ip_adapter.*`` keys (``adapter_modules.*`` and
    ``image_proj_model.*`` from training states are accepted as aliases). ``.bin/.pt/.pth/.ckpt``: a
    nested dict, loaded with ``weights_only=True``; a pickle that needs code is refused."""
    path = Path(path)
    raw = load_tensor_file(path)
    sections = check_sections(raw, split_sections(raw), path.name)
    check_tensors({f"{section}.{k}": t for section, tensors in sections.items() for k, t in tensors.items()}, path.name)
    return sections


def load_tensor_file(path: str | os.PathLike) -> Mapping:
    """Every entry of a tensor file, CPU tensors, dispatched on the file's first bytes (``tensor_file_kind``),
    not its extension: a safetensors file named .bin loads. Pickles load with ``weights_only=True``."""
    path = Path(path)
    if tensor_file_kind(path) != "safetensors":
        return load_pickle(path, mmap=False)
    read_safetensors_header(path)  # a clear message for a truncated or malformed file
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path.name} could not be read as safetensors: {exc}") from exc


def check_tensors(tensors: Mapping[str, torch.Tensor], source: str, kind: str = "an IP-Adapter") -> None:
    """Refuse weights that would give wrong images, once at load: a tensor that is not floating point
    (an integer or boolean tensor where weights belong) or holds NaN / Inf. Names the file and the first
    bad tensors, and says it is not a good ``kind`` file. Meta tensors (shape-only reading) are skipped."""
    wrong_dtype, not_finite = [], []
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.is_meta:
            continue
        if not t.is_floating_point():
            wrong_dtype.append(f"{key} ({str(t.dtype).removeprefix('torch.')})")
        elif t.numel() and not all(bool(torch.isfinite(v)) for v in torch.aminmax(t)):
            # min and max carry any NaN (they propagate it) or infinity: one fused pass, no temporary
            # (measured 45x faster than isfinite().all() on fp16 CPU tensors)
            not_finite.append(key)
    if wrong_dtype:
        raise CheckpointError(
            f"{source} holds {len(wrong_dtype)} tensors that are not floating point: {', '.join(wrong_dtype[:4])}"
            f"{' ...' if len(wrong_dtype) > 4 else ''}; {kind} holds float16/bfloat16/float32 values. The file is "
            f"damaged or not {kind}; replace it.")
    if not_finite:
        raise CheckpointError(
            f"{source} holds NaN or infinite values in {len(not_finite)} tensors ({', '.join(not_finite[:4])}"
            f"{' ...' if len(not_finite) > 4 else ''}); as {kind} it would give black or noise images. The file is "
            "damaged (or was saved from a diverged training run); replace it.")


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
    **FLUX_SECTION_ALIASES,  # XLabs Flux: ip_adapter_proj_model.* / double_blocks.N.processor.*
}


def split_sections(state: Mapping) -> StateDicts:
    """Normalise a loaded mapping (nested sections, flat prefixed keys, or a ``state_dict`` wrapper, nested
    or flattened) into ``{"image_proj": {...}, "ip_adapter": {...}}``. Keys outside the sections are dropped."""
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
        if head == "state_dict":  # a wrapper whose keys were flattened (shape-only reading)
            head, _, rest = rest.partition(".")
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


def check_sections(raw: Mapping, sections: StateDicts, source: str) -> StateDicts:
    """``sections`` when both are non-empty; otherwise NotAnAdapterError saying what the file (whose
    entries are ``raw``) looks like instead."""
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
