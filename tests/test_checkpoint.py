"""Reading IP-Adapter files and detecting their family from tensor names and shapes only."""
import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness import adapter_factory, dims
from harness.widths import TINY_WIDTHS
from support import LAYOUTS
from ipadapter_next.ipadapter import checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
KOLORS_FACEID = adapter_factory.KOLORS_FACEID


MANIFEST = LAYOUTS


@dataclasses.dataclass(frozen=True)
class Expect:
    family: str
    arch: str
    projection: str
    tokens: int
    encoder: str | None  # canonical key of the encoder ("vit-h", ...) or None
    output: str | None = None
    face: bool = False
    lora: bool = False
    portrait: bool = False
    kolors: bool = False
    faceid_v2: bool | None = False


PEN, EMB = "penultimate_hidden_states", "image_embeds"
EXPECTED = {
    "ip-adapter_sd15": Expect("ip-adapter_sd15", "sd15", "image_proj", 4, "vit-h", EMB),
    "ip-adapter_sd15_vit-G": Expect("ip-adapter_sd15_vit-G", "sd15", "image_proj", 4, "vit-g", EMB),
    "ip-adapter-plus_sd15": Expect("ip-adapter-plus_sd15", "sd15", "resampler", 16, "vit-h", PEN),
    "ip-adapter-full-face_sd15": Expect("ip-adapter-full-face_sd15", "sd15", "mlp", 257, "vit-h", PEN),
    "ip-adapter_sdxl": Expect("ip-adapter_sdxl", "sdxl", "image_proj", 4, "vit-g", EMB),
    "ip-adapter_sdxl_vit-h": Expect("ip-adapter_sdxl_vit-h", "sdxl", "image_proj", 4, "vit-h", EMB),
    "ip-adapter-plus_sdxl_vit-h": Expect("ip-adapter-plus_sdxl_vit-h", "sdxl", "resampler", 16, "vit-h", PEN),
    "ip-adapter-faceid_sd15": Expect("ip-adapter-faceid_sd15", "sd15", "faceid", 4, None, face=True, lora=True),
    "ip-adapter-faceid_sdxl": Expect("ip-adapter-faceid_sdxl", "sdxl", "faceid", 4, None, face=True, lora=True),
    "ip-adapter-faceid-plusv2_sd15": Expect("ip-adapter-faceid-plus_sd15", "sd15", "faceid_plus", 4, "vit-h", PEN,
                                            face=True, lora=True, faceid_v2=None),
    "ip-adapter-faceid-plusv2_sdxl": Expect("ip-adapter-faceid-plus_sdxl", "sdxl", "faceid_plus", 4, "vit-h", PEN,
                                            face=True, lora=True, faceid_v2=None),
    "ip-adapter-faceid-portrait_sd15": Expect("ip-adapter-faceid-portrait_sd15", "sd15", "faceid", 16, None, face=True, portrait=True),
    "ip-adapter-faceid-portrait_sdxl": Expect("ip-adapter-faceid-portrait_sdxl", "sdxl", "faceid", 16, None, face=True, portrait=True),
    "ip-adapter-faceid-portrait_sdxl_unnorm": Expect("ip-adapter-faceid-portrait_sdxl_unnorm", "sdxl", "resampler", 16, None,
                                                     face=True, portrait=True),
    "Kolors-IP-Adapter-Plus": Expect("Kolors-IP-Adapter-Plus", "sdxl", "resampler", 16, "vit-l-336", PEN, kolors=True),
    KOLORS_FACEID: Expect(KOLORS_FACEID, "sdxl", "faceid_plus", 6, "vit-l-336", PEN, face=True, kolors=True, faceid_v2=True),
}
FULL_ENCODER_NAMES = {"vit-h": "CLIP ViT-H", "vit-g": "CLIP ViT-bigG", "vit-l-336": "CLIP ViT-L-336"}


def test_expectations_cover_every_factory_family():
    assert set(EXPECTED) == set(adapter_factory.FAMILIES)


