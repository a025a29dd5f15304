"""The checkpoint API in one import, for callers outside the library (scripts, other packs).

Nothing is defined here: each name is owned by the module that implements it, and the library's own
modules import from those directly.

* ``files``: reading a checkpoint (``read_checkpoint``, ``split_sections``)
* ``model_files``: shape-only reading and detection of a file (``read_checkpoint_shapes``, ``inspect_checkpoint``)
* ``detect``: detection from tensors (``detect``, ``PROJECTIONS``)
* ``families``: the families table and the spec (``FAMILIES``, ``family``, ``AdapterSpec``, FaceID v2 option)
* ``encoders``: the widths that name encoders (``KnownWidths``, ``FULL_WIDTHS``)
* ``errors``: the exceptions
"""
from __future__ import annotations

from .detect import PROJECTIONS, detect
from .encoders import FULL_WIDTHS, KnownEncoder, KnownWidths
from .errors import CheckpointError, NotAnAdapterError, UnknownAdapterError, UnsafeCheckpointError
from .families import FACEID_V2_OPTIONS, FAMILIES, AdapterSpec, EncoderRequirement, Family, family, resolve_faceid_v2
from .files import read_checkpoint, split_sections
from .model_files import inspect_checkpoint, read_checkpoint_shapes

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
