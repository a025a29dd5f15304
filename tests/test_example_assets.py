"""The example workflows' pictures: reference images drawn by dev/make_example_assets.py and put into
ComfyUI's input/ folder at pack load without ever replacing a file, and a thumbnail per template."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

import folder_paths

from ipadapter_next.node_defs.example_inputs import SOURCE, install_example_inputs
from support import load_dev_script

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "example_workflows"


ASSETS = load_dev_script("make_example_assets")


def test_every_image_a_workflow_loads_is_shipped_and_was_put_into_input_at_pack_load():
    loaded = {node["widgets_values"][0] for path in WORKFLOWS.glob("*.json")
              for node in json.loads(path.read_text())["nodes"] if node["type"] == "LoadImage"}
    shipped = {p.name for p in SOURCE.glob("*.png")}
    assert loaded == shipped == set(ASSETS.REFERENCES)
    for name in shipped:
        assert (Path(folder_paths.get_input_directory()) / name).is_file()


def test_install_creates_missing_images_and_never_replaces_a_users_file(tmp_path):
    users = tmp_path / "ipadapter_reference.png"
    users.write_bytes(b"the user's own picture")
    created = install_example_inputs(target=tmp_path)
    assert sorted(p.name for p in created) == ["ipadapter_face.png", "ipadapter_reference_2.png"]
    assert users.read_bytes() == b"the user's own picture"
    assert (tmp_path / "ipadapter_face.png").read_bytes() == (SOURCE / "ipadapter_face.png").read_bytes()
    assert install_example_inputs(target=tmp_path) == []  # a second start creates nothing


def test_an_input_folder_that_cannot_be_written_does_not_stop_the_pack(tmp_path, caplog):
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert install_example_inputs(target=blocked / "input") == []  # no folder can be made under a file
    assert "could not copy the example image" in caplog.text


def test_the_reference_images_are_the_scripts_drawings():
    for name in ("ipadapter_reference.png", "ipadapter_reference_2.png"):  # numpy-drawn: exact on any Pillow
        assert np.array_equal(np.asarray(Image.open(SOURCE / name)), np.asarray(ASSETS.REFERENCES[name]()))


def test_every_template_has_a_thumbnail_beside_it():
    for path in WORKFLOWS.glob("*.json"):
        thumb = path.with_suffix(".jpg")  # what both frontends fetch: /api/workflow_templates/<pack>/<name>.jpg
        assert thumb.is_file(), f"{thumb.name} is missing: run dev/make_example_assets.py"
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and image.size == ASSETS.THUMBNAIL
