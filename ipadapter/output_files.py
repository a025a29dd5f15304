"""Files the save / load nodes share with ComfyUI's folders: numbered names in output/, lists of input/.

Saved files are numbered like ComfyUI's saved images (``<prefix>_00001<suffix>``, in the prefix's
sub-folder), never outside output/, and written atomically (a temporary file renamed into place), so
an interrupted save leaves no half-written file under the final name. Load nodes list matching files
anywhere under input/, where the user moves them.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import folder_paths


@dataclass(frozen=True)
class OutputFile:
    path: str  # where to write
    filename: str  # the name alone, as the UI shows it
    subfolder: str  # below output/, from the prefix


def next_output_file(filename_prefix: str, suffix: str) -> OutputFile:
    """The next free numbered file for ``filename_prefix`` in ComfyUI's output folder (its folder is created).
    A prefix that leads outside the output folder (``..``, an absolute path, a link out) is refused."""
    root = os.path.realpath(folder_paths.get_output_directory())
    target = os.path.realpath(os.path.join(root, os.path.dirname(os.path.normpath(filename_prefix)) or "."))
    if os.path.isabs(filename_prefix) or os.path.commonpath([root, target]) != root:
        raise ValueError(f"filename_prefix {filename_prefix!r} leads outside ComfyUI's output folder ({root}); "
                         "files are saved only there. Use a name or a sub-folder such as 'embeds/portrait'.")
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                           folder_paths.get_output_directory())
    filename = f"{name}_{counter:05}{suffix}"
    return OutputFile(os.path.join(folder, filename), filename, subfolder)


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(temporary path)`` for a file in ``path``'s folder, then rename it to ``path`` in one step.
    If ``write`` fails (or the process is interrupted), nothing appears under ``path`` and the temporary
    file is removed."""
    folder, name = os.path.split(os.fspath(path))
    os.makedirs(folder or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def input_files(suffix: str, *, posix: bool = False) -> list[str]:
    """Files ending in ``suffix`` anywhere under ComfyUI's input folder, relative to it, sorted.

    ``posix``: '/' separators on every OS. Without it the separators are the OS's, as the old
    extension listed .ipadpt files: saved Windows workflows hold those names.
    """
    root = folder_paths.get_input_directory()
    found = (os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
             for f in files if f.endswith(suffix))
    return sorted(path.replace(os.sep, "/") if posix else path for path in found)


def input_file(name: str, node: str, what: str) -> str:
    """The path of ``name`` (as a load node lists it) under ComfyUI's input folder.

    A name that resolves outside input/ is refused on every ComfyUI version (0.33+ refuses it in
    ``get_annotated_filepath`` with a bare ValueError; older versions followed it), and a missing file
    says where such files go.
    """
    root = os.path.realpath(folder_paths.get_input_directory())
    try:
        path = folder_paths.get_annotated_filepath(name)
    except ValueError:
        path = None
    if path is None or os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ValueError(f"{node}: {name!r} points outside ComfyUI's input folder ({root}); {what} files are read "
                         "only from there. Move the file into input/ and pick it from the list.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{node}: {name} is not in {root}; put {what} files there (saved ones are in output/).")
    return path


def file_version(path: str) -> str:
    """What ComfyUI's IS_CHANGED compares: modification time and size, so a rewritten file is read again."""
    try:
        stat = os.stat(path)
    except OSError:
        return ""
    return f"{stat.st_mtime_ns}:{stat.st_size}"
