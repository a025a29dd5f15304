"""The command-line trainer: ComfyUI's loaders for the files, a folder dataset, periodic checkpoints, resume,
the benchmark mode, and the module entry point that finds ComfyUI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from harness import REPO_ROOT
from harness.widths import TINY_WIDTHS
from ipadapter_next.ipadapter import encoders
from ipadapter_next.ipadapter.adapter import load_adapter
from ipadapter_next.ipadapter.training import cli
from training_support import images


@pytest.fixture(scope="module", autouse=True)
def tiny_world(models_dir, torch_single_thread):
    with encoders.widths_registered(TINY_WIDTHS):
        yield


@pytest.fixture
def folder(tmp_path) -> Path:
    for i, picture in enumerate(images(3, 64, seed=5)):
        Image.fromarray((picture.numpy() * 255).astype("uint8")).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"gradient {i}")
    return tmp_path


def args(fixture_files, *extra: str) -> list[str]:
    return ["--checkpoint", str(fixture_files.checkpoint_sd15), "--clip-vision", str(fixture_files.clip_vision["vit-h"]),
            "--resolution", "64", "--batch-size", "2", *extra]


def test_a_run_writes_checkpoints_and_an_adapter_our_loader_reads(fixture_files, folder, tmp_path):
    out = tmp_path / "out" / "cli.safetensors"
    assert cli.main(args(fixture_files, "--dataset", str(folder), "--family", "basic", "--steps", "4",
                         "--checkpoint-every", "2", "--output", str(out))) == 0
    assert load_adapter(out).spec.family == "ip-adapter_sd15"
    state = Path(f"{out}.state.pt")
    assert torch.load(state, weights_only=True)["step"] == 4
    # resuming at the end trains nothing more and leaves the same weights
    before = out.read_bytes()
    assert cli.main(args(fixture_files, "--dataset", str(folder), "--family", "basic", "--steps", "4",
                         "--resume", str(state), "--output", str(out))) == 0
    assert out.read_bytes() == before


def test_fine_tuning_from_a_file(fixture_files, folder, tmp_path):
    out = tmp_path / "tuned.bin"
    base = fixture_files.ipadapter["ip-adapter-plus_sd15.safetensors"]
    assert cli.main(args(fixture_files, "--dataset", str(folder), "--base", str(base), "--steps", "1",
                         "--checkpoint-every", "0", "--output", str(out))) == 0
    assert load_adapter(out).spec.family == "ip-adapter-plus_sd15"


@pytest.mark.parametrize("cache, encodes", [(False, 8), (True, 3)], ids=["every-step", "cached"])
def test_cache_encodings_encodes_each_image_once(fixture_files, folder, tmp_path, monkeypatch, cache, encodes):
    # 4 steps of 2 samples over 3 images: 8 encodings without the cache, one per image with it
    from ipadapter_next.ipadapter.training import trainer

    calls = []
    real = trainer.encode_images
    monkeypatch.setattr(trainer, "encode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    extra = ["--cache-encodings"] if cache else []
    assert cli.main(args(fixture_files, "--dataset", str(folder), "--family", "basic", "--steps", "4",
                         "--checkpoint-every", "0", "--output", str(tmp_path / "c.safetensors"), *extra)) == 0
    assert len(calls) == encodes


def test_benchmark_mode_prints_median_step_time_and_peak_memory(fixture_files, capsys):
    assert cli.main(args(fixture_files, "--family", "plus", "--benchmark", "2")) == 0
    printed = capsys.readouterr().out
    assert "median step" in printed and "peak memory" in printed


def test_the_module_entry_point_finds_comfyui_and_parses_its_options():
    from harness import runtime

    env = {**os.environ, "COMFYUI_PATH": str(runtime.locate_comfyui()[0])}
    done = subprocess.run([sys.executable, "-m", "ipadapter.training", "--help", "--", "--cpu"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--benchmark" in done.stdout and "--resume" in done.stdout
