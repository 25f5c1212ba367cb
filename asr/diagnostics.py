"""Attention diagnostics: how well a LAS decoder's attention follows the audio, one number each.

Every function takes one utterance's attention weights, shape = (num_steps, num_frames): row i is
the distribution over encoder frames at output step i, the eos step included, as
`asr.decoding.Hypothesis.attention` holds it. A good alignment walks forward through the frames
(monotonic, diagonal), is sharp at each step (low entropy, high peak) and passes over the whole
utterance (coverage). LAS attention fails on long inputs by looping, stopping early or sticking to
one frame (Chorowski & Jaitly 2017; espnet#1297, speechbrain#565); the flags below name those.

    >>> import numpy as np
    >>> values = attention_diagnostics(np.eye(4), "one two", "one two")
    >>> values["monotonicity"], values["diagonality"], values["coverage"], values["looping"]
    (1.0, 1.0, 1.0, 0.0)

`summarise` averages per-utterance values (flags become shares of utterances) and
`attention_figure` draws one matrix; both are for evaluation reports and training logs alike.
"""

import math
import textwrap
from collections.abc import Mapping, Sequence

import jiwer
import numpy as np

from asr.decoding import COVERAGE_THRESHOLD
from asr.text import normalize_text

# "Many steps" for the stuck flag: at 80 ms per encoder frame (10 ms hop x 8) even fast speech puts
# at most two or three characters on one frame, so five steps on one frame means the attention stalled.
STUCK_STEPS = 5
# A step whose largest and smallest weights differ by no more than this has no peak (uniform attention).
FLAT_TOLERANCE = 1e-9
# Longest n-gram (in words) checked for back-to-back repeats by the looping flag.
MAX_LOOP_WORDS = 4

# One line each, written into every report next to the numbers. Flags are 0 or 1 per utterance.
DEFINITIONS = {
    "monotonicity": "share of consecutive decoder steps whose attention peak (argmax frame) does not "
    "move backwards (steps with all-equal weights have no peak and are skipped; 1 when none is left)",
    "diagonality": "Pearson correlation between the output step index and its attention peak frame "
    "over steps with a peak (1: forward diagonal, -1: reversed; 0 when the peak never moves)",
    "entropy": "mean over steps of the attention entropy divided by log(number of frames) "
    "(0: all weight on one frame, 1: uniform)",
    "peak_weight": "mean over steps of the largest attention weight (1: one frame, 1/frames: uniform)",
    "coverage": f"share of encoder frames whose attention summed over all steps exceeds "
    f"{COVERAGE_THRESHOLD} (as in the search's coverage term, Chorowski & Jaitly 2017)",
    "longest_peak_run": "the most consecutive steps whose attention peak stays on one frame",
    "stuck": f"flag: the attention peak stays on one frame for at least {STUCK_STEPS} consecutive steps",
    "looping": f"flag: the hypothesis has more words than the reference and repeats some n-gram "
    f"(n <= {MAX_LOOP_WORDS} words) back to back more often than the reference does",
    "early_stop": "flag: the word alignment ends in deletions (the hypothesis stops before the "
    "reference's last words)",
}
FLAGS = ("stuck", "looping", "early_stop")


def attention_diagnostics(
    weights, hypothesis: str | None = None, reference: str | None = None, stuck_steps: int = STUCK_STEPS
) -> dict[str, float]:
    """All diagnostics of one utterance, keyed as in `DEFINITIONS`.

    Parameters
    ----------
    weights : numpy.ndarray or torch.Tensor, shape = (num_steps, num_frames)
        Attention weights, each row a distribution over the utterance's frames.
    hypothesis, reference : str, optional
        Texts for the `looping` and `early_stop` flags, left out unless both are given.
    stuck_steps : int
        Consecutive steps on one frame that count as stuck.

    Returns
    -------
    dict of str to float
        Flags are 0.0 or 1.0, so that `summarise` turns them into shares of utterances.
    """
    weights = as_matrix(weights)
    run = longest_peak_run(weights)
    values = {
        "monotonicity": monotonicity(weights),
        "diagonality": diagonality(weights),
        "entropy": mean_entropy(weights),
        "peak_weight": mean_peak_weight(weights),
        "coverage": coverage(weights),
        "longest_peak_run": float(run),
        "stuck": float(run >= stuck_steps),
    }
    if hypothesis is not None and reference is not None:
        values.update(text_flags(hypothesis, reference))
    return values


