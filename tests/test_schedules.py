"""Frame-weight schedules (IPAdapter Weights & co.): the numbers of every timing and method.

Formulas from the old extension (ipadapter-plus-interface.md section 1.3), with n = duration - 1:
linear s+(e-s)i/n, ease_in_out s+(e-s)(1-cos(pi i/n))/2, ease_in s+(e-s)sin(i/n pi/2),
ease_out s+(e-s)(1-cos(i/n pi/2)), random uniform(s, e).
"""
from __future__ import annotations

import math

import pytest
import torch

import nodes

from ipadapter_next.ipadapter import schedules
from ipadapter_next.ipadapter.schedules import ScheduleError, Strategy, block, schedule

FORMULAS = {
    "linear": lambda s, e, i, n: s + (e - s) * i / n,
    "ease_in_out": lambda s, e, i, n: s + (e - s) * (1 - math.cos(i / n * math.pi)) / 2,
    "ease_in": lambda s, e, i, n: s + (e - s) * math.sin(i / n * math.pi / 2),
    "ease_out": lambda s, e, i, n: s + (e - s) * (1 - math.cos(i / n * math.pi / 2)),
}


def node(key):
    return nodes.NODE_CLASS_MAPPINGS[key]()


def images(n: int) -> torch.Tensor:
    """n distinguishable 2x2 images: image k is filled with the value k."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, 2, 3).clone()


def ids(batch: torch.Tensor) -> list[int]:
    return [int(v) for v in batch[:, 0, 0, 0]]


@pytest.mark.parametrize("timing", list(FORMULAS))
def test_each_timing_follows_its_formula(timing):
    got = block(Strategy("0.9, 0.2", timing, frames=7))
    want = [FORMULAS[timing](0.9, 0.2, i, 6) for i in range(7)]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[-1] == 0.2  # the end value exactly


@pytest.mark.parametrize("timing", list(FORMULAS))
def test_start_and_end_frames_hold_the_end_values(timing):
    got = block(Strategy("1, 0", timing, frames=10, start_frame=2, end_frame=6))
    ramp = [FORMULAS[timing](1.0, 0.0, i, 3) for i in range(4)]
    assert got == pytest.approx([1.0, 1.0] + ramp + [0.0] * 4)


def test_frames_are_at_least_two_and_end_frame_is_clamped_to_frames():
    assert block(Strategy("1, 0", "linear", frames=0)) == [1.0, 0.0]
    assert block(Strategy("1, 0", "linear", frames=3, end_frame=9999)) == pytest.approx([1.0, 0.5, 0.0])


def test_custom_timing_uses_the_values_as_typed_split_by_commas_and_lines():
    assert block(Strategy("0.1, 0.5\n0.7,\n\n1", "custom", frames=99)) == [0.1, 0.5, 0.7, 1.0]
    assert block(Strategy("", "custom")) == [0.0]


def test_random_timing_is_in_range_and_reproducible():
    a = block(Strategy("0.2, 0.6", "random", frames=12))
    assert len(a) == 12 and all(0.2 <= w <= 0.6 for w in a)
    assert a == block(Strategy("0.2, 0.6", "random", frames=12))
    assert a != block(Strategy("0.2, 0.6", "random", frames=13))[:12]


def test_a_one_frame_transition_is_the_end_value_not_a_division_by_zero():
    assert block(Strategy("1, 0", "linear", frames=5, start_frame=2, end_frame=3)) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_bad_settings_are_named():
    with pytest.raises(ScheduleError, match="start_frame .* must be lower than end_frame"):
        block(Strategy("1, 0", "linear", frames=4, start_frame=4))
    with pytest.raises(ScheduleError, match="'x' is not a number"):
        block(Strategy("1, x", "linear", frames=4))
    with pytest.raises(ScheduleError, match="needs at least 2"):
        schedule(Strategy("1, 0", "linear", frames=3, method="shift batches"), images(1))


def test_full_batch_repeats_the_transition_per_image():
    s = schedule(Strategy("1, 0", "linear", frames=3), images(3))
    assert s.weights == pytest.approx([1, .5, 0] * 3)
    assert ids(s.image_1) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert s.image_2 is None and s.total_frames == 9


def test_shift_batches_fade_each_image_into_the_next():
    s = schedule(Strategy("1, 0", "linear", frames=3, method="shift batches"), images(3))
    assert s.weights == pytest.approx([1, .5, 0] * 2)
    assert ids(s.image_1) == [0, 0, 0, 1, 1, 1]
    assert ids(s.image_2) == [1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("count, pairs", [
    (2, [(0, 1)]),
    (3, [(0, 1), (2, 1)]),
    (4, [(0, 1), (2, 1), (2, 3)]),
    (5, [(0, 1), (2, 1), (2, 3), (4, 3)]),
])
def test_alternate_batches_keep_even_images_in_image_1_and_invert_every_second_transition(count, pairs):
    s = schedule(Strategy("0.9, 0.1", "linear", frames=3, method="alternate batches"), images(count))
    one = [0.9, 0.5, 0.1]
    inverted = [0.9 - (w - 0.1) for w in one]  # within the block's own range
    assert s.weights == pytest.approx([w for k in range(len(pairs)) for w in (inverted if k % 2 else one)])
    assert ids(s.image_1) == [a for a, _ in pairs for _ in range(3)]
    assert ids(s.image_2) == [b for _, b in pairs for _ in range(3)]


def test_added_frames_hold_the_first_and_last_weight_and_image():
    s = schedule(Strategy("1, 0", "linear", frames=2, add_starting_frames=2, add_ending_frames=1,
                          method="shift batches"), images(3))
    assert s.weights == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert ids(s.image_1) == [0, 0, 0, 0, 1, 1, 2]
    assert ids(s.image_2) == [0, 0, 1, 1, 2, 2, 2]
    assert s.total_frames == 7


def test_added_frames_apply_without_images_too():
    s = schedule(Strategy("1, 0", "linear", frames=3, add_starting_frames=1, add_ending_frames=2))
    assert s.weights == pytest.approx([1, 1, .5, 0, 0, 0])
    assert s.image_1 is None and s.image_2 is None


def test_weights_invert_is_the_complement_frame_by_frame():
    # The old node reversed the list, which puts the complement on the wrong frames as soon as the
    # schedule is not symmetric (here: held starting frames and an ease curve).
    s = schedule(Strategy("1, 0", "ease_in", frames=5, add_starting_frames=3))
    assert [a + b for a, b in zip(s.weights, s.weights_invert)] == pytest.approx([1.0] * len(s.weights))


def test_weights_node_outputs_and_strategy_round_trip():
    out = node("IPAdapterWeights").weights("1, 0", "ease_out", 4, 0, 9999, 1, 0, "full batch", image=images(2))
    weights, invert, total, image_1, image_2, strategy = out
    ramp = [FORMULAS["ease_out"](1.0, 0.0, i, 3) for i in range(4)]
    assert weights == pytest.approx([1.0] + ramp * 2) and total == 9 and image_2 is None
    assert strategy["frame_count"] == 2 and strategy["timing"] == "ease_out"
    again = node("IPAdapterWeightsFromStrategy").weights(strategy, image=images(2))
    assert again[0] == weights and again[2] == total and torch.equal(again[3], image_1)


def test_prompt_schedule_keys_each_prompt_at_its_transition():
    strategy = Strategy("1, 0", "linear", frames=4, add_starting_frames=2, add_ending_frames=1,
                        frame_count=3).as_dict()
    text = node("IPAdapterPromptScheduleFromWeightsStrategy").prompt_schedule(strategy, 'a cat\n\na "dog"\n')[0]
    assert text == ('"0": "a cat",\n"2": "a cat",\n"6": "a \\"dog\\"",\n"10": "a \\"dog\\"",\n'
                    '"14": "a \\"dog\\"",\n')


def test_prompt_schedule_uses_the_real_transition_length_for_custom_weights():
    strategy = Strategy("0.1, 0.4, 0.7", "custom", frames=0, frame_count=2).as_dict()
    text = node("IPAdapterPromptScheduleFromWeightsStrategy").prompt_schedule(strategy, "one\ntwo")[0]
    assert text == '"0": "one",\n"3": "two",\n'
    assert node("IPAdapterPromptScheduleFromWeightsStrategy").prompt_schedule(
        Strategy(frame_count=0).as_dict(), "one")[0] == ""


def test_combine_weights_concatenates_lists_and_floats():
    weights, count = node("IPAdapterCombineWeights").combine([1.0, 0.5], 0.25)
    assert weights == [1.0, 0.5, 0.25] and count == 3
    assert schedules.combine_weights(0.1, 0.2) == [0.1, 0.2]
