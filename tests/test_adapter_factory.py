"""The synthetic-checkpoint factory reproduces every released layout exactly, at full and tiny size."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness import adapter_factory, dims
from support import LAYOUTS

REPO_ROOT = Path(__file__).resolve().parent.parent


MANIFEST = LAYOUTS
MANIFEST_FAMILIES = tuple(MANIFEST["families"]) if MANIFEST else ()
KOLORS_FACEID = adapter_factory.KOLORS_FACEID


def _shapes(sd):
    return {k: list(t.shape) for k, t in sd.items()}


def test_families_are_the_manifest_plus_kolors_faceid():
    assert adapter_factory.FAMILIES == MANIFEST_FAMILIES + (KOLORS_FACEID,)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_processor_order_is_derived_from_the_unet_topology(arch):
    full = adapter_factory.processor_layout(arch, "full")
    assert [name for name, _ in full] == MANIFEST["processor_order"][arch]
    assert len(full) == {"sd15": 32, "sdxl": 140}[arch]
    tiny = adapter_factory.processor_layout(arch, "tiny")
    assert [name for name, _ in tiny] == [name for name, _ in full]
    # Hidden widths follow the block widths at each scale.
    full_widths = dims.FULL_UNET[arch].block_widths
    tiny_widths = dims.TINY_UNET[arch].block_widths
    for (_, fw), (_, tw) in zip(full, tiny):
        assert tiny_widths[full_widths.index(fw)] == tw


@pytest.mark.parametrize("family", MANIFEST_FAMILIES)
def test_full_size_layout_equals_the_manifest(family):
    sd = adapter_factory.adapter_state_dict(family, scale="full", device="meta")
    expected = MANIFEST["families"][family]
    assert set(sd) == {"image_proj", "ip_adapter"}
    for section in ("image_proj", "ip_adapter"):
        assert _shapes(sd[section]) == expected[section], section
        assert all(t.device.type == "meta" for t in sd[section].values())


def test_kolors_faceid_full_size_layout():
    sd = adapter_factory.adapter_state_dict(KOLORS_FACEID, scale="full", device="meta")
    p, ip = _shapes(sd["image_proj"]), _shapes(sd["ip_adapter"])
    assert p["proj.0.weight"] == [1024, 512]
    assert p["proj.2.weight"] == [6 * 4096, 1024]
    assert p["norm.weight"] == [4096]
    assert p["perceiver_resampler.proj_in.weight"] == [4096, 1024]  # ViT-L-336 penultimate
    assert p["perceiver_resampler.layers.0.0.to_q.weight"] == [4096, 4096]  # 64 heads
    assert p["perceiver_resampler.layers.3.0.to_kv.weight"] == [8192, 4096]
    assert p["perceiver_resampler.proj_out.weight"] == [4096, 4096]
    assert "latents" not in p
    assert len(ip) == 140 and ip["1.to_k_ip.weight"] == [640, 2048] and ip["139.to_v_ip.weight"] == [1280, 2048]
    assert not any("lora" in k for k in ip)


@pytest.mark.parametrize("family", adapter_factory.FAMILIES)
def test_tiny_has_the_full_key_set_and_sane_values(family):
    full = adapter_factory.adapter_state_dict(family, scale="full", device="meta")
    tiny = adapter_factory.adapter_state_dict(family)
    for section in ("image_proj", "ip_adapter"):
        assert list(tiny[section]) == list(full[section])
        for key, t in tiny[section].items():
            assert t.device.type == "cpu" and t.dtype == torch.float32
            assert torch.isfinite(t).all(), key
            assert t.dim() == full[section][key].dim()


def test_tiny_widths_follow_the_structure():
    plus15 = _shapes(adapter_factory.adapter_state_dict("ip-adapter-plus_sd15")["image_proj"])
    assert plus15["latents"] == [1, 16, 64] and plus15["proj_in.weight"] == [64, 40] and plus15["proj_out.weight"] == [64, 64]
    plusxl = _shapes(adapter_factory.adapter_state_dict("ip-adapter-plus_sdxl_vit-h")["image_proj"])
    assert plusxl["latents"] == [1, 16, 64] and plusxl["proj_out.weight"] == [128, 64]  # width != output, like 1280 vs 2048
    assert plusxl["layers.0.0.to_q.weight"] == [64, 64]
    kolors = _shapes(adapter_factory.adapter_state_dict("Kolors-IP-Adapter-Plus")["image_proj"])
    assert kolors["latents"] == [1, 16, 128] and kolors["proj_in.weight"] == [128, 32]
    assert kolors["layers.0.0.to_q.weight"] == [64, 128]  # heads * 64 != width, like 768 vs 2048
    unnorm = _shapes(adapter_factory.adapter_state_dict("ip-adapter-faceid-portrait_sdxl_unnorm")["image_proj"])
    assert unnorm["proj_in.weight"] == [64, dims.TINY_FACE_EMBED]
    fplus = _shapes(adapter_factory.adapter_state_dict("ip-adapter-faceid-plusv2_sdxl")["image_proj"])
    assert fplus["perceiver_resampler.layers.0.0.to_q.weight"] == [128, 128]  # heads = C // 64 = 2
    assert fplus["proj.0.weight"] == [2 * dims.TINY_FACE_EMBED, dims.TINY_FACE_EMBED]
    faceid = _shapes(adapter_factory.adapter_state_dict("ip-adapter-faceid_sd15")["ip_adapter"])
    assert faceid["0.to_q_lora.down.weight"] == [dims.TINY_LORA_RANK, 32]
    assert faceid["1.to_k_lora.down.weight"] == [dims.TINY_LORA_RANK, 64]  # attn2 reads the context
    assert faceid["31.to_k_ip.weight"] == [128, 64]  # mid block
    kfid = _shapes(adapter_factory.adapter_state_dict(KOLORS_FACEID)["image_proj"])
    assert kfid["norm.weight"] == [256] and kfid["proj.2.weight"] == [6 * 256, 32]


def test_weights_are_deterministic_and_well_scaled():
    a = adapter_factory.adapter_state_dict("ip-adapter-plus_sd15", seed=3)
    b = adapter_factory.adapter_state_dict("ip-adapter-plus_sd15", seed=3)
    c = adapter_factory.adapter_state_dict("ip-adapter-plus_sd15", seed=4)
    for section in a:
        for k in a[section]:
            assert torch.equal(a[section][k], b[section][k])
    assert not torch.equal(a["image_proj"]["proj_in.weight"], c["image_proj"]["proj_in.weight"])
    big = adapter_factory.adapter_state_dict("ip-adapter-plus_sd15", scale="tiny")["image_proj"]
    w = big["layers.0.1.3.weight"]  # [64, 256]: std ~ 1/16
    assert abs(w.std().item() - 1 / 16) < 0.01
    ln = big["layers.0.1.0.weight"]
    assert abs(ln.mean().item() - 1.0) < 0.05 and ln.std().item() > 0.01
    assert big["proj_in.bias"].abs().max().item() < 0.2
    half = adapter_factory.adapter_state_dict("ip-adapter_sd15", dtype=torch.float16)
    assert half["image_proj"]["proj.weight"].dtype == torch.float16


@pytest.mark.parametrize("family", ["ip-adapter-plus_sd15", "ip-adapter-faceid-plusv2_sdxl", KOLORS_FACEID])
@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_writers_round_trip(tmp_path, family, suffix):
    path = adapter_factory.write_checkpoint(family, tmp_path / f"adapter{suffix}", seed=7)
    assert path == tmp_path / f"adapter{suffix}" and path.is_file()
    expected = adapter_factory.adapter_state_dict(family, seed=7)
    if suffix == ".safetensors":
        flat = load_file(str(path))
        assert set(flat) == {f"{s}.{k}" for s in expected for k in expected[s]}
        loaded = {s: {k: flat[f"{s}.{k}"] for k in expected[s]} for s in expected}
    else:
        loaded = torch.load(path, weights_only=True)
        assert set(loaded) == {"image_proj", "ip_adapter"}
    for s in expected:
        assert set(loaded[s]) == set(expected[s])
        for k, t in expected[s].items():
            assert torch.equal(loaded[s][k], t), (s, k)


def test_writer_rejects_unknown_suffix_and_family(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        adapter_factory.write_checkpoint("ip-adapter_sd15", tmp_path / "x.ckpt.gz")
    with pytest.raises(KeyError, match="unknown family"):
        adapter_factory.adapter_state_dict("ip-adapter_sd3")
    with pytest.raises(ValueError, match="scale"):
        adapter_factory.adapter_state_dict("ip-adapter_sd15", scale="huge")
