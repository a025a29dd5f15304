"""Files the save / load nodes share with ComfyUI's folders: numbered names in output/, lists of input/.

Saved files are numbered like ComfyUI's saved images (``<prefix>_00001<suffix>``, in the prefix's
sub-folder); load nodes list matching files anywhere under input/, where the user moves them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import folder_paths


@dataclass(frozen=True)
class OutputFile:
    path: str  # where to write
    filename: str  # the name alone, as the UI shows it
    subfolder: str  # below output/, from the prefix


def next_output_file(filename_prefix: str, suffix: str) -> OutputFile:
    """The next free numbered file for ``filename_prefix`` in ComfyUI's output folder (its folder is created)."""
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                           folder_paths.get_output_directory())
    filename = f"{name}_{counter:05}{suffix}"
    return OutputFile(os.path.join(folder, filename), filename, subfolder)


def input_files(suffix: str, *, posix: bool = False) -> list[str]:
    """Files ending in ``suffix`` anywhere under ComfyUI's input folder, relative to it, sorted.

    ``posix``: '/' separators on every OS. Without it the separators are the OS's, as the old
    extension listed .ipadpt files: saved Windows workflows hold those names.
    """
    root = folder_paths.get_input_directory()
    found = (os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
             for f in files if f.endswith(suffix))
    return sorted(path.replace(os.sep, "/") if posix else path for path in found)
