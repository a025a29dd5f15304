"""Long loops report to ComfyUI's progress bar (comfy.utils.ProgressBar, what the frontend draws on the running
node) and stop between steps when the user cancels (comfy.model_management's interrupt flag).

ComfyUI 0.33.0 throttles the bar (first and final updates always go out, the ones between at most every
100 ms), so the tests read the first and the last update, never each step."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import comfy.clip_vision
import comfy.model_management as mm
import comfy.utils

from ipadapter_next.ipadapter import apply, encode, insightface_glue, tiles
from support import tiny_adapter, tiny_unet
from test_faceid_onnx_backend import FACE, face_models, without_insightface  # noqa: F401 (fixtures)


class Progress:
    """The updates the global progress hook received; ``cancel_at`` n presses cancel at the n-th update."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []
        self.cancel_at: int | None = None

    def __call__(self, value, total, preview, node_id=None):
        self.calls.append((value, total))
        if len(self.calls) == self.cancel_at:
            mm.interrupt_current_processing(True)


@pytest.fixture
def progress():
    before = comfy.utils.PROGRESS_BAR_HOOK
    recorder = Progress()
    comfy.utils.set_progress_bar_global_hook(recorder)
    yield recorder
    comfy.utils.set_progress_bar_global_hook(before)
    mm.interrupt_current_processing(False)


@pytest.fixture(scope="module")
def clip_vision(fixture_files, torch_single_thread):
    return comfy.clip_vision.load(str(fixture_files.clip_vision["vit-h"]))


def test_a_chunked_encode_advances_the_bar_once_per_chunk(progress, clip_vision):
    images = torch.rand(5, 48, 48, 3)
    chunked = encode.encode_images(clip_vision, images, "penultimate_hidden_states", batch_size=2)  # 2 + 2 + 1
    assert progress.calls[0] == (1, 3) and progress.calls[-1] == (3, 3)
    torch.testing.assert_close(chunked, encode.encode_images(clip_vision, images, "penultimate_hidden_states"))


def test_one_chunk_draws_no_bar(progress, clip_vision):
    encode.encode_images(clip_vision, torch.rand(2, 48, 48, 3), "penultimate_hidden_states")
    assert progress.calls == []


def test_cancel_stops_a_chunked_encode_before_the_next_chunk(progress, clip_vision):
    progress.cancel_at = 1
    with pytest.raises(mm.InterruptProcessingException):
        encode.encode_images(clip_vision, torch.rand(5, 48, 48, 3), "penultimate_hidden_states", batch_size=1)
    assert progress.calls == [(1, 5)]


def test_a_tiled_apply_advances_the_bar_once_per_tile_and_stops_on_cancel(progress, clip_vision):
    wide = torch.rand(1, 64, 192, 3)  # 256 x 768 after resizing: overlapping tiles in a row
    count = len(tiles.tile_reference(wide)[0])
    assert count == 3
    apply.apply_tiled(tiny_unet("sd15"), tiny_adapter("ip-adapter-plus_sd15"), clip_vision, wide)
    assert progress.calls[0] == (1, count) and progress.calls[-1] == (count, count)
    progress.calls.clear()
    progress.cancel_at = 1
    with pytest.raises(mm.InterruptProcessingException):
        apply.apply_tiled(tiny_unet("sd15"), tiny_adapter("ip-adapter-plus_sd15"), clip_vision, wide)
    assert progress.calls == [(1, count)]


def test_face_detection_over_a_batch_advances_the_bar_per_image_and_stops_on_cancel(
        progress, face_models, without_insightface):
    from pathlib import Path

    import folder_paths

    face = np.asarray(Image.open(Path(folder_paths.get_input_directory()) / FACE), dtype=np.float32) / 255
    batch = torch.from_numpy(face)[None].repeat(3, 1, 1, 1)
    analyser = insightface_glue.load_face_analysis("buffalo_l", "CPU")
    normed, _, crops = insightface_glue.detect_faces(analyser, batch)
    assert normed.shape[0] == crops.shape[0] == 3
    assert progress.calls[0] == (1, 3) and progress.calls[-1] == (3, 3)
    progress.calls.clear()
    progress.cancel_at = 1
    with pytest.raises(mm.InterruptProcessingException):
        insightface_glue.detect_faces(analyser, batch)
    assert progress.calls == [(1, 3)]
