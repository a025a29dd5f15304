"""Model folders: register ``models/ipadapter`` with ComfyUI, keeping paths extra_model_paths.yaml added."""
from __future__ import annotations

import os

import folder_paths

FOLDERS = ("ipadapter", "insightface")


def register_model_folders() -> None:
    for name in FOLDERS:
        # extra_model_paths.yaml is read before custom nodes import: keep what it registered.
        if name in folder_paths.folder_names_and_paths:
            paths, _ = folder_paths.folder_names_and_paths[name]
        else:
            paths = [os.path.join(folder_paths.models_dir, name)]
        folder_paths.folder_names_and_paths[name] = (paths, folder_paths.supported_pt_extensions)
