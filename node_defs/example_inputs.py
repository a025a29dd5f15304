"""The example workflows' reference images (example_workflows/input/, drawn by dev/make_example_assets.py),
put into ComfyUI's input/ folder when the pack loads, so a template runs with one click of Run.

A file is only ever created, never replaced: it is opened in exclusive-create mode, so a user's own file of
the same name (or one they edited) is left as it is, even when two ComfyUI processes start at once. A
read-only input folder only logs a line: the pack still loads.
"""
from __future__ import annotations

import logging
from pathlib import Path

import folder_paths

SOURCE = Path(__file__).resolve().parent.parent / "example_workflows" / "input"
log = logging.getLogger(__name__)


def install_example_inputs(source: Path = SOURCE, target: Path | None = None) -> list[Path]:
    """Copy each image of ``source`` into ``target`` (default: ComfyUI's input folder) where that name is
    free; return the files created."""
    target = Path(target or folder_paths.get_input_directory())
    created = []
    for image in sorted(source.glob("*.png")):
        destination = target / image.name
        try:
            target.mkdir(parents=True, exist_ok=True)
            with open(destination, "xb") as out:
                out.write(image.read_bytes())
        except FileExistsError:
            continue
        except OSError as err:
            log.warning("IPAdapter Next: could not copy the example image %s into %s (%s); copy it there "
                        "yourself to run the example workflows", image.name, target, err)
            continue
        created.append(destination)
    return created