def _check(spec: checkpoint.AdapterSpec, exp: Expect, scale: str, widths_known: bool = True):
    unet = (dims.FULL_UNET if scale == "full" else dims.TINY_UNET)[exp.arch]
    clip = dims.FULL_CLIP if scale == "full" else dims.TINY_CLIP
    assert spec.family == exp.family
    assert spec.arch == exp.arch
    assert spec.projection == exp.projection
    assert spec.tokens == exp.tokens
    assert spec.layer_count == {"sd15": 16, "sdxl": 70}[exp.arch]
    assert spec.context_dim == unet.context_dim
    assert spec.token_dim == (2 * unet.context_dim if exp.family == KOLORS_FACEID else unet.context_dim)
    assert spec.is_faceid is exp.face
    assert spec.has_lora is exp.lora
    assert spec.lora_rank == ((dims.FULL_LORA_RANK if scale == "full" else dims.TINY_LORA_RANK) if exp.lora else None)
    assert spec.is_portrait is exp.portrait
    assert spec.is_kolors is exp.kolors
    assert spec.faceid_v2 is exp.faceid_v2
    face_width = dims.FULL_FACE_EMBED if scale == "full" else dims.TINY_FACE_EMBED
    assert spec.face_embed_dim == (face_width if exp.face else None)
    if exp.face:
        unnorm = exp.family.endswith("unnorm")
        assert spec.face_embedding == ("embedding" if unnorm else "normed_embedding")
    if exp.encoder is None:
        assert spec.encoder is None
        return
    enc = clip[exp.encoder]
    assert spec.encoder.output == exp.output
    assert spec.encoder.width == (enc.hidden_size if exp.output == PEN else enc.projection_dim)
    assert spec.encoder.image_size == (336 if exp.encoder == "vit-l-336" else 224)
    if scale == "full":
        assert spec.encoder.model == FULL_ENCODER_NAMES[exp.encoder]
        assert spec.encoder.key == exp.encoder
    elif widths_known:
        assert spec.encoder.model == f"CLIP {enc.name}"


def _meta_from_manifest(entry):
    return {s: {k: torch.empty(shape, dtype=torch.float16, device="meta") for k, shape in entry[s].items()}
            for s in ("image_proj", "ip_adapter")}


@pytest.mark.parametrize("family", list(MANIFEST["families"]) if MANIFEST else [])
def test_detects_every_family_from_full_size_manifest_shapes(family):
    spec = checkpoint.detect(_meta_from_manifest(MANIFEST["families"][family]), source=f"{family}.safetensors")
    _check(spec, EXPECTED[family], "full")
    assert spec.source == f"{family}.safetensors"
    assert checkpoint.family(family).name == spec.family  # the released name maps to the detected record


def test_detects_kolors_faceid_from_full_size_shapes():
    spec = checkpoint.detect(adapter_factory.adapter_state_dict(KOLORS_FACEID, scale="full", device="meta"))
    _check(spec, EXPECTED[KOLORS_FACEID], "full")
    assert spec.token_dim == 4096 and spec.context_dim == 2048 and spec.face_embed_dim == 512


def _misleading_name(family: str, suffix: str) -> str:
    families = adapter_factory.FAMILIES
    other = families[(families.index(family) + 1) % len(families)]
    if other == family or EXPECTED[other].family == EXPECTED[family].family:
        other = "ip-adapter_sd15"
    return f"{other}{suffix}"


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
@pytest.mark.parametrize("family", adapter_factory.FAMILIES)
def test_detects_tiny_files_whatever_their_name(tmp_path, family, suffix):
    path = adapter_factory.write_checkpoint(family, tmp_path / _misleading_name(family, suffix))
    loaded = checkpoint.read_checkpoint(path)
    assert set(loaded) == {"image_proj", "ip_adapter"}
    expected = adapter_factory.adapter_state_dict(family)
    assert torch.equal(loaded["image_proj"][next(iter(expected["image_proj"]))], next(iter(expected["image_proj"].values())))
    spec = checkpoint.detect(loaded, source=path.name, widths=TINY_WIDTHS)
    _check(spec, EXPECTED[family], "tiny")
    # Cheap path: shapes only, same answer.
    shapes = checkpoint.read_checkpoint_shapes(path)
    assert all(t.device.type == "meta" for s in shapes.values() for t in s.values())
    assert {k: t.shape for k, t in shapes["ip_adapter"].items()} == {k: t.shape for k, t in loaded["ip_adapter"].items()}
    assert checkpoint.inspect_checkpoint(path, widths=TINY_WIDTHS) == spec


def test_plus_saved_under_a_basic_name_is_still_plus(tmp_path):
    path = adapter_factory.write_checkpoint("ip-adapter-plus_sd15", tmp_path / "ip-adapter_sd15.safetensors")
    spec = checkpoint.inspect_checkpoint(path)
    assert spec.family == "ip-adapter-plus_sd15" and spec.tokens == 16 and spec.projection == "resampler"


def test_unknown_encoder_widths_get_generic_names():
    spec = checkpoint.detect(adapter_factory.adapter_state_dict("ip-adapter-plus_sd15"))  # full-size width table
    assert spec.encoder.model == "CLIP vision (penultimate width 40)"
    assert spec.encoder.key is None and spec.encoder.width == 40 and spec.encoder.image_size == 224
    spec = checkpoint.detect(adapter_factory.adapter_state_dict("ip-adapter_sd15"))
    assert spec.encoder.model == "CLIP vision (image_embeds width 32)"
    kolors = checkpoint.detect(adapter_factory.adapter_state_dict("Kolors-IP-Adapter-Plus"))
    assert kolors.family == "Kolors-IP-Adapter-Plus" and kolors.encoder.image_size == 336  # from the family


