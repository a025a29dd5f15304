"""Embeds utilities and IPAdapter Noise: combine methods, safe save/load of .ipadpt files, noise images."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import folder_paths
import nodes

from harness import executor
from ipadapter_next.ipadapter import noise
from ipadapter_next.ipadapter.embeds_file import EmbedsFileError, load_embeds

REFERENCE = "embeds_test_reference.png"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


@pytest.fixture(scope="module", autouse=True)
def reference_image(models_dir, torch_single_thread):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(
        Path(folder_paths.get_input_directory()) / REFERENCE)


def node(key):
    return nodes.NODE_CLASS_MAPPINGS[key]()


# --- Combine Embeds ---------------------------------------------------------------------------------
A = torch.tensor([[1.0, -2.0, 3.0]])
B = torch.tensor([[3.0, 2.0, -1.0]])
C = torch.tensor([[2.0, 0.0, 4.0]])
X = torch.cat([A, B, C])
COMBINED = {
    "concat": X,
    "add": X.sum(0, keepdim=True),
    "subtract": A - (B + C) / 2,
    "average": X.mean(0, keepdim=True),
    "norm average": (X / X.norm(dim=0, keepdim=True)).mean(0, keepdim=True),  # across the batch, as the old node
    "max": torch.tensor([[3.0, 2.0, 4.0]]),
    "min": torch.tensor([[1.0, -2.0, -1.0]]),
}


@pytest.mark.parametrize("method", list(COMBINED))
def test_combine_embeds_methods(method):
    (out,) = node("IPAdapterCombineEmbeds").batch(A, method, embed2=B, embed4=C)
    assert torch.allclose(out, COMBINED[method])


def test_combine_embeds_refuses_features_of_another_encoder_by_name():
    with pytest.raises(ValueError, match=r"embed3 has features of shape \[257, 40\] but embed1 has \[3\]"):
        node("IPAdapterCombineEmbeds").batch(A, "average", embed3=torch.zeros(1, 257, 40))


# --- Save / Load Embeds -----------------------------------------------------------------------------
def encode_and_save(prefix: str) -> dict:
    return {
        "1": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": "ip-adapter-plus_sd15.safetensors"}},
        "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": VIT_H}},
        "3": {"class_type": "LoadImage", "inputs": {"image": REFERENCE}},
        "4": {"class_type": "IPAdapterEncoder", "inputs": {"ipadapter": ["1", 0], "image": ["3", 0], "weight": 0.7,
                                                           "clip_vision": ["2", 0]}},
        "5": {"class_type": "IPAdapterSaveEmbeds", "inputs": {"embeds": ["4", 0], "filename_prefix": prefix}},
    }


def saved_file(result, node_id: str) -> Path:
    (item,) = result.raise_for_error().outputs[node_id]["embeds"]
    return Path(folder_paths.get_output_directory()) / item["subfolder"] / item["filename"]


def test_save_then_load_embeds_round_trip_through_workflows():
    first = saved_file(executor.run_prompt(encode_and_save("embeds_roundtrip/pos")), "5")
    assert first.name.startswith("pos_") and first.suffix == ".ipadpt"
    saved = torch.load(first, weights_only=True)  # a plain tensor: loads without running code
    assert saved.shape[0] == 1 and saved.dim() == 3  # plus adapter: penultimate states [1, 257, width]

    target = Path(folder_paths.get_input_directory()) / "embeds_roundtrip" / first.name
    target.parent.mkdir(exist_ok=True)
    shutil.copy(first, target)
    assert "embeds_roundtrip/" + first.name in nodes.NODE_CLASS_MAPPINGS["IPAdapterLoadEmbeds"].INPUT_TYPES()[
        "required"]["embeds"][0]
    again = executor.run_prompt({
        "1": {"class_type": "IPAdapterLoadEmbeds", "inputs": {"embeds": "embeds_roundtrip/" + first.name}},
        "2": {"class_type": "IPAdapterSaveEmbeds", "inputs": {"embeds": ["1", 0], "filename_prefix": "embeds_roundtrip/again"}},
    })
    assert torch.equal(torch.load(saved_file(again, "2"), weights_only=True), saved)


def test_old_extension_files_load_and_views_save_only_their_own_values(tmp_path):
    big = torch.randn(4, 5, 6, dtype=torch.float16)
    old_style = tmp_path / "old.ipadpt"
    torch.save(big, old_style)  # what the old node wrote
    assert torch.equal(load_embeds(old_style), big)

    node("IPAdapterSaveEmbeds").save(big[1:2], "embeds_view/view")
    (path,) = (Path(folder_paths.get_output_directory()) / "embeds_view").glob("view_*.ipadpt")
    assert torch.equal(load_embeds(path), big[1:2])
    assert path.stat().st_size < old_style.stat().st_size  # not the whole storage of the view


def test_safetensors_content_under_the_ipadpt_name_loads(tmp_path):
    t = torch.randn(1, 32)
    safetensors.torch.save_file({"embeds": t}, str(tmp_path / "x.ipadpt"))
    assert torch.equal(load_embeds(tmp_path / "x.ipadpt"), t)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_needs_code_is_refused_with_a_clear_error(tmp_path):
    bad = tmp_path / "bad.ipadpt"
    with open(bad, "wb") as f:
        pickle.dump(Payload(), f, protocol=2)
    with pytest.raises(EmbedsFileError, match="bad.ipadpt was refused: it is a pickle that needs code"):
        load_embeds(bad)
    torch.save({"not": torch.zeros(1)}, tmp_path / "dict.ipadpt")
    with pytest.raises(EmbedsFileError, match="holds a dict, not an embeds tensor"):
        load_embeds(tmp_path / "dict.ipadpt")


# --- Noise ------------------------------------------------------------------------------------------
def test_noise_is_224_square_in_range_and_deterministic_from_the_image():
    img = torch.rand(2, 60, 90, 3, generator=torch.Generator().manual_seed(0))
    for kind in noise.NOISE_TYPES:
        (a,) = node("IPAdapterNoise").make_noise(kind, 0.6, 3, img)
        (b,) = node("IPAdapterNoise").make_noise(kind, 0.6, 3, img.clone())
        assert a.shape == (2, 224, 224, 3) and 0 <= a.min() and a.max() <= 1, kind
        assert torch.equal(a, b), kind
    (c,) = node("IPAdapterNoise").make_noise("fade", 0.6, 3, img * 0.5)
    assert not torch.equal(c, a)


def test_noise_does_not_touch_the_global_random_state():
    before = torch.random.get_rng_state()
    node("IPAdapterNoise").make_noise("shuffle", 0.5, 0)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_fade_dissolve_and_gaussian_follow_their_formulas():
    img = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(3))
    seed = int(img.sum().item()) % 1_000_000_007  # the old node's seed: the pixel sum
    s = 0.3

    g = torch.Generator().manual_seed(seed)
    want = (img * (1 - s) + torch.rand(img.shape, generator=g) * s).clamp(0, 1)
    assert torch.allclose(noise.make_noise("fade", s, 0, img), want)

    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(img.shape, generator=g) < s).float()
    want = (img * (1 - mask) + torch.rand(img.shape, generator=g) * mask).clamp(0, 1)
    got = noise.make_noise("dissolve", s, 0, img)
    assert torch.allclose(got, want)
    assert abs((got != img).float().mean().item() - s) < 0.01

    g = torch.Generator().manual_seed(seed)
    want = (img + torch.randn(img.shape, generator=g) * s).clamp(0, 1)
    assert torch.allclose(noise.make_noise("gaussian", s, 0, img), want)


def test_strength_zero_fade_returns_the_centre_square_and_blur_smooths():
    img = torch.rand(1, 300, 224, 3, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(noise.make_noise("fade", 0.0, 0, img), img[:, 38:262])
    sharp = noise.make_noise("fade", 1.0, 0)
    blurred = noise.make_noise("fade", 1.0, 8)  # even sizes round up to 9
    assert blurred.std() < sharp.std() * 0.5
    assert torch.allclose(blurred.mean(), sharp.mean(), atol=0.01)


def test_shuffle_distorts_and_flips():
    img = torch.zeros(1, 224, 224, 3)
    img[:, :112] = 1.0  # top half white
    out = noise.make_noise("shuffle", 0.0, 0, img)  # no noise, only distortion and flips
    assert out[:, 150:].mean() > 0.9 and out[:, :70].mean() < 0.1  # upside down


def test_noise_node_runs_in_a_workflow_with_black_default():
    result = executor.run_prompt({
        "1": {"class_type": "IPAdapterNoise", "inputs": {"type": "dissolve", "strength": 0.5, "blur": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ipadapter_noise"}},
    })
    (image,) = result.raise_for_error().image_tensors()
    assert image.shape == (224, 224, 3)
    assert abs((image == 0).float().mean() - 0.5) < 0.02  # dissolve replaced about half the (black) values
