"""Transcribe many recordings: find them, cut long ones, batch the pieces by duration, decode, reassemble.

    inputs (files, folders, lhotse manifests) -> Utterance (id, audio)       `collect_utterances`
    -> pieces: the whole recording, or VAD segments when it is long          `plan_pieces`
    -> batches of similar duration, longest first                           `make_batches`
    -> each piece's audio, with a steady mains hum subtracted (`hum`)       `load_batch`
    -> texts, joined per recording in time order, in input order            `transcribe`
       (a piece of digital silence, or too short for a word, is not decoded and leaves no segment)

Only a batch of pieces is held in memory at a time, so an hour-long recording costs the energy
envelope of `asr.segmentation` plus one batch of segments. Batching never changes a result: the
model is exact under padding and the pieces are reassembled by position, not by completion order.
"""

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import lhotse
import numpy as np
import torch
from tqdm import tqdm

from asr.alignment import WordTime, ctc_frame_seconds, word_times
from asr.audio import AudioError, audio_info, find_audio_files, limit_peak, load_audio
from asr.dehum import Hum, HumConfig, remove_mains_hum
from asr.segmentation import (
    Segment,
    SegmentationConfig,
    energy_envelope,
    find_segments,
    is_silent,
    segment_file,
)

MANIFEST_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


# Texts for a padded batch: waves (B, S) float32 and wave_lens (B,), both on the CPU.
class Decoded(NamedTuple):
    """What a `DecodeFunction` returns for one recording or segment."""

    text: str
    log_probability: float  # `asr.decoding.acoustic_log_probability`: summed over the steps
    steps: int  # output tokens + eos
    words: list[WordTime] | None = (
        None  # `asr.alignment.word_times`, from the piece's start; None: not asked or not aligned
    )


DecodeFunction = Callable[[torch.Tensor, torch.Tensor], list[Decoded]]


@dataclass(frozen=True)
class FileAudio:
    """A recording stored as one audio file."""

    path: Path

    @property
    def name(self) -> str:
        return str(self.path)

    def duration(self) -> float:
        return audio_info(self.path).duration

    def load(self, sample_rate: int, segment: Segment | None = None) -> torch.Tensor:
        """Mono float32 (num_samples,) at `sample_rate`: the whole file, or just `segment`."""
        if segment is None:
            return load_audio(self.path, sample_rate)
        return load_audio(self.path, sample_rate, offset=segment.start, duration=segment.duration)

    def segments(self, config: SegmentationConfig) -> list[Segment]:
        return segment_file(self.path, config)


@dataclass(frozen=True)
class CutAudio:
    """A recording, or part of one, described by a lhotse cut in a manifest."""

    cut: lhotse.cut.Cut
    manifest: Path

    @property
    def name(self) -> str:
        return f"{self.manifest}:{self.cut.id}"

    def duration(self) -> float:
        return self.cut.duration

    def load(self, sample_rate: int, segment: Segment | None = None) -> torch.Tensor:
        """Mono float32 (num_samples,) at `sample_rate`: the whole cut, or just `segment` of it."""
        piece = (
            self.cut
            if segment is None
            else self.cut.truncate(offset=segment.start, duration=segment.duration)
        )
        samples = self._samples(piece.resample(sample_rate) if piece.sampling_rate != sample_rate else piece)
        return torch.from_numpy(limit_peak(samples))  # as load_audio does: float audio can exceed 1

    def segments(self, config: SegmentationConfig) -> list[Segment]:
        envelope = energy_envelope(
            self._blocks(config.block_seconds), self.cut.sampling_rate, config.frame_seconds
        )
        return find_segments(envelope, config)

    def _blocks(self, block_seconds: float) -> Iterator[np.ndarray]:
        num_blocks = int(np.ceil(self.cut.duration / block_seconds))
        for index in range(num_blocks):
            offset = index * block_seconds
            duration = min(block_seconds, self.cut.duration - offset)
            yield self._samples(self.cut.truncate(offset=offset, duration=duration))

    def _samples(self, cut) -> np.ndarray:
        try:
            audio = cut.load_audio()  # (channels, samples)
        except Exception as error:  # noqa: BLE001 -- lhotse raises many types for unreadable audio
            raise AudioError(f"{self.name}: cannot load audio ({error})") from error
        # (channels, samples) -> (samples,): average the channels, as load_audio does
        samples = np.asarray(audio, dtype=np.float32)
        samples = samples.mean(axis=0) if samples.ndim == 2 else samples
        if samples.size == 0:
            raise AudioError(f"{self.name}: no audio samples")
        if not np.isfinite(samples).all():
            raise AudioError(f"{self.name}: {int((~np.isfinite(samples)).sum())} samples are NaN or infinite")
        return np.ascontiguousarray(samples)