def test_faceid_v2_is_the_callers_option(tmp_path):
    path = adapter_factory.write_checkpoint("ip-adapter-faceid-plusv2_sd15", tmp_path / "ip-adapter-faceid-plusv2_sd15.bin")
    spec = checkpoint.inspect_checkpoint(path, widths=TINY_WIDTHS)
    assert spec.faceid_v2 is None  # the file name is not read by detection
    assert checkpoint.resolve_faceid_v2("auto from file name", path.name) is True
    assert checkpoint.resolve_faceid_v2("auto from file name", "models/ipadapter/ip-adapter-faceid-plus_sd15.bin") is False
    assert checkpoint.resolve_faceid_v2("v1", path.name) is False
    assert checkpoint.resolve_faceid_v2("v2", "ip-adapter-faceid-plus_sd15.bin") is True
    assert checkpoint.FACEID_V2_OPTIONS == ("auto from file name", "v1", "v2")
    with pytest.raises(ValueError, match="v1"):
        checkpoint.resolve_faceid_v2("maybe", path.name)
    assert spec.with_faceid_v2(True).faceid_v2 is True
    assert spec.with_faceid_v2(False).faceid_v2 is False
    kolors = checkpoint.detect(adapter_factory.adapter_state_dict(KOLORS_FACEID), widths=TINY_WIDTHS)
    assert kolors.with_faceid_v2(False).faceid_v2 is True  # fixed by the family
    basic = checkpoint.detect(adapter_factory.adapter_state_dict("ip-adapter-faceid_sd15"))
    assert basic.with_faceid_v2(True).faceid_v2 is False


class _NeedsCode:
    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("reader", ["read_checkpoint", "read_checkpoint_shapes"])
def test_code_pickle_is_refused(tmp_path, reader):
    path = tmp_path / "sneaky-adapter.bin"
    torch.save({"image_proj": {"proj.weight": torch.zeros(2, 2)}, "ip_adapter": {"hook": _NeedsCode()}}, path)
    with pytest.raises(checkpoint.UnsafeCheckpointError) as err:
        getattr(checkpoint, reader)(path)
    msg = str(err.value)
    assert "sneaky-adapter.bin" in msg and ".safetensors" in msg
    assert isinstance(err.value, ValueError)


def test_non_adapter_files_are_named(tmp_path):
    clip = tmp_path / "ip-adapter_sd15.safetensors"  # a CLIP vision file under an adapter's name
    save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 2, 2),
               "vision_model.post_layernorm.weight": torch.ones(4)}, str(clip))
    with pytest.raises(checkpoint.NotAnAdapterError) as err:
        checkpoint.read_checkpoint(clip)
    assert "ip-adapter_sd15.safetensors" in str(err.value) and "CLIP vision" in str(err.value)
    assert isinstance(err.value, checkpoint.UnknownAdapterError) and isinstance(err.value, ValueError)

    lora = tmp_path / "ip-adapter-faceid_sd15_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)}, str(lora))
    with pytest.raises(checkpoint.NotAnAdapterError, match="LoRA") as err:
        checkpoint.read_checkpoint_shapes(lora)
    assert lora.name in str(err.value)

    half = tmp_path / "half.bin"
    torch.save({"ip_adapter": adapter_factory.adapter_state_dict("ip-adapter_sd15")["ip_adapter"]}, half)
    with pytest.raises(checkpoint.NotAnAdapterError, match="image_proj"):
        checkpoint.read_checkpoint(half)

    # The format comes from the bytes, not the name: the message says what the bytes look like.
    with pytest.raises(checkpoint.CheckpointError, match="adapter.onnx is not a tensor file .*first bytes are 00"):
        other = tmp_path / "adapter.onnx"
        other.write_bytes(b"\0")
        checkpoint.read_checkpoint(other)
    with pytest.raises(checkpoint.CheckpointError, match="broken.safetensors is not a tensor file"):
        broken = tmp_path / "broken.safetensors"
        broken.write_bytes(b"not a safetensors file")
        checkpoint.read_checkpoint(broken)


