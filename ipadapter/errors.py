"""Every exception the library raises on purpose, in one place, so callers can catch them by kind.

All are ``ValueError`` subclasses (a problem the user can fix in the workflow or the model folders),
except the two insightface ones, which keep the standard bases (``ImportError``, ``FileNotFoundError``)
that generic handlers already expect. ``embeds_file.EmbedsFileError`` still lives in its own module.
"""
from __future__ import annotations

__all__ = [
    "CheckpointError",
    "EncoderMismatchError",
    "FaceIDError",
    "FaceModelFilesError",
    "FaceModelMissingError",
    "InsightFaceMissingError",
    "LoraError",
    "ModelMismatchError",
    "NoFaceError",
    "NotAnAdapterError",
    "PresetFilesMissing",
    "PresetUnsupported",
    "ScheduleError",
    "TensorShapeError",
    "UnknownAdapterError",
    "UnsafeCheckpointError",
]


# --- checkpoint files -------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A file could not be read as an IP-Adapter checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that needs arbitrary code to load; refused."""


class UnknownAdapterError(CheckpointError):
    """The tensors do not match any known IP-Adapter family."""


class NotAnAdapterError(UnknownAdapterError):
    """The file holds tensors, but not IP-Adapter ones (a CLIP vision model, a LoRA, ...)."""


class TensorShapeError(CheckpointError):
    """A recognised adapter has tensors whose shapes do not fit its family (a damaged or altered file)."""


# --- models that do not fit together ----------------------------------------------------------------
class ModelMismatchError(ValueError):
    """The adapter belongs to another base model than the connected MODEL."""


class EncoderMismatchError(ValueError):
    """The connected CLIP vision encoder is not the one the adapter was trained with."""


class LoraError(ValueError):
    """A FaceID LoRA (in the checkpoint or a separate file) does not fit the connected MODEL."""


# --- FaceID -----------------------------------------------------------------------------------------
class FaceIDError(ValueError):
    """A FaceID input problem the user can fix (wrong node, missing input, wrong adapter)."""


class InsightFaceMissingError(ImportError):
    """insightface is not installed."""


class FaceModelMissingError(FileNotFoundError):
    """An insightface model pack is not in the insightface folders, or does not load."""


class FaceModelFilesError(FaceModelMissingError):
    """A face model folder lacks a usable detector or recognition .onnx file (onnxruntime backend)."""


class NoFaceError(ValueError):
    """No face was detected in a reference image."""


# --- presets and schedules --------------------------------------------------------------------------
class PresetFilesMissing(ValueError):
    """Some file a preset needs is not in the model folders; the message lists all of them."""


class PresetUnsupported(ValueError):
    """The preset has no files for the connected model's architecture."""


class ScheduleError(ValueError):
    """A weight schedule (IPAdapter Weights and friends) cannot be built from the given text or values."""