@dataclass
class Utterance:
    """One recording to transcribe, and what became of it."""

    id: str
    audio: FileAudio | CutAudio
    duration: float = 0.0  # seconds, known after `plan_pieces`
    segments: list[Segment] = field(default_factory=list)  # the decoded pieces, in time order
    texts: list[str] = field(default_factory=list)  # one per segment
    scores: list[tuple[float, int]] = field(default_factory=list)  # per segment: (log-probability, steps)
    words: list[list[WordTime] | None] = field(default_factory=list)  # per segment, in recording time
    # indices of segments found silent (`is_silent`): not decoded, and dropped from `segments` at the end
    silent: set[int] = field(default_factory=set)
    hum: Hum | None = None  # the mains hum removed from it (the first segment's that had one)
    error: str | None = None  # why it failed; None while it has not
    finished: bool = False  # every segment decoded (or found silent): its text is final

    @property
    def text(self) -> str:
        return " ".join(text for text in self.texts if text)

    @property
    def avg_logprob(self) -> float | None:
        """The acoustic log-probability per step over all decoded segments (Whisper's avg_logprob);
        None when nothing was decoded (no speech)."""
        from asr.decoding import per_step  # the search, imported where it is used

        return per_step(self.scores)


@dataclass(frozen=True)
class Piece:
    """One segment of one utterance: the unit that is batched and decoded."""

    utterance: int  # index into the utterance list
    index: int  # index into that utterance's segments
    segment: Segment | None  # None: the whole recording, read without seeking
    duration: float


def collect_utterances(inputs: Sequence[str], on_error: Callable[[str], None]) -> list[Utterance]:
    """Expand audio files, folders (searched recursively) and lhotse manifests into utterances.

    Ids are file names without the extension, or cut ids for manifests; `unique_ids` then resolves
    clashes. An input that does not exist or a manifest that cannot be read is reported through
    `on_error` and skipped.
    """
    utterances: list[Utterance] = []
    for item in inputs:
        path = Path(item)
        try:
            if path.is_file() and path.name.lower().endswith(MANIFEST_SUFFIXES):
                utterances.extend(Utterance(cut.id, CutAudio(cut, path)) for cut in _manifest_cuts(path))
            else:
                utterances.extend(Utterance(file.stem, FileAudio(file)) for file in find_audio_files([path]))
        except AudioError as error:
            on_error(str(error))
    return utterances


def unique_ids(utterances: list[Utterance]) -> list[str]:
    """Ids that are distinct and free of whitespace, the same as the utterances' where possible.

    Whitespace becomes "_" (transcript files separate the id from the text at the first space).
    When several utterances share an id, each of them is named instead by its path relative to
    the folder their paths share, without the extension (cuts: manifest path without suffix,
    then "/" and the cut id); with the extension if that is still ambiguous; and an input given
    twice gets "#2", "#3", ... on its later occurrences.

    Returns
    -------
    list of str, length = len(utterances)
    """
    ids = ["_".join(utterance.id.split()) or "_" for utterance in utterances]
    groups: dict[str, list[int]] = {}
    for index, utterance_id in enumerate(ids):
        groups.setdefault(utterance_id, []).append(index)
    for indices in groups.values():
        if len(indices) > 1:
            for index, name in zip(indices, _distinct_names([utterances[i] for i in indices]), strict=True):
                ids[index] = name
    # Renamed ids can still meet another input's id (or each other): number the later ones.
    seen: set[str] = set()
    for index, utterance_id in enumerate(ids):
        candidate, number = utterance_id, 1
        while candidate in seen:
            number += 1
            candidate = f"{utterance_id}#{number}"
        ids[index] = candidate
        seen.add(candidate)
    return ids


