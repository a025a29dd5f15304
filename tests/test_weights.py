"""Per-layer weights: the old extension's weight types, the precise swaps, per-frame weights, layer_weights text.

The expected maps are section 2.2 / 2.4 of research/ipadapter-plus-interface.md, written out here as
{transformer index: value} per architecture. Only the middle block differs from the old numbers: it is
patched here (the old code never reached it), so a map that names it now acts there.
"""
from __future__ import annotations

import pytest
import torch

from ipadapter_next.ipadapter import layers, weights

W, WC, B = 0.7, 0.4, 1.9  # weight, weight_composition, boost: distinct, so a mixed-up variable shows
SD15_STYLE = (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)


def every(arch, value, but=()):
    return {t: value for t in range(layers.transformer_count(arch)) if t not in but}


def per_t(arch, **kw) -> dict:
    """{t_idx: weight} of a resolved map; every transformer block of one SpatialTransformer agrees."""
    got = weights.resolve_layer_weights(arch, **kw)
    out: dict = {}
    for site in layers.layer_map(arch):
        if site.key in got:
            out.setdefault(site.transformer_index, set()).add(got[site.key].weight)
    assert all(len(values) == 1 for values in out.values())
    return {t: values.pop() for t, values in out.items()}


def swapped(arch, **kw) -> set:
    got = weights.resolve_layer_weights(arch, **kw)
    return {s.transformer_index for s in layers.layer_map(arch) if s.key in got and got[s.key].swap}


# Section 2.4, both architectures. style_and_composition: wc from weight_composition; the precise types
# take their boost from `boost` (style_boost / composition_boost).
MAPS = {
    ("style transfer", "sdxl"): {6: W},
    ("style transfer", "sd15"): {t: W for t in SD15_STYLE},
    ("composition", "sdxl"): {3: W},
    ("composition", "sd15"): {4: W * 0.25, 5: W},
    ("strong style transfer", "sdxl"): every("sdxl", W, but=(3,)),
    ("strong style transfer", "sd15"): every("sd15", W, but=(4, 5)),
    ("style and composition", "sdxl"): {3: WC, 6: W},
    ("style and composition", "sd15"): {**{t: W for t in SD15_STYLE}, 4: WC * 0.25, 5: WC},
    ("strong style and composition", "sdxl"): {**every("sdxl", W, but=(3,)), 3: WC},
    ("strong style and composition", "sd15"): {**every("sd15", W, but=(4, 5)), 4: WC, 5: WC},
    ("style transfer precise", "sdxl"): {3: B, 6: W},
    ("style transfer precise", "sd15"): {**{t: W for t in SD15_STYLE}, 4: B * 0.25, 5: B},
    ("composition precise", "sdxl"): {**every("sdxl", B * 0.1, but=(3, 6)), 3: W, 6: B},
    ("composition precise", "sd15"): {**every("sd15", B, but=(4, 5, 6, 7, 8)), 4: W * 0.25, 5: W,
                                      6: B * 0.1, 7: B * 0.1, 8: B * 0.1},
}


@pytest.mark.parametrize("weight_type,arch", sorted(MAPS))
def test_style_and_composition_maps_match_the_old_tables(weight_type, arch):
    got = per_t(arch, weight_type=weight_type, weight=W, weight_composition=WC, boost=B)
    expected = MAPS[(weight_type, arch)]
    assert set(got) == set(expected)
    for t, value in expected.items():
        assert got[t] == pytest.approx(value), f"t_idx {t}"


def test_strong_style_and_composition_is_hidden_but_resolvable():
    assert "strong style and composition" not in weights.WEIGHT_TYPES
    assert "strong style and composition" in weights.HIDDEN_WEIGHT_TYPES


# Section 2.2's evaluated factors (3 decimals), index = t_idx.
CURVES = {
    ("ease in", "sd15"): [1.0, .941, .881, .822, .762, .703, .644, .584, .525, .466, .406, .347, .287, .228, .169, .109],
    ("ease out", "sd15"): [.05, .109, .169, .228, .287, .347, .406, .466, .525, .584, .644, .703, .762, .822, .881, .941],
    ("ease in-out", "sd15"): [.05, .169, .287, .406, .525, .644, .762, .881, 1.0, .881, .762, .644, .525, .406, .287, .169],
    ("reverse in-out", "sd15"): [1.0, .881, .762, .644, .525, .406, .287, .169, .05, .169, .287, .406, .525, .644, .762, .881],
    ("ease in", "sdxl"): [1.0, .914, .827, .741, .655, .568, .482, .395, .309, .223, .136],
    ("ease out", "sdxl"): [.05, .136, .223, .309, .395, .482, .568, .655, .741, .827, .914],
    ("ease in-out", "sdxl"): [.05, .223, .395, .568, .741, .914, .914, .741, .568, .395, .223],
    ("reverse in-out", "sdxl"): [1.0, .827, .655, .482, .309, .136, .136, .309, .482, .655, .827],
}


