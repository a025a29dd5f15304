"""The experimental style / composition block maps of the transformer models (``ipadapter/block_maps``).

The maps are written as fractions of each stream; these tests pin what they mean on the released models'
block counts (Flux.1: 19 double + 38 single blocks, SD3.5 Large: 38 joint blocks), so a change to the
table shows up here as a change of blocks. How the maps reach the real patches is tested per architecture
(test_flux_xlabs.py, test_flux_instantx.py, test_sd3_instantx.py).
"""
from __future__ import annotations

import pytest

from ipadapter_next.ipadapter import flux, flux_instantx, sd3_patch, sweep
from ipadapter_next.ipadapter.block_maps import DIT_MAPPED_TYPES

XLABS = flux.block_sites(19)  # processors on the 19 double blocks
INSTANTX = flux_instantx.block_sites(19, 38)  # processor N: double N, then single N - 19
SD35 = sd3_patch.block_sites(38)


def weights(sites, weight_type: str, weight: float = 1.0, **kw) -> dict[int, float]:
    """processor index -> weight (blocks left out have weight 0)."""
    by_key = {s.key: s.ckpt_index for s in sites}
    resolved = flux.resolve_block_weights(sites, weight_type, weight, **kw)
    return {by_key[k]: v.weight for k, v in resolved.items()}


def test_flux_composition_is_the_first_half_of_the_double_blocks():
    assert weights(XLABS, "composition", 0.7) == {n: 0.7 for n in range(10)}
    assert weights(INSTANTX, "composition", 0.7) == {n: 0.7 for n in range(10)}


def test_flux_style_is_the_second_half_of_each_stream():
    assert weights(XLABS, "style transfer") == {n: 1.0 for n in range(10, 19)}
    singles = range(19 + 19, 19 + 38)  # single blocks 19..37
    assert weights(INSTANTX, "style transfer") == {n: 1.0 for n in [*range(10, 19), *singles]}


def test_flux_strong_style_is_every_block_but_the_composition_ones():
    assert weights(XLABS, "strong style transfer") == {n: 1.0 for n in range(10, 19)}
    assert weights(INSTANTX, "strong style transfer") == {n: 1.0 for n in range(10, 19 + 38)}


def test_sd35_splits_its_joint_blocks_in_halves():
    assert weights(SD35, "composition") == {n: 1.0 for n in range(19)}
    assert weights(SD35, "style transfer") == {n: 1.0 for n in range(19, 38)}
    assert weights(SD35, "strong style transfer") == weights(SD35, "style transfer")


@pytest.mark.parametrize("sites", [XLABS, INSTANTX, SD35], ids=["xlabs", "instantx", "sd35"])
def test_style_and_composition_gives_the_composition_blocks_their_own_weight(sites):
    both = weights(sites, "style and composition", 0.8, weight_composition=0.3)
    assert both == {**{n: 0.8 for n in weights(sites, "style transfer")},
                    **{n: 0.3 for n in weights(sites, "composition")}}
    # weight_composition defaults to 1.0, as on the UNet (the old extension's default)
    assert set(weights(sites, "style and composition", 0.8).values()) == {0.8, 1.0}


@pytest.mark.parametrize("doubles, singles", [(19, 38), (3, 2), (1, 1), (4, 0), (7, 5)])
def test_style_and_composition_blocks_never_overlap_and_strong_style_covers_the_rest(doubles, singles):
    sites = flux_instantx.block_sites(doubles, singles)
    composition = set(weights(sites, "composition"))
    assert composition.isdisjoint(weights(sites, "style transfer"))
    assert composition.isdisjoint(weights(sites, "strong style transfer"))
    assert composition | set(weights(sites, "strong style transfer")) == {s.ckpt_index for s in sites}
    assert composition, "every model with a double block has a composition block"


def test_unet_only_weight_types_still_say_so_and_list_the_transformer_choices():
    for name in ("weak input", "style transfer precise", "composition precise"):
        with pytest.raises(ValueError, match=f"'{name}' is a UNet layer map .* linear, .* composition"):
            weights(XLABS, name)
    assert set(DIT_MAPPED_TYPES) == {"style transfer", "composition", "strong style transfer",
                                     "style and composition"}


# --------------------------------------------------------------------------------------------------
# IPAdapter Layer Sweep on the transformer models: per block, or per half of each stream (the map's regions)
# --------------------------------------------------------------------------------------------------
def test_sweep_per_block_lists_every_patched_block():
    entries = sweep.sweep_entries("flux", "each layer", streams={"double": 19})
    assert [e.label for e in entries[:4]] == ["no adapter", "all layers", "only double 0", "only double 1"]
    assert len(entries) == 2 + 19 and entries[-1].layer_weights() == "double_18:1"
    instantx = sweep.sweep_entries("flux", "each layer", "all but this group", {"double": 19, "single": 38})
    assert len(instantx) == 2 + 57 and instantx[-1].label == "all but single 37"
    assert ("single", 37) not in instantx[-1].layers and len(instantx[-1].layers) == 56


@pytest.mark.parametrize("arch, streams, sites", [("flux", {"double": 19}, XLABS),
                                                  ("flux", {"double": 19, "single": 38}, INSTANTX),
                                                  ("sd3", {"double": 38}, SD35)], ids=["xlabs", "instantx", "sd35"])
def test_sweep_halves_are_the_regions_of_the_maps_and_their_text_parses_back(arch, streams, sites):
    entries = sweep.sweep_entries(arch, "input / middle / output", streams=streams)[2:]
    by_processor = {s.key: s.ckpt_index for s in sites}

    def processors(entry) -> set[int]:  # the entry's blocks as processor indices, through the real resolver
        resolved = flux.resolve_block_weights(sites, "linear", 1.0, _processor_keys(entry.weights(), streams))
        return {by_processor[k] for k in resolved}

    assert processors(entries[0]) == set(weights(sites, "composition"))  # the first half of the double stream
    assert set().union(*(processors(e) for e in entries[1:])) == set(weights(sites, "strong style transfer"))
    for entry in entries:
        assert flux.parse_any_layer_weights(entry.layer_weights(), arch) == entry.weights()
    if arch == "sd3":
        assert [e.label for e in entries] == ["only joint 0-18", "only joint 19-37"]


def _processor_keys(layer_weights: dict, streams: dict[str, int]) -> dict[int, float]:
    """Mad Scientist keys -> processor index (double N -> N, single N -> doubles + N)."""
    if "single" not in streams:
        return layer_weights
    return flux_instantx.processor_weights(layer_weights, streams["double"], streams["single"])