def plan_pieces(
    utterances: list[Utterance], config: SegmentationConfig, on_error: Callable[[str], None]
) -> list[Piece]:
    """Measure every utterance and cut the long ones into segments.

    An utterance no longer than `config.max_segment_seconds` is one piece, decoded whole (not
    trimmed); a longer one is segmented by `asr.segmentation`, reading it in blocks. A recording
    that cannot be read gets `error` set, is reported through `on_error`, and has no pieces.
    """
    pieces = []
    for utterance_index, utterance in enumerate(utterances):
        try:
            utterance.duration = utterance.audio.duration()
            if utterance.duration <= config.max_segment_seconds:
                utterance.segments = [Segment(0.0, utterance.duration)]
                pieces.append(Piece(utterance_index, 0, None, utterance.duration))
                continue
            utterance.segments = utterance.audio.segments(config)
        except AudioError as error:
            utterance.error = str(error)
            on_error(utterance.error)
            continue
        for index, segment in enumerate(utterance.segments):
            pieces.append(Piece(utterance_index, index, segment, segment.duration))
    return pieces


def make_batches(pieces: list[Piece], batch_size: int, max_batch_seconds: float) -> list[list[Piece]]:
    """Group pieces of similar duration, longest first.

    A batch holds at most `batch_size` pieces, and at most `max_batch_seconds` of padded audio
    (its size times its longest piece), but always at least one piece. Longest first means a batch
    that does not fit on the device fails at the start, not after an hour.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # Ties are broken by position, so the batches depend only on the inputs.
    ordered = sorted(pieces, key=lambda piece: (-piece.duration, piece.utterance, piece.index))
    batches: list[list[Piece]] = []
    for piece in ordered:
        if batches:
            batch = batches[-1]
            # The batch's first piece is its longest, so padded seconds = size * that duration.
            if len(batch) < batch_size and (len(batch) + 1) * batch[0].duration <= max_batch_seconds:
                batch.append(piece)
                continue
        batches.append([piece])
    return batches


@dataclass(frozen=True)
class Report:
    """What a run did, for the summary line on stderr."""

    num_files: int  # utterances transcribed
    num_failed: int
    audio_seconds: float  # duration of the transcribed recordings
    wall_seconds: float  # from planning to the last batch, model loading excluded

    @property
    def real_time_factor(self) -> float:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds > 0 else 0.0

    def summary(self) -> str:
        files = f"{self.num_files} file{'' if self.num_files == 1 else 's'}"
        failed = f"; {self.num_failed} failed" if self.num_failed else ""
        return (
            f"{files}, {self.audio_seconds:.1f} s of audio in {self.wall_seconds:.1f} s "
            f"(real-time factor {self.real_time_factor:.3f}){failed}"
        )


def transcribe(
    utterances: list[Utterance],
    decode_texts: DecodeFunction,
    sample_rate: int,
    *,
    segmentation: SegmentationConfig,
    batch_size: int,
    max_batch_seconds: float,
    on_error: Callable[[str], None],
    hum: HumConfig | None = None,
    progress: bool | None = None,
) -> Report:
    """Transcribe `utterances` in place: each gets `texts` per segment, or `error`.

    Parameters
    ----------
    utterances : list of Utterance
        With unique ids; their order is the output order.
    decode_texts : DecodeFunction
        Texts of a padded batch, e.g. `model_decoder(...)`.
    sample_rate : int
        The model's input rate; audio is resampled to it.
    segmentation : SegmentationConfig
        Its `max_segment_seconds` decides which recordings are segmented.
    batch_size, max_batch_seconds
        See `make_batches`.
    on_error : callable
        Called with a one-line message for every recording that fails.
    hum : HumConfig or None
        Remove mains hum from each piece before decoding (`asr.dehum`); None: decode the audio as it is.
    progress : bool or None
        Show a progress bar on stderr; None shows it when stderr is a terminal.

    Returns
    -------
    Report
    """
    start = time.perf_counter()
    pieces = plan_pieces(utterances, segmentation, on_error)
    remaining = Counter(piece.utterance for piece in pieces)  # pieces still to decode, per utterance
    for index, utterance in enumerate(utterances):
        utterance.texts = [""] * len(utterance.segments)
        utterance.scores = [(0.0, 0)] * len(utterance.segments)  # a silent segment has no steps
        utterance.words = [[] for _ in utterance.segments]
        utterance.finished = utterance.error is None and not remaining[index]  # no speech: nothing to do
    # tqdm's disable=None means "disable unless the stream is a terminal".
    disable = None if progress is None else not progress
    total_seconds = sum(piece.duration for piece in pieces)
    with tqdm(total=total_seconds, unit="s", desc="audio", file=sys.stderr, disable=disable) as bar:
        for batch in make_batches(pieces, batch_size, max_batch_seconds):
            _decode_batch(batch, utterances, decode_texts, sample_rate, on_error, segmentation, hum)
            for piece in batch:  # an interrupted run can still write the finished ones
                remaining[piece.utterance] -= 1
                utterances[piece.utterance].finished = remaining[piece.utterance] == 0
            bar.update(sum(piece.duration for piece in batch))
    for utterance in utterances:  # a silent recording has no speech, so no segment (as a long one's pauses)
        if utterance.silent:
            kept = [i for i in range(len(utterance.segments)) if i not in utterance.silent]
            utterance.segments = [utterance.segments[i] for i in kept]
            utterance.texts = [utterance.texts[i] for i in kept]
            utterance.scores = [utterance.scores[i] for i in kept]
            utterance.words = [utterance.words[i] for i in kept]
    done = [utterance for utterance in utterances if utterance.error is None]
    return Report(
        num_files=len(done),
        num_failed=len(utterances) - len(done),
        audio_seconds=sum(utterance.duration for utterance in done),
        wall_seconds=time.perf_counter() - start,
    )


def model_decoder(
    model, tokenizer, options, language_model=None, device="cpu", with_word_times: bool = False
) -> DecodeFunction:
    """A `DecodeFunction` that runs the search on `device`, detokenises and scores; `with_word_times`:
    and aligns each result's words to the CTC frames (`asr.alignment`; character and sentencepiece
    models, and not where a word LM spelled the words)."""
    # the search, imported where it is used
    from asr.decoding import acoustic_log_probability, hypothesis_text, search

    frame_seconds = ctc_frame_seconds(model)

    def decode_texts(waves: torch.Tensor, wave_lens: torch.Tensor) -> list[Decoded]:
        with torch.inference_mode():
            encoded = model.encode(waves.to(device), wave_lens.to(device))
            hypotheses = [nbest[0] for nbest in search(model, encoded, options, language_model)]
            log_probs = model.ctc_log_probs(encoded) if with_word_times else None
        results = []
        for row, h in enumerate(hypotheses):
            words = None
            if log_probs is not None and h.text is None:  # h.text: spelled by a word LM
                frames = int(encoded.ctc_lengths[row])
                words = word_times(log_probs[row, :frames], h.tokens, tokenizer, frame_seconds)
            results.append(
                Decoded(
                    hypothesis_text(h, tokenizer), *acoustic_log_probability(h, options.ctc_weight), words
                )
            )
        return results

    return decode_texts


def load_batch(
    batch: list[Piece],
    utterances: list[Utterance],
    sample_rate: int,
    on_error: Callable[[str], None],
    hum: HumConfig | None = None,
) -> tuple[list[Piece], torch.Tensor, torch.Tensor]:
    """The audio of a batch's pieces: (loaded pieces, waves (B, S) zero-padded, wave_lens (B,)).

    A piece that cannot be read sets its utterance's `error` (reported through `on_error`) and is
    left out, as are the later pieces of that utterance; waves is (0, 0) when nothing was read.
    With `hum`, each piece's mains hum is removed (`asr.dehum.remove_mains_hum`) and the utterance's
    `hum` records what was found.
    """
    loaded, waves = [], []
    for piece in batch:
        utterance = utterances[piece.utterance]
        if utterance.error is not None:
            continue  # an earlier segment of this recording failed; its text is lost anyway
        try:
            wave = utterance.audio.load(sample_rate, piece.segment)
        except AudioError as error:
            utterance.error = str(error)
            on_error(utterance.error)
            continue
        if hum is not None:
            wave, found = remove_mains_hum(wave, sample_rate, hum)
            utterance.hum = utterance.hum or found
        waves.append(wave)
        loaded.append(piece)
    if not loaded:
        return [], torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    wave_lens = torch.tensor([wave.numel() for wave in waves])
    return loaded, torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), wave_lens


def _decode_batch(
    batch: list[Piece],
    utterances: list[Utterance],
    decode_texts: DecodeFunction,
    sample_rate: int,
    on_error: Callable[[str], None],
    segmentation: SegmentationConfig,
    hum: HumConfig | None,
) -> None:
    """Load the batch's audio, decode it, and file each text under its utterance and segment.

    Pieces in which no frame reaches `segmentation.silence_db`, or shorter than
    `segmentation.min_speech_seconds`, are not decoded (`is_silent`).
    """
    loaded, padded, wave_lens = load_batch(batch, utterances, sample_rate, on_error, hum)
    heard = []
    for row, (piece, length) in enumerate(zip(loaded, wave_lens.tolist(), strict=True)):
        if is_silent(padded[row, :length].numpy(), sample_rate, segmentation):
            utterances[piece.utterance].silent.add(piece.index)
        else:
            heard.append(row)
    if not heard:
        return
    if len(heard) < len(loaded):
        rows = torch.tensor(heard)
        wave_lens = wave_lens.index_select(0, rows)
        padded = padded.index_select(0, rows)[:, : int(wave_lens.max())]
    for row, decoded in zip(heard, decode_texts(padded, wave_lens), strict=True):
        piece = loaded[row]
        utterances[piece.utterance].texts[piece.index] = decoded.text
        utterances[piece.utterance].scores[piece.index] = (decoded.log_probability, decoded.steps)
        offset = piece.segment.start if piece.segment is not None else 0.0
        utterances[piece.utterance].words[piece.index] = (
            None
            if decoded.words is None
            else [WordTime(w.word, w.start + offset, w.end + offset) for w in decoded.words]
        )


def _manifest_cuts(path: Path) -> list:
    try:
        manifest = lhotse.load_manifest(path)
    except Exception as error:  # noqa: BLE001 -- lhotse raises many types for a bad manifest
        raise AudioError(f"{path}: not a readable lhotse manifest ({error})") from error
    if isinstance(manifest, lhotse.RecordingSet):
        return [recording.to_cut() for recording in manifest]
    if isinstance(manifest, lhotse.CutSet):
        return list(manifest)
    raise AudioError(f"{path}: a {type(manifest).__name__} has no audio; give a CutSet or a RecordingSet")


def _distinct_names(group: list[Utterance]) -> list[str]:
    """Names for utterances that share an id: relative paths, without then with the extension.

    An input given more than once keeps one name for all its occurrences (the caller numbers them).
    """
    num_sources = len({_source_path(utterance, keep_suffix=True) for utterance in group})
    if num_sources == 1:
        return ["_".join(utterance.id.split()) or "_" for utterance in group]
    for keep_suffix in (False, True):
        paths = [_source_path(utterance, keep_suffix) for utterance in group]
        common = os.path.commonpath(paths)
        names = ["_".join(Path(os.path.relpath(path, common)).as_posix().split()) for path in paths]
        if len(set(names)) == num_sources:
            return names
    return names  # unreachable: paths with their extensions differ whenever the sources do


def _source_path(utterance: Utterance, keep_suffix: bool) -> str:
    audio = utterance.audio
    if isinstance(audio, CutAudio):
        manifest = audio.manifest.resolve()
        stem = manifest.name[: -len(next(s for s in MANIFEST_SUFFIXES if manifest.name.lower().endswith(s)))]
        return os.path.join(manifest.parent, stem, audio.cut.id)
    path = audio.path.resolve()
    return str(path if keep_suffix else path.with_suffix(""))
