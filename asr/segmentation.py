"""Cut long recordings into pieces a LAS model can decode, at pauses found by an energy detector.

Attention decoders loop or stop early on audio longer than what they were trained on
(espnet#1297, speechbrain#565), so `asr-transcribe` splits recordings longer than the longest
training utterance into segments no longer than that, preferably in the pauses between speech.

The detector reads the recording block by block and keeps only one number per 10 ms frame (a
one-hour file costs 360,000 floats, not 230 MB of samples), then:

1. Frame log-energy in dB relative to full scale, over non-overlapping frames.
2. A per-recording adaptive threshold. The noise floor is a low percentile of the frame
   energies and the speech level a high one; a frame is speech when it is louder than the floor
   by `threshold_db`, or by half the floor-to-speech range when that is smaller (so recordings
   with little dynamic range, such as continuous speech or stationary noise, still find their
   quieter stretches). Frames below `silence_db` are silence whatever the floor, so digital
   silence never counts as speech.
3. Hangover smoothing: every speech frame also marks `hangover_seconds` on both sides as speech,
   which keeps soft onsets and word endings and bridges pauses shorter than twice that.
4. Speech regions are packed into segments: the next region joins the current segment when the
   merged span stays within `max_segment_seconds` and the pause between them is at most
   `max_pause_seconds`; otherwise the segment ends in that pause. A region longer than the maximum
   is cut at the lowest-energy point of the last part of the allowed span (the window that starts
   at `min_cut_fraction` of the maximum), so no segment ever exceeds the maximum.

Stretches with no speech at all belong to no segment. Recordings no longer than the maximum are not
segmented here: the transcriber decodes them whole, unless no frame of theirs reaches `silence_db`
(`is_silent`), which leaves them without text or segments.
"""

import dataclasses
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from asr.audio import AudioError, audio_info, load_audio

# Mean squares are floored here before the log: -100 dBFS, below 16-bit quantisation noise.
_POWER_FLOOR = 1e-10


@dataclass(frozen=True)
class SegmentationConfig:
    max_segment_seconds: float = 20.0  # no segment is longer; use the longest training utterance
    frame_seconds: float = 0.01  # energy frame length (frames do not overlap)
    noise_percentile: float = 10.0  # this percentile of frame energies is the noise floor
    speech_percentile: float = 90.0  # ... and this one the speech level
    threshold_db: float = 12.0  # speech is at least this much louder than the floor (or half the range)
    silence_db: float = -80.0  # frames quieter than this (dBFS) are never speech
    min_speech_seconds: float = 0.05  # a recording shorter than this holds no word (is_silent)
    hangover_seconds: float = 0.2  # speech extends this far on both sides of every speech frame
    max_pause_seconds: float = 2.0  # a longer pause always ends a segment (and is left out)
    min_cut_fraction: float = 0.5  # a forced cut falls between this fraction of the maximum and the maximum
    cut_smoothing_seconds: float = 0.05  # energy is averaged over this span before choosing a forced cut
    block_seconds: float = 30.0  # audio read at once while computing the energy envelope

    def __post_init__(self):
        if self.max_segment_seconds <= 0:
            raise ValueError(f"max_segment_seconds must be positive, got {self.max_segment_seconds}")
        if not 0 < self.frame_seconds <= self.max_segment_seconds / 4:
            raise ValueError(
                f"frame_seconds must be in (0, max_segment_seconds / 4], got {self.frame_seconds}"
            )
        if not 0 < self.min_cut_fraction < 1:
            raise ValueError(f"min_cut_fraction must be in (0, 1), got {self.min_cut_fraction}")