@pytest.mark.parametrize("weight_type,arch", sorted(CURVES))
def test_curves_match_the_old_factors(weight_type, arch):
    got = per_t(arch, weight_type=weight_type, weight=2.0)
    assert [round(got[t] / 2.0, 3) for t in sorted(got)] == pytest.approx(CURVES[(weight_type, arch)], abs=1.5e-3)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("weight_type,weak", [("weak input", {"input"}), ("weak output", {"output"}),
                                              ("weak middle", {"middle"}), ("strong middle", {"input", "output"})])
def test_weak_block_types_put_a_fifth_on_their_blocks(arch, weight_type, weak):
    got = weights.resolve_layer_weights(arch, weight_type, weight=1.5)
    for site in layers.layer_map(arch):
        assert got[site.key].weight == pytest.approx(1.5 * (0.2 if site.block in weak else 1.0)), site.key


def test_linear_covers_every_site_including_the_middle_block():
    for arch in ("sd15", "sdxl"):
        got = weights.resolve_layer_weights(arch, "linear", 0.5)
        assert len(got) == len(layers.layer_map(arch))
        assert got[("middle", 0, 0)].weight == 0.5


@pytest.mark.parametrize("arch,composition", [("sdxl", {3}), ("sd15", {4, 5})])
def test_precise_types_swap_cond_and_uncond_on_the_suppressed_layers(arch, composition):
    kw = dict(weight=W, boost=B)
    assert swapped(arch, weight_type="style transfer precise", **kw) == composition
    weighted = set(per_t(arch, weight_type="composition precise", **kw))
    assert swapped(arch, weight_type="composition precise", **kw) == weighted - composition
    for plain in ("linear", "style and composition", "composition"):
        assert swapped(arch, weight_type=plain, **kw) == set()


def test_composition_boost_zero_leaves_only_the_composition_layers():
    assert per_t("sdxl", weight_type="composition precise", weight=0.8, boost=0.0) == {3: 0.8}


def test_old_defaults_weight_composition_is_one_and_style_boost_falls_back_to_weight():
    # IPAdapter Advanced with "style and composition" gave the composition layers 1.0, not the weight.
    assert per_t("sdxl", weight_type="style and composition", weight=0.5) == {3: 1.0, 6: 0.5}
    assert per_t("sdxl", weight_type="style transfer precise", weight=0.5, weight_composition=3.0) == {3: 0.5, 6: 0.5}
    assert per_t("sdxl", weight_type="composition precise", weight=0.5)[6] == 0.5


def test_weight_zero_leaves_every_layer_out():
    for weight_type in weights.WEIGHT_TYPES:
        assert weights.resolve_layer_weights("sdxl", weight_type, 0.0, weight_composition=0.0, boost=0.0) == {}


def test_per_frame_weights_scale_what_weight_scales_and_leave_the_composition_weight_alone():
    frames = torch.tensor([0.2, 0.0, 1.5])
    got = weights.resolve_layer_weights("sdxl", "style and composition", frames, weight_composition=WC)
    by_t = {s.transformer_index: got.get(s.key) for s in layers.layer_map("sdxl")}
    torch.testing.assert_close(by_t[6].weight, frames)
    assert by_t[3].weight == WC
    eased = weights.resolve_layer_weights("sd15", "ease in", frames)
    torch.testing.assert_close(eased[("output", 11, 0)].weight, frames * (0.05 + 0.95 * (1 - 15 / 16)))
    assert weights.resolve_layer_weights("sd15", "linear", torch.zeros(3)) == {}


@pytest.mark.parametrize("given,expected", [
    (0.5, 0.5), ([0.5], 0.5), ((0.25, 1.0), [0.25, 1.0]), (torch.tensor([0.3, 0.6]), [0.3, 0.6]),
])
def test_node_weights_are_numbers_or_per_frame_tensors(given, expected):
    got = weights.as_frame_weights(given)
    if isinstance(expected, list):
        torch.testing.assert_close(got, torch.tensor(expected))
    else:
        assert got == expected


