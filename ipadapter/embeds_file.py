""".ipadpt files: saved encoder features (EMBEDS), read without running any code from the file.

Written as ``torch.save`` of one plain, compact CPU tensor, which is what the old extension wrote, so
files stay exchangeable both ways; read with ``torch.load(weights_only=True)``, which refuses any pickle
that would need code. Files holding safetensors content (one tensor, any key) are read too.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import Tensor

from .files import check_tensors, load_tensor_file, tensor_file_kind
from .output_files import write_atomically

SUFFIX = ".ipadpt"


class EmbedsFileError(ValueError):
    pass


def save_embeds(embeds: Tensor, path: str | os.PathLike) -> None:
    if not isinstance(embeds, Tensor):
        raise EmbedsFileError(f"IPAdapter Save Embeds needs EMBEDS (a tensor), got {type(embeds).__name__}")
    # clone: a view would otherwise save the whole storage it belongs to
    tensor = embeds.detach().cpu().contiguous().clone()
    write_atomically(path, lambda tmp: _save_tensor(tensor, tmp))


def _save_tensor(tensor: Tensor, tmp: str) -> None:
    # Through a file object: torch.save names the archive's records after a path's stem, which here would
    # be the temporary name; a file object gives the fixed name "archive".
    with open(tmp, "wb") as f:
        torch.save(tensor, f)


def load_embeds(path: str | os.PathLike) -> Tensor:
    """The tensor in an .ipadpt file, on the CPU."""
    name = Path(path).name
    try:
        kind = tensor_file_kind(path)
    except ValueError as exc:
        raise EmbedsFileError(str(exc)) from None
    if kind == "safetensors":
        try:
            tensors = load_tensor_file(path)
        except ValueError as exc:
            raise EmbedsFileError(str(exc)) from None
        if len(tensors) != 1:
            raise EmbedsFileError(f"{name} holds {len(tensors)} tensors; an embeds file holds exactly one")
        _check_values(tensors, name)
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
    _check_values({"embeds": data}, name)
    return data.cpu()


def _check_values(tensors: dict, name: str) -> None:
    try:
        check_tensors(tensors, name, kind="an embeds file")
    except ValueError as exc:
        raise EmbedsFileError(str(exc)) from None
