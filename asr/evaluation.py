"""Evaluate a model on a labelled set: decode, score, bucket by length, diagnose attention, report.

    inputs -> Utterance (id, audio) + reference text          `asr.transcription`, `asr.cli.evaluate`
    -> best hypothesis with its attention weights             `decode_dataset`
    -> per-utterance errors and attention diagnostics         `score_utterances`
    -> totals and buckets by duration and by reference words  `build_summary`
    -> plots of attention and of WER against length           `write_plots`
    -> summary.json, report.md, errors.txt                    `asr.cli.evaluate`

Long recordings are decoded whole unless a segment length is given: the point of an evaluation
is to see how attention copes with long inputs. When they are segmented, the attention diagnostics
are those of each segment's search, combined, and the plotted matrix is the block-diagonal matrix
of the segments' matrices (steps and frames concatenated).
"""

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asr.decoding import (
    DecodingOptions,
    Hypothesis,
    acoustic_log_probability,
    decode,
    hypothesis_text,
    per_step,
)
from asr.dehum import HumConfig
from asr.diagnostics import (
    DEFINITIONS,
    STUCK_STEPS,
    attention_diagnostics,
    attention_figure,
    block_diagonal,
    summarise,
    text_flags,
)
from asr.files import atomic_write
from asr.metrics import ErrorCounts, char_errors, utterance_word_errors
from asr.segmentation import SegmentationConfig
from asr.transcription import CutAudio, Report, Utterance, load_batch, make_batches, plan_pieces

EOS_LABEL = "<eos>"
DEFAULT_NUM_BUCKETS = 5
# Up to this many distinct word counts, every count is its own bucket (digits: 1 to 7 words).
MAX_EXACT_WORD_BUCKETS = 8


@dataclass
class UtteranceResult:
    """One evaluated utterance."""

    id: str
    reference: str
    hypothesis: str
    duration: float  # seconds
    attention: np.ndarray  # (num_steps, num_frames) float32, eos steps included
    tokens: list[str]  # num_steps labels: the symbols of each segment, then EOS_LABEL
    ended_by: list[str]  # per segment: "eos" or "max_length"
    word_errors: ErrorCounts
    char_errors: ErrorCounts
    diagnostics: dict[str, float]
    avg_logprob: float  # `asr.decoding.acoustic_log_probability` per step, over the segments

    @property
    def num_words(self) -> int:
        return self.word_errors.num_reference


@dataclass(frozen=True)
class Bucket:
    """Utterances with `low <= value < high` (`<= high` for the last bucket)."""

    label: str
    low: float
    high: float
    members: tuple[int, ...]  # indices into the result list


def find_references(utterances: list[Utterance], transcripts: dict[str, str]) -> dict[str, str]:
    """Reference text per utterance id: from `transcripts`, else the cut's supervisions (joined in
    order). Utterances with neither are left out."""
    references = {}
    for utterance in utterances:
        supervisions = utterance.audio.cut.supervisions if isinstance(utterance.audio, CutAudio) else []
        if utterance.id in transcripts:
            references[utterance.id] = transcripts[utterance.id]
        elif supervisions:
            references[utterance.id] = " ".join(s.text for s in supervisions if s.text)
    return references


def attention_frame_seconds(model) -> float:
    """Seconds per attention frame: the feature hop times the encoder's time reduction (8x: 80 ms)."""
    return model.config.features.frame_shift_ms / 1000 * model.encoder.reduction


