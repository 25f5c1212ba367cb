"""Attention diagnostics on constructed matrices whose values are known by hand."""

import math

import matplotlib.image
import numpy as np
import pytest
import torch

from asr.diagnostics import (
    DEFINITIONS,
    attention_diagnostics,
    attention_figure,
    back_to_back_repeats,
    block_diagonal,
    coverage,
    is_looping,
    summarise,
    trailing_deletions,
)

SIZE = 6


def diagonal(num_steps: int = SIZE, num_frames: int = SIZE) -> np.ndarray:
    """One-hot rows whose peak walks forward evenly from the first frame."""
    matrix = np.zeros((num_steps, num_frames))
    matrix[np.arange(num_steps), np.arange(num_steps) * num_frames // num_steps] = 1.0
    return matrix


def stuck(num_steps: int = SIZE, num_frames: int = 8, frame: int = 2) -> np.ndarray:
    matrix = np.zeros((num_steps, num_frames))
    matrix[:, frame] = 1.0
    return matrix


def uniform(num_steps: int = SIZE, num_frames: int = SIZE) -> np.ndarray:
    return np.full((num_steps, num_frames), 1.0 / num_frames)


# (matrix, monotonicity, diagonality, entropy, peak_weight, coverage, longest_peak_run, stuck)
KNOWN = {
    "diagonal": (diagonal(), 1.0, 1.0, 0.0, 1.0, 1.0, 1, 0.0),
    "reversed": (diagonal()[::-1], 0.0, -1.0, 0.0, 1.0, 1.0, 1, 0.0),
    # no step has a peak: nothing moves backwards, nothing correlates, nothing is stuck
    "uniform": (uniform(), 1.0, 0.0, 1.0, 1.0 / SIZE, 1.0, 0, 0.0),
    "stuck": (stuck(), 1.0, 0.0, 0.0, 1.0, 1.0 / 8, SIZE, 1.0),
    # half the frames skipped: still a perfect diagonal, half of them covered
    "diagonal 5x10": (diagonal(5, 10), 1.0, 1.0, 0.0, 1.0, 0.5, 1, 0.0),
}


@pytest.mark.parametrize("name", list(KNOWN))
def test_known_values_on_constructed_matrices(name):
    matrix, *expected = KNOWN[name]
    values = attention_diagnostics(matrix)
    keys = ["monotonicity", "diagonality", "entropy", "peak_weight", "coverage", "longest_peak_run", "stuck"]
    assert [values[key] for key in keys] == pytest.approx(expected, abs=1e-12), name


def test_two_frame_rows_have_half_the_entropy_of_four_frames():
    # Rows [.5 .5 0 0], [0 .5 .5 0], [0 0 .5 .5]: entropy log 2 / log 4; frame sums .5 1 1 .5.
    matrix = np.array([[0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0.5, 0.5]])
    values = attention_diagnostics(matrix)
    assert values["entropy"] == pytest.approx(0.5)
    assert values["peak_weight"] == pytest.approx(0.5)
    assert values["coverage"] == pytest.approx(0.5)  # a sum of exactly 0.5 does not count
    assert values["monotonicity"] == 1.0 and values["diagonality"] == pytest.approx(1.0)


def test_a_uniform_attention_over_many_frames_covers_nothing():
    assert coverage(uniform(num_steps=3, num_frames=12)) == 0.0  # 3 steps x 1/12 = 0.25 per frame


def test_one_backward_jump_in_five_moves():
    # peaks 0 1 2 1 3 4: one of five moves goes back
    matrix = np.zeros((6, 5))
    matrix[np.arange(6), [0, 1, 2, 1, 3, 4]] = 1.0
    values = attention_diagnostics(matrix)
    assert values["monotonicity"] == pytest.approx(4 / 5)
    expected = np.corrcoef(np.arange(6), [0, 1, 2, 1, 3, 4])[0, 1]
    assert values["diagonality"] == pytest.approx(expected)


def test_a_single_step_is_monotonic_and_uncorrelated():
    values = attention_diagnostics(np.array([[0.2, 0.8]]))
    assert (values["monotonicity"], values["diagonality"], values["longest_peak_run"]) == (1.0, 0.0, 1.0)


def test_stuck_steps_sets_the_threshold():
    assert attention_diagnostics(stuck(num_steps=4), stuck_steps=4)["stuck"] == 1.0
    assert attention_diagnostics(stuck(num_steps=4), stuck_steps=5)["stuck"] == 0.0


def test_tensors_give_the_same_values_as_arrays():
    matrix = np.random.default_rng(0).dirichlet(np.ones(9), size=7)
    assert attention_diagnostics(torch.from_numpy(matrix).float()) == pytest.approx(
        attention_diagnostics(matrix), rel=1e-5
    )


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="steps, frames"):
        attention_diagnostics(np.ones(4))
    with pytest.raises(ValueError, match="steps, frames"):
        attention_diagnostics(np.zeros((0, 3)))


