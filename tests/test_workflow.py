"""The plain SD1.5 text-to-image workflow runs in-process through ComfyUI's validator and executor."""
import folder_paths
import pytest
import torch
from PIL import Image

from harness import executor


pytestmark = pytest.mark.usefixtures("torch_single_thread")

def test_plain_sd15_workflow_writes_a_64px_png(fixture_files):
    result = executor.run_prompt(executor.workflow_plain_sd15(seed=11, steps=3, ckpt_name=fixture_files.checkpoint_sd15_name,
                                                              filename_prefix="test_workflow/plain"))
    result.raise_for_error()
    assert result.success and result.error is None
    assert [m[0] for m in result.status_messages][-1] == "execution_success"
    assert list(result.outputs) == ["7"] and len(result.images) == 1
    path = result.images[0]
    assert path.is_file() and path.suffix == ".png"
    assert str(path).startswith(folder_paths.get_output_directory())
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (64, 64)
    (pixels,) = result.image_tensors()
    assert pixels.shape == (64, 64, 3) and torch.isfinite(pixels).all()
    assert pixels.std() > 0.01  # a real image, not a constant


def test_plain_sdxl_workflow_runs_on_the_tiny_sdxl_checkpoint(fixture_files):
    result = executor.run_prompt(executor.workflow_plain_sdxl(seed=3, steps=1, ckpt_name=fixture_files.checkpoint_sdxl_name,
                                                              filename_prefix="test_workflow/sdxl")).raise_for_error()
    (pixels,) = result.image_tensors()
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0.01


def test_other_seed_gives_another_image(fixture_files):
    a = executor.run_prompt(executor.workflow_plain_sd15(seed=1, steps=2, filename_prefix="test_workflow/seed")).raise_for_error()
    b = executor.run_prompt(executor.workflow_plain_sd15(seed=2, steps=2, filename_prefix="test_workflow/seed")).raise_for_error()
    (pa,), (pb,) = a.image_tensors(), b.image_tensors()
    assert not torch.equal(pa, pb)


def test_invalid_prompt_raises_with_node_errors(fixture_files):
    prompt = executor.workflow_plain_sd15(ckpt_name="no_such_model.safetensors")
    with pytest.raises(executor.PromptValidationError) as info:
        executor.run_prompt(prompt)
    assert "1" in info.value.node_errors
    assert "no_such_model.safetensors" in str(info.value)


def test_node_failure_is_reported_not_raised(models_dir):
    broken = models_dir / "checkpoints" / "broken_for_test.safetensors"
    broken.write_bytes(b"not a safetensors file")
    try:
        result = executor.run_prompt(executor.workflow_plain_sd15(seed=5, steps=1, ckpt_name=broken.name))
    finally:
        broken.unlink()
    assert not result.success and result.error is not None
    assert result.error["node_id"] == "1" and result.error["node_type"] == "CheckpointLoaderSimple"
    with pytest.raises(executor.PromptExecutionError, match="CheckpointLoaderSimple"):
        result.raise_for_error()