def decode_dataset(
    utterances: list[Utterance],
    model,
    options: DecodingOptions,
    *,
    segmentation: SegmentationConfig,
    batch_size: int,
    max_batch_seconds: float,
    device: torch.device | str = "cpu",
    on_error: Callable[[str], None],
    progress: bool | None = None,
    language_model=None,
    hum: HumConfig | None = None,
) -> tuple[list[list[Hypothesis | None]], Report]:
    """Decode every utterance (in duration-sorted batches) and keep the best hypotheses.

    `language_model` (with `options.lm_weight`) is fused into the search, as in asr-transcribe;
    with `hum`, mains hum is removed from each piece first (`asr.dehum`), as asr-transcribe does.

    Returns
    -------
    hypotheses : list of list of Hypothesis, length = len(utterances)
        Per utterance, one hypothesis per segment in time order, attention on the CPU; an utterance
        that failed (its `error` is set) may hold None.
    report : Report
        Counts and timing, for the real-time factor.
    """
    start = time.perf_counter()
    pieces = plan_pieces(utterances, segmentation, on_error)
    hypotheses: list[list[Hypothesis | None]] = [[None] * len(utterance.segments) for utterance in utterances]
    sample_rate = model.config.features.sample_rate
    disable = None if progress is None else not progress  # None: only on a terminal
    with tqdm(total=sum(p.duration for p in pieces), unit="s", file=sys.stderr, disable=disable) as bar:
        for batch in make_batches(pieces, batch_size, max_batch_seconds):
            loaded, waves, wave_lens = load_batch(batch, utterances, sample_rate, on_error, hum)
            if loaded:
                found = decode(model, waves.to(device), wave_lens.to(device), options, lm=language_model)
                for piece, hypothesis in zip(loaded, found, strict=True):
                    hypothesis.attention = hypothesis.attention.float().cpu()
                    hypotheses[piece.utterance][piece.index] = hypothesis
            bar.update(sum(piece.duration for piece in batch))
    done = [utterance for utterance in utterances if utterance.error is None]
    report = Report(
        num_files=len(done),
        num_failed=len(utterances) - len(done),
        audio_seconds=sum(utterance.duration for utterance in done),
        wall_seconds=time.perf_counter() - start,
    )
    return hypotheses, report


def score_utterances(
    utterances: list[Utterance],
    hypotheses: list[list[Hypothesis | None]],
    references: dict[str, str],
    tokenizer,
    stuck_steps: int,
    ctc_weight: float,
) -> list[UtteranceResult]:
    """Texts, error counts, attention diagnostics and scores of every utterance that was decoded
    (`ctc_weight`: the search's, for `acoustic_log_probability`)."""
    decoded = [
        (utterance, found)
        for utterance, found in zip(utterances, hypotheses, strict=True)
        if utterance.error is None and found and all(hypothesis is not None for hypothesis in found)
    ]
    texts = [" ".join(t for t in (hypothesis_text(h, tokenizer) for h in found) if t) for _, found in decoded]
    reference_texts = [references[utterance.id] for utterance, _ in decoded]
    word_counts = utterance_word_errors(reference_texts, texts)
    results = []
    for (utterance, found), text, reference, counts in zip(
        decoded, texts, reference_texts, word_counts, strict=True
    ):
        attention = block_diagonal([hypothesis.attention.numpy() for hypothesis in found])
        tokens = [label for h in found for label in [*(tokenizer.symbols[i] for i in h.tokens), EOS_LABEL]]
        results.append(
            UtteranceResult(
                id=utterance.id,
                reference=reference,
                hypothesis=text,
                duration=utterance.duration,
                attention=attention,
                tokens=tokens,
                ended_by=[hypothesis.ended_by for hypothesis in found],
                word_errors=counts,
                char_errors=char_errors([reference], [text]),
                diagnostics=utterance_diagnostics([h.attention for h in found], text, reference, stuck_steps),
                avg_logprob=per_step([acoustic_log_probability(h, ctc_weight) for h in found]),
            )
        )
    return results


def utterance_diagnostics(
    segments: Sequence[torch.Tensor], text: str, reference: str, stuck_steps: int = STUCK_STEPS
) -> dict[str, float]:
    """Attention diagnostics of each segment's own matrix, combined over an utterance's segments:
    means weighted by steps, the longest run and the stuck flag of any segment; text flags on the
    whole text. Stitching the matrices instead would make diagonality look better than it is."""
    per_segment = [attention_diagnostics(weights, stuck_steps=stuck_steps) for weights in segments]
    steps = [len(weights) for weights in segments]
    values = {
        key: float(np.average([values[key] for values in per_segment], weights=steps))
        for key in per_segment[0]
    }
    for key in ("longest_peak_run", "stuck"):
        values[key] = max(segment[key] for segment in per_segment)
    return {**values, **text_flags(text, reference)}


