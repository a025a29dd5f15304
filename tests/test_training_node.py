"""IPAdapter Train: end to end in a headless workflow (train, then apply in the same graph), interruption,
datasets from folders and JSON lists with bad entries, atomic saving, resuming a run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import comfy.model_management as mm
import comfy.utils

from harness import executor, tiny_models
from harness.widths import TINY_WIDTHS
from ipadapter_next.ipadapter import encoders
from ipadapter_next.ipadapter.training import data, run, save, trainer
from ipadapter_next.node_defs.training import IPAdapterTrain
from training_support import TINY_RESAMPLER, dataset, images, ipadapter_dir, pipeline


@pytest.fixture(scope="module", autouse=True)
def tiny_world(models_dir, torch_single_thread):
    with encoders.widths_registered(TINY_WIDTHS):
        yield


def test_the_node_trains_and_its_adapter_is_applied_in_the_same_workflow(fixture_files):
    prompt = executor.workflow_plain_sd15(seed=2, steps=2, filename_prefix="train_node")
    prompt["10"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": tiny_models.CLIP_VISION_FILENAMES["vit-h"]}}
    prompt["11"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0xCC6633}}
    prompt["12"] = {"class_type": "IPAdapterTrain", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "clip_vision": ["10", 0], "images": ["11", 0],
        "captions": "an orange square\nanother orange square", "family": "basic", "steps": 3, "batch_size": 2,
        "learning_rate": 1e-4, "seed": 0, "resolution": 64, "output_name": "node_trained"}}
    prompt["13"] = {"class_type": "IPAdapterAdvanced", "inputs": {
        "model": ["1", 0], "ipadapter": ["12", 0], "image": ["11", 0], "weight": 1.0, "weight_type": "linear",
        "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only", "clip_vision": ["10", 0]}}
    prompt["14"] = {"class_type": "PreviewImage", "inputs": {"images": ["12", 1]}}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    result = executor.run_prompt(prompt).raise_for_error()
    assert (ipadapter_dir() / "node_trained.safetensors").is_file()
    assert len(result.images) == 2  # the sample and the loss curve
    curve = [t for t in result.image_tensors() if t.shape[1] == 512]
    assert curve and curve[0].std() > 0


def test_an_interrupt_saves_nothing_and_leaves_the_model_as_it_was():
    model, clip, vae, clip_vision = pipeline("sd15")
    flags = [p.requires_grad for p in model.model.parameters()]
    patches_before = dict(model.model_options.get("transformer_options", {}))

    def interrupt_after_two(value, total, preview, node_id=None):
        if value >= 2:
            mm.interrupt_current_processing(True)  # what the UI's Cancel does

    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(interrupt_after_two)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            IPAdapterTrain().train(model, clip, vae, clip_vision, "a\nb", "basic", 50, 1, 1e-4, 0, 64,
                                   "interrupted_run", images=images(2))
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
        mm.interrupt_current_processing(False)
    assert not list(ipadapter_dir().glob("interrupted_run*"))
    assert not list(ipadapter_dir().glob(".interrupted_run*"))
    assert [p.requires_grad for p in model.model.parameters()] == flags
    assert dict(model.model_options.get("transformer_options", {})) == patches_before


def test_a_bad_output_name_or_missing_images_are_refused_before_training():
    model, clip, vae, clip_vision = pipeline("sd15")
    with pytest.raises(ValueError, match="output_name"):
        IPAdapterTrain().train(model, clip, vae, clip_vision, "a", "basic", 1, 1, 1e-4, 0, 64, "../escape",
                               images=images(1))
    with pytest.raises(ValueError, match="connect images"):
        IPAdapterTrain().train(model, clip, vae, clip_vision, "a", "basic", 1, 1, 1e-4, 0, 64, "x")
    with pytest.raises(ValueError, match="2 images but 3 caption lines"):
        IPAdapterTrain().train(model, clip, vae, clip_vision, "a\nb\nc", "basic", 1, 1, 1e-4, 0, 64, "x",
                               images=images(2))


def _write(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (images(1, 48, seed)[0].numpy() * 255).astype("uint8")
    Image.fromarray(pixels).save(path)


def test_a_folder_dataset_reports_and_skips_bad_entries(tmp_path, caplog):
    _write(tmp_path / "a.png", 1)
    (tmp_path / "a.txt").write_text("a gradient\n")
    _write(tmp_path / "sub" / "b.jpg", 2)
    (tmp_path / "sub" / "b.txt").write_text("another gradient")
    _write(tmp_path / "no_caption.png", 3)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.txt").write_text("broken")
    ds = data.from_folder(tmp_path)
    assert [Path(s.source).name for s in ds.samples] == ["a.png", "b.jpg"]
    assert [s.caption for s in ds.samples] == ["a gradient", "another gradient"]
    reasons = {Path(p).name: r for p, r in ds.skipped}
    assert "no caption file no_caption.txt" in reasons["no_caption.png"]
    assert "unreadable image" in reasons["broken.png"]
    assert "broken.png" in caplog.text and "no_caption.png" in caplog.text


def test_the_reference_json_list_is_read_and_an_empty_dataset_is_refused(tmp_path):
    _write(tmp_path / "img" / "x.png", 4)
    entries = [{"image_file": "img/x.png", "text": "x"}, {"image_file": "img/missing.png", "text": "y"},
               {"image_file": "img/x.png"}]
    (tmp_path / "data.json").write_text(json.dumps(entries))
    ds = data.load_dataset(tmp_path / "data.json")
    assert [s.caption for s in ds.samples] == ["x"]
    assert any("missing.png" in p and r == "file not found" for p, r in ds.skipped)
    assert any("entry 2" in p and r == "no text caption" for p, r in ds.skipped)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable sample"):
        data.from_folder(tmp_path / "empty")


def test_an_image_that_breaks_mid_run_is_skipped_not_fatal(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i}.png", i)
        (tmp_path / f"{i}.txt").write_text(f"picture {i}")
    ds = data.from_folder(tmp_path)
    (tmp_path / "1.png").write_bytes(b"corrupted after the scan")
    model, clip, vae, clip_vision = pipeline("sd15")
    settings = trainer.TrainSettings(steps=4, batch_size=1, resolution=64)
    result = run.train(model, clip, vae, clip_vision, ds, settings, family="basic")
    assert len(result.losses) == 4


def test_saving_is_atomic(tmp_path):
    target = tmp_path / "adapter.safetensors"
    save.save_adapter({"image_proj": {"w": torch.ones(2)}, "ip_adapter": {"1.to_k_ip.weight": torch.ones(2, 2)}}, target)
    before = target.read_bytes()

    def failing(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        save.atomic_write(target, failing)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors"]
    bin_path = save.save_adapter({"image_proj": {"w": torch.ones(2)}, "ip_adapter": {}}, tmp_path / "a.bin")
    assert set(torch.load(bin_path, weights_only=True)) == {"image_proj", "ip_adapter"}
    with pytest.raises(ValueError, match=".safetensors or .bin"):
        save.save_adapter({"image_proj": {}, "ip_adapter": {}}, tmp_path / "a.pt")


def test_a_resumed_run_continues_exactly_where_the_checkpoint_was(tmp_path):
    model, clip, vae, clip_vision = pipeline("sd15")
    settings = trainer.TrainSettings(steps=6, batch_size=2, learning_rate=1e-3, resolution=64)
    straight = run.train(model, clip, vae, clip_vision, dataset(), settings, family="plus",
                         resampler=TINY_RESAMPLER["sd15"], output=tmp_path / "straight.safetensors")
    # a run stopped after its checkpoint at step 3, then resumed from the state it wrote
    first = run.train(model, clip, vae, clip_vision, dataset(),
                      trainer.TrainSettings(steps=3, batch_size=2, learning_rate=1e-3, resolution=64), family="plus",
                      resampler=TINY_RESAMPLER["sd15"], output=tmp_path / "resumed.safetensors", checkpoint_every=3)
    state = tmp_path / "resumed.safetensors.state.pt"
    assert state.is_file()
    resumed = run.train(model, clip, vae, clip_vision, dataset(), settings, family="plus",
                        resampler=TINY_RESAMPLER["sd15"], output=tmp_path / "resumed.safetensors", resume=state)
    assert first.losses + resumed.losses == pytest.approx(straight.losses, rel=1e-4)
    for key, value in straight.sections["ip_adapter"].items():
        assert torch.allclose(resumed.sections["ip_adapter"][key], value, atol=1e-5), key