@dataclass(frozen=True)
class Segment:
    """A stretch of a recording, in seconds from its start."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Envelope:
    """The frame energies of a whole recording."""

    energies: np.ndarray  # shape = (num_frames,), float32, dB relative to full scale
    frame_seconds: float  # exact frame length: a whole number of samples / sample rate
    duration: float  # seconds of audio; the last frame may be shorter than `frame_seconds`


def energy_envelope(blocks: Iterable[np.ndarray], sample_rate: int, frame_seconds: float) -> Envelope:
    """Frame log-energies of audio that arrives in blocks of any length.

    Parameters
    ----------
    blocks : iterable of np.ndarray, each shape = (block_samples,)
        Consecutive mono blocks of one recording; only one is held at a time.
    sample_rate : int
        Samples per second of the blocks.
    frame_seconds : float
        Frame length, rounded to a whole number of samples.

    Returns
    -------
    Envelope
        One energy per frame; a final partial frame gets the energy of the samples it has.
    """
    frame_length = max(round(frame_seconds * sample_rate), 1)
    chunks: list[np.ndarray] = []
    carry = np.zeros(0, dtype=np.float32)  # samples that did not fill a frame, prepended to the next block
    num_samples = 0
    for block in blocks:
        num_samples += block.size
        samples = np.concatenate([carry, block]) if carry.size else block
        num_frames = samples.size // frame_length
        # (num_frames * frame_length,) -> (num_frames, frame_length): one row per frame
        frames = samples[: num_frames * frame_length].reshape(num_frames, frame_length)
        chunks.append(_decibels(np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / frame_length))
        carry = samples[num_frames * frame_length :].copy()
    if carry.size:
        chunks.append(_decibels(np.array([np.mean(np.square(carry, dtype=np.float64))])))
    energies = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return Envelope(energies, frame_length / sample_rate, num_samples / sample_rate)


def is_silent(wave: np.ndarray, sample_rate: int, config: SegmentationConfig) -> bool:
    """Whether `wave` (mono samples) can hold no speech: no frame reaches `config.silence_db`
    (digital silence, or so close to it), or it is shorter than `config.min_speech_seconds`.

    The transcriber gives such a recording an empty text without decoding it: an attention
    decoder has no "nothing was said" to fall back on and would otherwise name some words (a
    digits model heard "s" in one sample and "o" in 25 ms of a word).
    """
    if len(wave) < config.min_speech_seconds * sample_rate:
        return True
    envelope = energy_envelope([np.asarray(wave, dtype=np.float32)], sample_rate, config.frame_seconds)
    return not bool((envelope.energies > config.silence_db).any())


def speech_frames(energies: np.ndarray, config: SegmentationConfig) -> np.ndarray:
    """Which frames are speech, after the adaptive threshold and hangover smoothing.

    Parameters
    ----------
    energies : np.ndarray, shape = (num_frames,)
        Frame log-energies in dBFS.
    config : SegmentationConfig

    Returns
    -------
    np.ndarray, shape = (num_frames,), dtype = bool
    """
    if energies.size == 0:
        return np.zeros(0, dtype=bool)
    floor = np.percentile(energies, config.noise_percentile)
    level = np.percentile(energies, config.speech_percentile)
    threshold = floor + min(config.threshold_db, (level - floor) / 2)
    # `>=` so that a recording with no dynamic range at all (one steady tone) is all speech.
    speech = (energies >= threshold) & (energies > config.silence_db)
    hangover = round(config.hangover_seconds / config.frame_seconds)
    if hangover > 0:
        # Dilation: a frame is speech when any frame within `hangover` of it is.
        window = np.ones(2 * hangover + 1, dtype=np.float32)
        # (num_frames + 2 * hangover,) "full" convolution -> (num_frames,) centred on each frame;
        # mode="same" would return the window's length when the recording is shorter than it.
        counts = np.convolve(speech.astype(np.float32), window, mode="full")
        speech = counts[hangover : hangover + speech.size] > 0.5
    return speech


def find_segments(envelope: Envelope, config: SegmentationConfig) -> list[Segment]:
    """Segments of at most `config.max_segment_seconds` that cover every speech frame, in order.

    Parameters
    ----------
    envelope : Envelope
        From `energy_envelope`; its frame length should be `config.frame_seconds`.
    config : SegmentationConfig

    Returns
    -------
    list of Segment
        In time order, not overlapping; empty when the recording holds no speech.
    """
    # The envelope's exact frame length governs the frame <-> seconds conversions below.
    config = dataclasses.replace(config, frame_seconds=envelope.frame_seconds)
    max_frames = int(config.max_segment_seconds / envelope.frame_seconds + 1e-9)
    max_pause = round(config.max_pause_seconds / envelope.frame_seconds)
    segments: list[tuple[int, int]] = []  # frame ranges [start, end)
    for region_start, region_end in _runs(speech_frames(envelope.energies, config)):
        if segments:
            start, end = segments[-1]
            if region_end - start <= max_frames and region_start - end <= max_pause:
                segments[-1] = (start, region_end)
                continue
        start = region_start
        while region_end - start > max_frames:
            cut = _forced_cut(envelope.energies, start, max_frames, config)
            segments.append((start, cut))
            start = cut
        segments.append((start, region_end))
    return [
        Segment(start * envelope.frame_seconds, min(end * envelope.frame_seconds, envelope.duration))
        for start, end in segments
    ]


def read_blocks(path: str | os.PathLike, block_seconds: float) -> tuple[int, Iterator[np.ndarray]]:
    """Read a recording as consecutive mono float32 blocks at its own sample rate.

    Parameters
    ----------
    path : str or os.PathLike
        Audio file in any format `asr.audio.load_audio` reads.
    block_seconds : float
        Length of each block (the last one may be shorter).

    Returns
    -------
    sample_rate : int
    blocks : iterator of np.ndarray, each shape = (block_samples,), float32
        Raises AudioError, naming the file, on NaN or infinite samples or a read error.

    Raises
    ------
    AudioError
        When the file is missing, empty or not audio.
    """
    path = Path(path)
    info = audio_info(path)
    block_length = max(round(block_seconds * info.sample_rate), 1)
    try:
        soundfile.info(str(path))
    except soundfile.LibsndfileError:
        return info.sample_rate, _blocks_via_load_audio(path, info.sample_rate, block_length, info.num_frames)
    return info.sample_rate, _blocks_via_soundfile(path, info.sample_rate, block_length)


def segment_file(path: str | os.PathLike, config: SegmentationConfig) -> list[Segment]:
    """`find_segments` of an audio file, read in blocks of `config.block_seconds`.

    Raises
    ------
    AudioError
        When the file cannot be read or holds NaN or infinite samples.
    """
    sample_rate, blocks = read_blocks(path, config.block_seconds)
    return find_segments(energy_envelope(blocks, sample_rate, config.frame_seconds), config)


def _decibels(power: np.ndarray) -> np.ndarray:
    """Power (mean square) -> float32 dBFS; float32 halves the envelope and is ample for a threshold."""
    return (10.0 * np.log10(np.maximum(power, _POWER_FLOOR))).astype(np.float32)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _forced_cut(energies: np.ndarray, start: int, max_frames: int, config: SegmentationConfig) -> int:
    """The frame at which to cut speech that runs past the maximum: its quietest point near the end."""
    window_start = start + max(int(config.min_cut_fraction * max_frames), 1)
    window_end = start + max_frames  # the latest cut: the segment is then exactly the maximum
    half_width = round(config.cut_smoothing_seconds / config.frame_seconds) // 2
    # Average the energy around each candidate, so that one quiet frame inside a word loses to a
    # pause; the averages use only frames that exist, so the recording's edges are not favoured.
    candidates = np.arange(window_start, window_end + 1)
    lower = np.maximum(candidates - half_width, 0)
    upper = np.minimum(candidates + half_width + 1, energies.size)
    sums = np.concatenate([[0.0], np.cumsum(energies[lower[0] : upper[-1]])])
    smoothed = (sums[upper - lower[0]] - sums[lower - lower[0]]) / (upper - lower)
    return window_start + int(np.argmin(smoothed))


def _blocks_via_soundfile(path: Path, sample_rate: int, block_length: int) -> Iterator[np.ndarray]:
    try:
        with soundfile.SoundFile(str(path)) as audio_file:
            position = 0
            for block in audio_file.blocks(blocksize=block_length, dtype="float32", always_2d=True):
                # (samples, channels) -> (samples,): average the channels, as load_audio does
                mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
                _check_finite(path, mono, position, sample_rate)
                position += mono.size
                yield mono
    except soundfile.LibsndfileError as error:
        raise AudioError(f"{path}: read error ({error.error_string.rstrip('.')})") from error


def _blocks_via_load_audio(
    path: Path, sample_rate: int, block_length: int, num_frames: int
) -> Iterator[np.ndarray]:
    # Formats libsndfile cannot read (M4A) are decoded by audioread, which seeks by decoding
    # from the start: this path costs O(blocks^2) decoding but still holds one block at a time.
    for start in range(0, num_frames, block_length):
        duration = min(block_length, num_frames - start) / sample_rate
        yield load_audio(path, sample_rate, offset=start / sample_rate, duration=duration).numpy()


def _check_finite(path: Path, samples: np.ndarray, block_start: int, sample_rate: int) -> None:
    not_finite = ~np.isfinite(samples)
    if not_finite.any():
        first = (block_start + int(np.argmax(not_finite))) / sample_rate
        raise AudioError(f"{path}: NaN or infinite samples (first at {first:.3f} s)")
