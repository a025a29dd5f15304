"""What differs between ComfyUI versions and the pack must handle on each (runs on every runtime tested)."""
from __future__ import annotations

import pytest
import torch

import folder_paths
import nodes

from ipadapter_next.ipadapter import apply
from support import features, sample, tiny_adapter, tiny_unet


def _with_override(model, counter: list):
    """A clone whose transformer_options carry an ``optimized_attention_override`` that counts its calls."""
    def override(func, *args, **kwargs):
        counter.append(args[0].shape[1])  # the query's token count: attn1 and attn2 alike
        return func(*args, **kwargs)

    clone = model.clone()
    options = dict(clone.model_options.get("transformer_options", {}))
    options["optimized_attention_override"] = override
    clone.model_options["transformer_options"] = options
    return clone


def test_an_attention_override_from_another_extension_still_runs_on_patched_layers():
    plain_calls, patched_calls = [], []
    sample(_with_override(tiny_unet("sd15"), plain_calls), "sd15", steps=1)
    ad = tiny_adapter("ip-adapter_sd15")
    patched = apply.apply_adapter(tiny_unet("sd15"), ad, apply.Embeds(features(ad), features(ad, seed=1)), weight=1.0)
    sample(_with_override(patched, patched_calls), "sd15", steps=1)
    assert plain_calls, "the runtime calls the override on plain layers"
    # 16 attn1 + 16 attn2 per UNet call: the patched attn2 layers go through the override too.
    assert len(patched_calls) == len(plain_calls) == 32


def test_patch_objects_are_shared_or_copied_on_clone_and_stay_correct_either_way():
    ad = tiny_adapter("ip-adapter_sd15")
    patched = apply.apply_adapter(tiny_unet("sd15"), ad, apply.Embeds(features(ad), features(ad, seed=1)), weight=1.0)
    clone = patched.clone()
    first = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    second = clone.model_options["transformer_options"]["patches_replace"]["attn2"]
    # 0.3.75 deep-copies model_options on clone, newer versions share the objects: either way, the same patch.
    assert all(second[key] is first[key] for key in first)
    assert torch.equal(sample(patched, "sd15"), sample(clone, "sd15"))


@pytest.mark.parametrize("kind,name,what", [("IPAdapterLoadEmbeds", "embeds", "Load Embeds"),
                                            ("IPAdapterFaceEmbedsLoad", "face_embeds", "Load Face Embeds")])
def test_load_nodes_refuse_paths_outside_input_with_a_clear_message(kind, name, what, tmp_path):
    outside = tmp_path / "stolen.ipadpt"
    outside.write_bytes(b"x")
    node = nodes.NODE_CLASS_MAPPINGS[kind]()
    load = getattr(node, node.FUNCTION)
    relative = "../" * 12 + str(outside).lstrip("/")
    with pytest.raises(ValueError) as err:
        load(**{name: relative})
    assert f"IPAdapter {what}" in str(err.value) and "outside ComfyUI's input folder" in str(err.value)
    with pytest.raises(FileNotFoundError, match=f"IPAdapter {what}: missing.ipadpt is not in"):
        load(**{name: "missing.ipadpt"})
    # IS_CHANGED never raises (ComfyUI calls it before the node); load() gives the message.
    assert nodes.NODE_CLASS_MAPPINGS[kind].IS_CHANGED(**{name: relative}) == ""


def test_load_embeds_is_run_again_when_the_file_changes():
    path = folder_paths.get_input_directory() + "/compat_changed.ipadpt"
    torch.save(torch.ones(1, 4, 8), path)
    kind = nodes.NODE_CLASS_MAPPINGS["IPAdapterLoadEmbeds"]
    before = kind.IS_CHANGED(embeds="compat_changed.ipadpt")
    torch.save(torch.ones(2, 4, 8), path)  # rewritten: other size
    assert kind.IS_CHANGED(embeds="compat_changed.ipadpt") != before