def test_text_flags_appear_only_with_both_texts():
    assert "looping" not in attention_diagnostics(diagonal(), hypothesis="one")
    values = attention_diagnostics(diagonal(), hypothesis="One, two.", reference="one two")
    assert values["looping"] == 0.0 and values["early_stop"] == 0.0


@pytest.mark.parametrize(
    ("reference", "hypothesis", "looping"),
    [
        ("one two three", "one two three two three two three", True),  # a bigram loop
        ("seven", "seven seven seven", True),
        ("one one two", "one one two", False),  # the repeat is in the reference too
        ("one two", "one one", False),  # a substitution, no extra words
        ("one two three", "one two three four", False),  # an insertion that repeats nothing
    ],
)
def test_looping_flags_inserted_back_to_back_repeats(reference, hypothesis, looping):
    assert is_looping(hypothesis.split(), reference.split()) is looping
    values = attention_diagnostics(diagonal(), hypothesis, reference)
    assert values["looping"] == float(looping)


def test_back_to_back_repeats_counts_each_position():
    assert back_to_back_repeats(["a", "b"] * 3, max_words=2) == {("a", "b"): 2, ("b", "a"): 1}


@pytest.mark.parametrize(
    ("reference", "hypothesis", "deleted"),
    [
        ("one two three four", "one two", 2),
        ("one two three", "", 3),
        ("one two three", "two three", 0),  # a leading deletion is not an early stop
        ("one two three", "one two four", 0),
        ("", "one", 0),
    ],
)
def test_early_stop_counts_trailing_deletions(reference, hypothesis, deleted):
    assert trailing_deletions(reference.split(), hypothesis.split()) == deleted
    values = attention_diagnostics(diagonal(), hypothesis, reference)
    assert values["early_stop"] == float(deleted > 0)


def test_summarise_averages_and_turns_flags_into_shares():
    summary = summarise([attention_diagnostics(diagonal()), attention_diagnostics(stuck())])
    assert summary["monotonicity"] == 1.0
    assert summary["coverage"] == pytest.approx((1.0 + 1 / 8) / 2)
    assert summary["stuck"] == 0.5
    assert list(summary) == [key for key in DEFINITIONS if key in summary]  # definition order
    assert summarise([{"coverage": math.nan}, {"coverage": 0.5}]) == {"coverage": 0.5}


def test_block_diagonal_stitches_segments():
    stitched = block_diagonal([np.eye(2), np.full((1, 3), 1 / 3)])
    assert stitched.shape == (3, 5)
    assert np.allclose(stitched.sum(axis=1), 1.0)
    assert attention_diagnostics(stitched)["diagonality"] > 0.9


def test_attention_figure_labels_tokens_and_frames(tmp_path):
    tokens = ["o", "n", "e", " ", "t", "w", "o", "<eos>"]
    figure = attention_figure(diagonal(8, 20), tokens, title="example", frame_seconds=0.08)
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == [
        "o",
        "n",
        "e",
        "␣",
        "t",
        "w",
        "o",
        "<eos>",
    ]
    assert axes.get_xlabel() == "encoder frame (80 ms each)" and axes.get_ylabel()
    figure.savefig(tmp_path / "attention.png")
    image = matplotlib.image.imread(tmp_path / "attention.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    with pytest.raises(ValueError, match="token labels"):
        attention_figure(diagonal(8, 20), tokens[:-1])