def text_flags(hypothesis: str, reference: str) -> dict[str, float]:
    """The `looping` and `early_stop` flags (0.0 or 1.0) of a hypothesis, on normalised words."""
    hypothesis_words, reference_words = normalize_text(hypothesis).split(), normalize_text(reference).split()
    return {
        "looping": float(is_looping(hypothesis_words, reference_words)),
        "early_stop": float(trailing_deletions(reference_words, hypothesis_words) > 0),
    }


def summarise(diagnostics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each diagnostic over utterances (flags: the share flagged), in `DEFINITIONS` order.

    A key missing from some utterances is averaged over those that have it; NaN values are skipped.

    >>> summarise([{"coverage": 1.0, "stuck": 1.0}, {"coverage": 0.5, "stuck": 0.0}])
    {'coverage': 0.75, 'stuck': 0.5}
    """
    summary = {}
    known = [key for key in DEFINITIONS if any(key in values for values in diagnostics)]
    extra = sorted({key for values in diagnostics for key in values} - set(DEFINITIONS))
    for key in known + extra:
        present = [values[key] for values in diagnostics if key in values and not math.isnan(values[key])]
        if present:
            summary[key] = float(np.mean(present))
    return summary


def as_matrix(weights) -> np.ndarray:
    """(num_steps, num_frames) float64 numpy array from a numpy array or a (CPU or GPU) tensor."""
    if hasattr(weights, "detach"):
        weights = weights.detach().float().cpu().numpy()
    matrix = np.asarray(weights, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"attention weights must be a non-empty (steps, frames) matrix, got {matrix.shape}")
    return matrix


def peaks(weights) -> np.ndarray:
    """(num_steps,) int: the frame with the largest weight at each step (the first, on ties), or -1
    at a step whose weights are all equal: a flat row has no peak to follow."""
    matrix = as_matrix(weights)
    flat = matrix.max(axis=1) - matrix.min(axis=1) <= FLAT_TOLERANCE
    return np.where(flat, -1, matrix.argmax(axis=1))


def monotonicity(weights) -> float:
    """Share of consecutive steps (both with a peak) whose peak frame does not move backwards."""
    peak_frames = peaks(weights)
    both = (peak_frames[1:] >= 0) & (peak_frames[:-1] >= 0)
    forward = peak_frames[1:] >= peak_frames[:-1]
    return float(forward[both].mean()) if both.any() else 1.0


def diagonality(weights) -> float:
    """Pearson correlation of step index and peak frame over steps with a peak; 0 when either is constant."""
    peak_frames = peaks(weights)
    steps = np.flatnonzero(peak_frames >= 0)
    if steps.size < 2 or np.all(peak_frames[steps] == peak_frames[steps[0]]):
        return 0.0
    return float(np.corrcoef(steps, peak_frames[steps])[0, 1])


def mean_entropy(weights) -> float:
    """Mean over steps of the entropy (nats) divided by log(num_frames); 0 for a single frame."""
    matrix = as_matrix(weights)
    if matrix.shape[1] == 1:
        return 0.0
    # 0 log 0 = 0: the log of a zero weight is never used.
    logs = np.log(np.where(matrix > 0, matrix, 1.0))
    entropy = -(matrix * logs).sum(axis=1)
    return float(entropy.mean() / math.log(matrix.shape[1]))


def mean_peak_weight(weights) -> float:
    """Mean over steps of the largest weight."""
    return float(as_matrix(weights).max(axis=1).mean())


def coverage(weights, threshold: float = COVERAGE_THRESHOLD) -> float:
    """Share of frames whose weights summed over steps exceed `threshold`."""
    return float((as_matrix(weights).sum(axis=0) > threshold).mean())


def longest_peak_run(weights) -> int:
    """The most consecutive steps with the same peak frame: 1 when the peak moves every step, 0 when
    no step has a peak."""
    longest = current = 0
    previous = -1
    for peak in peaks(weights).tolist():
        current = 0 if peak < 0 else (current + 1 if peak == previous else 1)
        longest, previous = max(longest, current), peak
    return longest


def back_to_back_repeats(words: Sequence[str], max_words: int = MAX_LOOP_WORDS) -> dict[tuple, int]:
    """How often each n-gram (n <= `max_words`) is immediately followed by itself.

    >>> back_to_back_repeats("a b a b a b".split(), max_words=2)
    {('a', 'b'): 2, ('b', 'a'): 1}
    """
    counts: dict[tuple, int] = {}
    for size in range(1, max_words + 1):
        for start in range(len(words) - 2 * size + 1):
            gram = tuple(words[start : start + size])
            if gram == tuple(words[start + size : start + 2 * size]):
                counts[gram] = counts.get(gram, 0) + 1
    return counts


def is_looping(hypothesis_words: Sequence[str], reference_words: Sequence[str]) -> bool:
    """More words than the reference, and some n-gram repeated back to back more than there.

    Requiring extra words keeps a substitution that happens to repeat a neighbour ("one two" ->
    "one one") from counting as a loop: a looping decoder inserts.
    """
    if len(hypothesis_words) <= len(reference_words):
        return False
    in_reference = back_to_back_repeats(reference_words)
    return any(
        count > in_reference.get(gram, 0) for gram, count in back_to_back_repeats(hypothesis_words).items()
    )


def trailing_deletions(reference_words: Sequence[str], hypothesis_words: Sequence[str]) -> int:
    """Reference words deleted at the end of the word alignment (jiwer's, as in the WER)."""
    if not reference_words:
        return 0
    if not hypothesis_words:
        return len(reference_words)
    chunks = jiwer.process_words(" ".join(reference_words), " ".join(hypothesis_words)).alignments[0]
    last = chunks[-1]
    return last.ref_end_idx - last.ref_start_idx if last.type == "delete" else 0


def block_diagonal(matrices: Sequence[np.ndarray]) -> np.ndarray:
    """Stack (steps_i, frames_i) matrices along the diagonal: (sum steps_i, sum frames_i), zeros elsewhere."""
    result = np.zeros((sum(m.shape[0] for m in matrices), sum(m.shape[1] for m in matrices)), np.float32)
    row = column = 0
    for matrix in matrices:
        result[row : row + matrix.shape[0], column : column + matrix.shape[1]] = matrix
        row, column = row + matrix.shape[0], column + matrix.shape[1]
    return result


def attention_figure(weights, tokens: Sequence[str], title: str | None = None, frame_seconds=None):
    """A heatmap of one utterance's attention: encoder frames across, output tokens down.

    Parameters
    ----------
    weights : numpy.ndarray or torch.Tensor, shape = (num_steps, num_frames)
    tokens : sequence of str, length = num_steps
        The label of each step (e.g. the symbols, then "<eos>"); a space is drawn as "␣".
    title : str, optional
    frame_seconds : float, optional
        Duration of one encoder frame, named in the frame axis label when given.

    Returns
    -------
    matplotlib.figure.Figure
        With an Agg canvas: `figure.savefig(path)` writes a PNG without pyplot or a display, and
        TensorBoard's `add_figure` takes it as it is.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = as_matrix(weights)
    num_steps, num_frames = matrix.shape
    if len(tokens) != num_steps:
        raise ValueError(f"{len(tokens)} token labels for {num_steps} attention steps")
    # One row per token and about 12 pixels per row at 100 dpi, so every label stays legible.
    figure = Figure(
        figsize=(min(max(5.0, 2.0 + 0.05 * num_frames), 30.0), min(max(3.0, 1.5 + 0.13 * num_steps), 40.0))
    )
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.0)
    axes.set_yticks(range(num_steps), [token.replace(" ", "␣") for token in tokens], fontsize=7)
    axes.set_xlabel("encoder frame" + (f" ({1000 * frame_seconds:g} ms each)" if frame_seconds else ""))
    axes.set_ylabel("output token (decoder step)")
    if title:
        # About 11 characters of 9-point text per inch: wrap each line to the figure's width.
        width = max(20, int(11 * figure.get_figwidth()))
        figure.suptitle("\n".join(textwrap.fill(line, width) for line in title.splitlines()), fontsize=9)
    figure.colorbar(image, ax=axes, label="attention weight", fraction=0.03, pad=0.02)
    figure.tight_layout()
    return figure
