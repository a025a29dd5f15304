""".ipadpt files: saved encoder features (EMBEDS), read without running any code from the file.

Written as ``torch.save`` of one plain, compact CPU tensor, which is what the old extension wrote, so
files stay exchangeable both ways; read with ``torch.load(weights_only=True)``, which refuses any pickle
that would need code. Files holding safetensors content (one tensor, any key) are read too.
"""
from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import torch
from torch import Tensor

SUFFIX = ".ipadpt"


class EmbedsFileError(ValueError):
    pass


def save_embeds(embeds: Tensor, path: str | os.PathLike) -> None:
    if not isinstance(embeds, Tensor):
        raise EmbedsFileError(f"IPAdapter Save Embeds needs EMBEDS (a tensor), got {type(embeds).__name__}")
    # clone: a view would otherwise save the whole storage it belongs to
    torch.save(embeds.detach().cpu().contiguous().clone(), path)


def _is_safetensors(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1


def load_embeds(path: str | os.PathLike) -> Tensor:
    """The tensor in an .ipadpt file, on the CPU."""
    name = Path(path).name
    if _is_safetensors(path):
        import safetensors.torch

        tensors = safetensors.torch.load_file(str(path), device="cpu")
        if len(tensors) != 1:
            raise EmbedsFileError(f"{name} holds {len(tensors)} tensors; an embeds file holds exactly one")
        return next(iter(tensors.values()))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise EmbedsFileError(
            f"{name} was refused: it is a pickle that needs code to load, not plain embeds. Re-create it with "
            f"IPAdapter Encoder + IPAdapter Save Embeds. ({str(exc).splitlines()[0]})") from exc
    except Exception as exc:
        raise EmbedsFileError(f"{name} could not be read as an embeds file: {exc}") from exc
    if not isinstance(data, Tensor):
        raise EmbedsFileError(f"{name} holds a {type(data).__name__}, not an embeds tensor; "
                              "save embeds with IPAdapter Save Embeds.")
    return data.cpu()