# --- layer_weights text (Mad Scientist) -------------------------------------------------------------
@pytest.mark.parametrize("arch,text,expected", [
    # The old format, from the example workflow ipadapter_precise_composition.json.
    ("sdxl", "0:0, 1:0, 2:0, 3:0.8, 4:0, 5:0, 6:0.35, 7:0, 8:0, 9:0, 10:0",
     {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.8, 4: 0.0, 5: 0.0, 6: 0.35, 7: 0.0, 8: 0.0, 9: 0.0, 10: 0.0}),
    ("sd15", "3:1,\n6 : 0.5,\n\n", {3: 1.0, 6: 0.5}),  # newlines, spaces, trailing comma, blank lines
    ("sdxl", "input_8:1\nmiddle:0.5, output_1.3:0.2", {3: 1.0, 4: 0.5, (6, 3): 0.2}),
    ("sdxl", "6.9:-1", {(6, 9): -1.0}),
    ("sd15", "input_7:0.5, middle:1, output_11:0.25, output_3.0:2", {4: 0.5, 6: 1.0, 15: 0.25, (7, 0): 2.0}),
    ("sd15", "", {}),
    ("sd15", " ,\n , ", {}),
])
def test_layer_weights_accepts_the_old_format_newlines_trailing_commas_and_block_names(arch, text, expected):
    assert weights.parse_layer_weights(text, arch) == expected


SD15_KEYS = ("Valid keys for SD1.5: 0-15 or input_1, input_2, input_4, input_5, input_7, input_8, middle, output_3, "
             "output_4, output_5, output_6, output_7, output_8, output_9, output_10, output_11.")
SDXL_KEYS = ("Valid keys for SDXL: 0-10 or input_4, input_5, input_7, input_8, middle, output_0, output_1, output_2, "
             "output_3, output_4, output_5; add .N for transformer block N of one layer (e.g. output_1.3 or 6.3).")


@pytest.mark.parametrize("arch,text,message", [
    ("sd15", "3:1, 16:0.5", "layer_weights entry '16:0.5': index 16 is out of range. " + SD15_KEYS),
    ("sd15", "3=0.5", "layer_weights entry '3=0.5': expected key:value, e.g. 3:0.5. " + SD15_KEYS),
    ("sd15", "3:high", "layer_weights entry '3:high': 'high' is not a number. " + SD15_KEYS),
    ("sd15", "input_3:1", "layer_weights entry 'input_3:1': SD1.5 has no cross-attention in input_3. " + SD15_KEYS),
    ("sd15", "4.1:1", "layer_weights entry '4.1:1': layer 4 has 1 transformer block(s), numbered 0-0. " + SD15_KEYS),
    ("sdxl", "output_1.10:1",
     "layer_weights entry 'output_1.10:1': layer 6 has 10 transformer block(s), numbered 0-9. " + SDXL_KEYS),
    ("sdxl", "up_1:1", "layer_weights entry 'up_1:1': 'up_1' is not a layer key. " + SDXL_KEYS),
    ("sdxl", "3:1, input_8:0.5", "layer_weights entry 'input_8:0.5': this layer is given twice. " + SDXL_KEYS),
])
def test_bad_layer_weights_entries_name_the_entry_and_list_the_valid_keys(arch, text, message):
    with pytest.raises(ValueError) as err:
        weights.parse_layer_weights(text, arch)
    assert str(err.value) == message


def test_layer_weights_override_the_type_but_keep_the_precise_swap():
    parsed = weights.parse_layer_weights("3:0.8, 6:0.35, output_1.3:1", "sdxl")
    for weight_type in ("linear", "style transfer", "ease in"):  # other types are ignored, as before
        got = per_t("sdxl", weight_type=weight_type, weight=2.0, layer_weights={3: 0.8})
        assert got == {3: 1.6}
    got = weights.resolve_layer_weights("sdxl", "composition precise", 2.0, layer_weights=parsed)
    by_key = {s.key: s for s in layers.layer_map("sdxl")}
    t6 = [k for k in got if by_key[k].transformer_index == 6]
    assert {k[2] for k in t6} == set(range(10))
    assert got[("output", 1, 3)].weight == 2.0  # the block entry wins over its layer's entry
    assert got[("output", 1, 0)].weight == pytest.approx(0.7)
    assert got[("output", 1, 0)].swap and not got[("input", 8, 0)].swap
