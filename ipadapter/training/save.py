"""Writing trained adapters and training states, atomically (a temporary file in the same folder, then
``os.replace``): an interrupted write never leaves a half-written file under the final name.

Adapter files hold the two sections every loader reads: ``image_proj`` and ``ip_adapter``
(``N.to_k_ip.weight`` / ``N.to_v_ip.weight``, N = 1, 3, 5, ...). ``.safetensors`` stores them flat with
``image_proj.`` / ``ip_adapter.`` prefixes; ``.bin`` stores the nested two-section dict of the reference.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors.torch import save_file

__all__ = ["atomic_write", "load_state", "save_adapter", "save_state"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary path)`` then move the result to ``path``; on any failure nothing is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_adapter(sections: Mapping[str, Mapping[str, torch.Tensor]], path: str | os.PathLike,
                 dtype: torch.dtype = torch.float16) -> Path:
    """Write an adapter file (.safetensors or .bin) in ``dtype`` (the released files are fp16)."""
    suffix = Path(path).suffix.lower()
    nested = {name: {k: v.detach().to("cpu", dtype).contiguous() for k, v in section.items()}
              for name, section in sections.items()}
    if suffix == ".safetensors":
        flat = {f"{name}.{k}": v for name, section in nested.items() for k, v in section.items()}
        return atomic_write(path, lambda tmp: save_file(flat, tmp))
    if suffix == ".bin":
        return atomic_write(path, lambda tmp: torch.save(nested, tmp))
    raise ValueError(f"IPAdapter training: save as .safetensors or .bin, not {suffix or 'no suffix'} ({path})")


def save_state(path: str | os.PathLike, state: dict) -> Path:
    """A resumable training state (adapter, optimiser, step, generators, settings): tensors and plain data only."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