def test_adapter_modules_variant_is_read_as_ip_adapter(tmp_path):
    sd = adapter_factory.adapter_state_dict("ip-adapter-plus_sd15")
    flat = {f"image_proj.{k}": t for k, t in sd["image_proj"].items()}
    flat.update({f"adapter_modules.{k}": t for k, t in sd["ip_adapter"].items()})
    save_file(flat, str(tmp_path / "trained.safetensors"))
    torch.save({"image_proj": sd["image_proj"], "adapter_modules": sd["ip_adapter"]}, tmp_path / "trained.bin")
    for name in ("trained.safetensors", "trained.bin"):
        loaded = checkpoint.read_checkpoint(tmp_path / name)
        assert set(loaded["ip_adapter"]) == set(sd["ip_adapter"])
        assert torch.equal(loaded["ip_adapter"]["31.to_v_ip.weight"], sd["ip_adapter"]["31.to_v_ip.weight"])
        assert checkpoint.detect(loaded, widths=TINY_WIDTHS).family == "ip-adapter-plus_sd15"


def _renumbered(ip, keep: int):
    """Keep the first ``keep`` cross-attention layers, numbered 1, 3, ..."""
    out = {}
    for i in range(keep):
        out[f"{2 * i + 1}.to_k_ip.weight"] = ip["1.to_k_ip.weight"]
        out[f"{2 * i + 1}.to_v_ip.weight"] = ip["1.to_v_ip.weight"]
    return out


@pytest.mark.parametrize("count", [12, 20, 69])
def test_unknown_layer_count_is_an_error(count):
    sd = adapter_factory.adapter_state_dict("ip-adapter_sd15", scale="full", device="meta")
    sd["ip_adapter"] = _renumbered(sd["ip_adapter"], count)
    with pytest.raises(checkpoint.UnknownAdapterError) as err:
        checkpoint.detect(sd, source="odd-model.safetensors")
    msg = str(err.value)
    assert "odd-model.safetensors" in msg and f"{count} cross-attention layers" in msg and "16" in msg and "70" in msg


def test_unknown_layouts_list_what_was_found_and_the_families():
    sd = adapter_factory.adapter_state_dict("ip-adapter_sd15")
    sd["image_proj"] = {"mystery.weight": torch.zeros(3, 3)}
    with pytest.raises(checkpoint.UnknownAdapterError) as err:
        checkpoint.detect(sd, source="mystery.bin")
    msg = str(err.value)
    assert "mystery.bin" in msg and "mystery.weight" in msg and "ip-adapter-plus_sd15" in msg

    # Token width that does not fit the UNet context: no family has that.
    sd = adapter_factory.adapter_state_dict("ip-adapter_sd15")
    sd["image_proj"] = adapter_factory.adapter_state_dict("ip-adapter_sdxl")["image_proj"]
    with pytest.raises(checkpoint.UnknownAdapterError) as err:
        checkpoint.detect(sd, source="mixed.safetensors")
    assert "mixed.safetensors" in str(err.value) and "context width 64" in str(err.value) and "token width 128" in str(err.value)

    # Missing keys of a recognised projection.
    sd = adapter_factory.adapter_state_dict("ip-adapter-plus_sd15")
    del sd["image_proj"]["proj_in.weight"]
    with pytest.raises(checkpoint.UnknownAdapterError, match="proj_in.weight"):
        checkpoint.detect(sd)

    # Unpaired to_k_ip / to_v_ip.
    sd = adapter_factory.adapter_state_dict("ip-adapter_sd15")
    del sd["ip_adapter"]["5.to_v_ip.weight"]
    with pytest.raises(checkpoint.UnknownAdapterError, match="pair"):
        checkpoint.detect(sd)


def test_detect_accepts_flat_keys_and_meta_tensors():
    sd = adapter_factory.adapter_state_dict("ip-adapter-full-face_sd15", scale="full", device="meta")
    flat = {f"{s}.{k}": t for s in sd for k, t in sd[s].items()}
    spec = checkpoint.detect(flat)
    assert spec.family == "ip-adapter-full-face_sd15" and spec.tokens == 257


def test_table_and_spec_are_frozen_data():
    names = [f.name for f in checkpoint.FAMILIES]
    assert len(names) == len(set(names)) == 16
    assert {f.projection for f in checkpoint.FAMILIES} == {"image_proj", "mlp", "resampler", "faceid", "faceid_plus"}
    assert checkpoint.family("ip-adapter-plus-face_sdxl_vit-h.safetensors").name == "ip-adapter-plus_sdxl_vit-h"
    assert checkpoint.family("ip-adapter_sd15_light_v11").name == "ip-adapter_sd15"
    spec = checkpoint.detect(adapter_factory.adapter_state_dict("ip-adapter_sd15"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.tokens = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        checkpoint.FAMILIES[0].name = "x"
    assert "ip-adapter_sd15" in spec.describe() and "4 tokens" in spec.describe()