def bucket_edges(
    values: Sequence[float], num_buckets: int = DEFAULT_NUM_BUCKETS, integer: bool = False
) -> list[float]:
    """Edges low_0 < low_1 < ... < high of buckets with about equal numbers of utterances.

    Integer values with at most MAX_EXACT_WORD_BUCKETS distinct values get one bucket each;
    otherwise the inner edges are quantiles, rounded (to whole numbers, or to 0.1 s) for reading.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return []
    distinct = np.unique(values)
    if integer and distinct.size <= MAX_EXACT_WORD_BUCKETS:
        return [*distinct.tolist(), float(distinct[-1]) + 1]
    inner = np.quantile(values, np.linspace(0, 1, num_buckets + 1)[1:-1])
    inner = np.round(inner) if integer else np.round(inner, 1)
    low = float(distinct[0]) if integer else math.floor(distinct[0] * 10) / 10
    high = float(distinct[-1]) + 1 if integer else math.ceil(distinct[-1] * 10) / 10
    return sorted({low, high, *(float(edge) for edge in inner if low < edge < high)})


def make_buckets(values: Sequence[float], edges: Sequence[float], integer: bool = False) -> list[Bucket]:
    """The non-empty buckets between consecutive `edges` (values outside them join the end buckets)."""
    values = np.asarray(values, dtype=np.float64)
    # searchsorted on the inner edges: bucket k holds edges[k] <= value < edges[k + 1].
    index = np.searchsorted(np.asarray(edges[1:-1]), values, side="right")
    buckets = []
    for number, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        members = tuple(np.flatnonzero(index == number).tolist())
        if not members:
            continue
        if integer:
            label = f"{low:g}" if high - low == 1 else f"{low:g}-{high - 1:g}"
        else:
            label = f"{low:g}-{high:g} s"
        buckets.append(Bucket(label, float(low), float(high), members))
    return buckets


def counts_json(counts: ErrorCounts) -> dict:
    """ErrorCounts as plain data, with the rate in percent as `asr-wer` prints it."""
    return {
        "percent": round(100 * counts.error_rate, 4),
        "errors": counts.num_errors,
        "num_reference": counts.num_reference,
        "substitutions": counts.substitutions,
        "deletions": counts.deletions,
        "insertions": counts.insertions,
    }


def summarise_group(results: Sequence[UtteranceResult]) -> dict:
    """WER, CER, sentence error rate, sizes and mean diagnostics of a group of utterances."""
    words = sum((result.word_errors for result in results), ErrorCounts())
    characters = sum((result.char_errors for result in results), ErrorCounts())
    return {
        "num_utterances": len(results),
        "num_words": words.num_reference,
        "audio_seconds": round(sum(result.duration for result in results), 3),
        "wer": counts_json(words),
        "cer": counts_json(characters),
        "sentence_error_rate": round(100 * words.sentence_error_rate, 4),
        "diagnostics": {
            key: round(value, 4) for key, value in summarise([r.diagnostics for r in results]).items()
        },
    }


def build_summary(
    results: Sequence[UtteranceResult],
    report: Report,
    settings: dict,
    duration_edges: Sequence[float] | None = None,
    word_edges: Sequence[float] | None = None,
) -> dict:
    """The content of summary.json: settings, totals, timing, buckets and the definitions used."""
    return {
        "settings": settings,
        **summarise_group(results),
        "num_failed": report.num_failed,
        "wall_seconds": round(report.wall_seconds, 3),
        "real_time_factor": round(report.real_time_factor, 4),
        "buckets": summarise_buckets(results, duration_edges, word_edges),
        "confidence": summarise_confidence(results),
        "definitions": DEFINITIONS,
    }


def summarise_confidence(results: Sequence[UtteranceResult], groups: int = 4) -> dict:
    """How well `avg_logprob` tells the utterances with errors: the chance that one with errors
    scores below one without (the ROC AUC; ties count half; None unless both kinds are present),
    and the utterances in `groups` equal shares by avg_logprob, lowest first, each summarised."""
    scores = np.array([result.avg_logprob for result in results], dtype=np.float64)
    wrong = np.array([result.word_errors.num_errors > 0 for result in results], dtype=bool)
    auc = None
    if wrong.any() and not wrong.all():
        below = scores[wrong][:, None] < scores[~wrong][None, :]
        ties = scores[wrong][:, None] == scores[~wrong][None, :]
        auc = round(float(np.mean(below + 0.5 * ties)), 4)
    shares = [share for share in np.array_split(np.argsort(scores, kind="stable"), groups) if share.size]
    return {
        "auc_errors": auc,
        "groups": [
            {
                "low": round(float(scores[share].min()), 4),
                "high": round(float(scores[share].max()), 4),
                "utterances": [results[i].id for i in share],
                **summarise_group([results[i] for i in share]),
            }
            for share in shares
        ],
    }


def summarise_buckets(
    results: Sequence[UtteranceResult],
    duration_edges: Sequence[float] | None = None,
    word_edges: Sequence[float] | None = None,
) -> dict[str, list[dict]]:
    """Per-bucket summaries by duration and by reference words; edges default to `bucket_edges`.

    Given edges are inner edges: the data's smallest and largest values close the outer buckets.
    """
    layout = {}
    for name, values, edges, integer in (
        ("duration", [r.duration for r in results], duration_edges, False),
        ("words", [r.num_words for r in results], word_edges, True),
    ):
        if edges is None:
            edges = bucket_edges(values, integer=integer)
        elif values:
            low, high = min(values), max(values) + (1 if integer else 0)
            edges = sorted({low, high, *(edge for edge in edges if low < edge < high)})
        buckets = make_buckets(values, edges, integer) if values else []
        layout[name] = [
            {
                "label": bucket.label,
                "low": bucket.low,
                "high": bucket.high,
                "utterances": [results[i].id for i in bucket.members],
                **summarise_group([results[i] for i in bucket.members]),
            }
            for bucket in buckets
        ]
    return layout


def worst_first(results: Sequence[UtteranceResult]) -> list[UtteranceResult]:
    """Most word errors first, then highest WER; ties keep input order."""
    return sorted(results, key=lambda r: (-r.word_errors.num_errors, -r.word_errors.error_rate))


def select_for_plots(results: Sequence[UtteranceResult]) -> dict[str, UtteranceResult]:
    """The worst (first of `worst_first`), the median (by WER, then duration) and the longest."""
    by_rate = sorted(results, key=lambda r: (r.word_errors.error_rate, r.duration))
    return {
        "worst": worst_first(results)[0],
        "median": by_rate[(len(by_rate) - 1) // 2],
        "longest": max(results, key=lambda r: r.duration),
    }


def write_plots(
    out_dir: Path, results: Sequence[UtteranceResult], summary: dict, frame_seconds: float | None
) -> dict[str, dict]:
    """Attention heatmaps of the worst, median and longest utterances, and WER against length."""
    plots = {}
    for kind, result in select_for_plots(results).items():
        counts = result.word_errors
        title = (
            f"{kind}: {result.id} ({result.duration:.1f} s, {counts.num_errors} word errors in "
            f"{counts.num_reference} words)\nREF: {_shorten(result.reference)}\n"
            f"HYP: {_shorten(result.hypothesis)}"
        )
        figure = attention_figure(result.attention, result.tokens, title, frame_seconds)
        _save_png(figure, out_dir / f"attention_{kind}.png")
        plots[kind] = {"file": f"attention_{kind}.png", "utterance": result.id}
    _save_png(length_figure(results, summary["buckets"]), out_dir / "wer_by_length.png")
    plots["wer_by_length"] = {"file": "wer_by_length.png"}
    return plots


def _save_png(figure, path: Path) -> None:
    with atomic_write(path, binary=True) as file:
        figure.savefig(file, format="png", dpi=100)


def length_figure(results: Sequence[UtteranceResult], buckets: dict[str, list[dict]]):
    """WER against duration and against reference words: utterances as dots, buckets as a line.

    `buckets` is `summarise_buckets(results)`; each bucket is drawn at the mean length of its members.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(figure)
    rates = [100 * result.word_errors.error_rate for result in results]
    for axes, name, unit in zip(
        figure.subplots(1, 2), ("duration", "words"), ("duration (s)", "reference words"), strict=True
    ):
        length = {r.id: r.duration if name == "duration" else r.num_words for r in results}
        axes.scatter(list(length.values()), rates, s=8, alpha=0.3, color="grey", label="utterances")
        centres = [np.mean([length[i] for i in bucket["utterances"]]) for bucket in buckets[name]]
        bucket_rates = [bucket["wer"]["percent"] for bucket in buckets[name]]
        axes.plot(centres, bucket_rates, "o-", label="bucket WER")
        for centre, rate, bucket in zip(centres, bucket_rates, buckets[name], strict=True):
            label = f"n={bucket['num_utterances']}"
            axes.annotate(
                label, (centre, rate), xytext=(0, 6), textcoords="offset points", fontsize=7, ha="center"
            )
        axes.set(xlabel=unit, ylabel="WER (%)", title=f"WER by {unit}")
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
