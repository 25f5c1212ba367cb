import tracemalloc

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.audio import AudioError
from asr.segmentation import (
    Envelope,
    SegmentationConfig,
    energy_envelope,
    find_segments,
    is_silent,
    read_blocks,
    segment_file,
    speech_frames,
)

RATE = 8000


def _tone(seconds: float, amplitude: float = 0.5, frequency: float = 300.0) -> np.ndarray:
    time = np.arange(round(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


def _bursts(pattern: list[tuple[float, float]], noise_amplitude: float = 0.0, seed: int = 0):
    """Tone bursts separated by pauses: `pattern` is (burst seconds, pause seconds) pairs.

    Returns the signal and the (start, end) of every burst in seconds.
    """
    rng = np.random.default_rng(seed)
    parts, bursts, position = [], [], 0.0
    for burst, pause in pattern:
        parts += [_tone(burst), np.zeros(round(pause * RATE), np.float32)]
        bursts.append((position, position + burst))
        position += burst + pause
    signal = np.concatenate(parts)
    signal += (noise_amplitude * rng.standard_normal(signal.size)).astype(np.float32)
    return signal, bursts


def _segments_of(signal: np.ndarray, config: SegmentationConfig):
    return find_segments(energy_envelope([signal], RATE, config.frame_seconds), config)


def _assert_ordered_and_bounded(segments, config: SegmentationConfig, duration: float):
    for segment in segments:
        assert 0 < segment.duration <= config.max_segment_seconds + 1e-6
        assert segment.start >= 0 and segment.end <= duration + 1e-6
    for previous, following in zip(segments, segments[1:], strict=False):
        assert previous.end <= following.start + 1e-9


def test_envelope_does_not_depend_on_block_size():
    signal, _ = _bursts([(1.03, 0.51), (0.77, 0.2)], noise_amplitude=0.01)
    whole = energy_envelope([signal], RATE, 0.01)
    for block_size in (1, 79, 80, 1001, signal.size):
        blocks = (signal[i : i + block_size] for i in range(0, signal.size, block_size))
        streamed = energy_envelope(blocks, RATE, 0.01)
        np.testing.assert_allclose(streamed.energies, whole.energies, rtol=1e-6, atol=1e-6)
        assert streamed.duration == whole.duration == signal.size / RATE
    # 2.51 s of 10 ms frames: 251 frames; a full-scale-ish tone frame is about -9 dBFS (0.5 ** 2 / 2).
    assert whole.energies.shape == (251,)
    assert whole.energies.max() == pytest.approx(10 * np.log10(0.125), abs=0.5)


def test_tone_bursts_are_split_at_the_silences():
    signal, bursts = _bursts([(3.0, 1.0)] * 10)  # 40 s
    config = SegmentationConfig(max_segment_seconds=10.0)
    segments = _segments_of(signal, config)
    _assert_ordered_and_bounded(segments, config, signal.size / RATE)
    assert len(segments) >= 4
    for burst_start, burst_end in bursts:
        # Every burst lies inside exactly one segment: no cut falls inside a tone.
        holders = [s for s in segments if s.start <= burst_start and burst_end <= s.end]
        assert len(holders) == 1
    for segment in segments:
        # Each boundary lies in a pause, within the hangover of the burst it ends or begins.
        assert any(abs(segment.start - max(start - config.hangover_seconds, 0)) < 0.03 for start, _ in bursts)
        assert any(abs(segment.end - min(end + config.hangover_seconds, 40.0)) < 0.03 for _, end in bursts)


def test_pauses_are_found_above_a_noise_floor():
    # Background noise about 40 dB below the tone: the adaptive floor still finds the pauses.
    signal, bursts = _bursts([(2.0, 0.8)] * 8, noise_amplitude=0.003)
    config = SegmentationConfig(max_segment_seconds=5.0)
    segments = _segments_of(signal, config)
    _assert_ordered_and_bounded(segments, config, signal.size / RATE)
    for burst_start, burst_end in bursts:
        assert any(s.start <= burst_start and burst_end <= s.end for s in segments)


@pytest.mark.parametrize("kind", ["tone", "noise"])
def test_speech_without_pauses_is_still_cut_at_the_maximum(kind):
    rng = np.random.default_rng(1)
    signal = _tone(47.0) if kind == "tone" else (0.3 * rng.standard_normal(47 * RATE)).astype(np.float32)
    config = SegmentationConfig(max_segment_seconds=10.0)
    segments = _segments_of(signal, config)
    _assert_ordered_and_bounded(segments, config, 47.0)
    assert len(segments) >= 5
    # Nothing is silence, so the segments are contiguous and cover the whole signal.
    assert segments[0].start == 0 and segments[-1].end == pytest.approx(47.0)
    for previous, following in zip(segments, segments[1:], strict=False):
        assert previous.end == pytest.approx(following.start)
        # A forced cut falls in the last half of the allowed span.
        assert previous.duration >= config.min_cut_fraction * config.max_segment_seconds - 0.01


def test_forced_cut_prefers_the_quietest_point():
    # A continuous tone that dips (too briefly to count as a pause) at 7.0 s: the cut goes there.
    signal = _tone(12.0)
    dip = slice(round(6.98 * RATE), round(7.02 * RATE))
    signal[dip] *= 0.1
    config = SegmentationConfig(max_segment_seconds=10.0)
    segments = _segments_of(signal, config)
    assert len(segments) == 2
    assert segments[0].end == pytest.approx(7.0, abs=0.03)


def test_silence_gives_no_segments():
    config = SegmentationConfig(max_segment_seconds=5.0)
    assert _segments_of(np.zeros(30 * RATE, np.float32), config) == []
    assert _segments_of(np.full(30 * RATE, 1e-6, np.float32), config) == []


def test_silent_means_no_frame_above_the_floor_or_too_short_for_a_word():
    config = SegmentationConfig(max_segment_seconds=5.0)  # min_speech_seconds 0.05: 400 samples
    assert is_silent(np.zeros(RATE, np.float32), RATE, config)
    assert is_silent(np.full(RATE, 1e-5, np.float32), RATE, config)  # -100 dBFS
    assert not is_silent(_tone(1.0, amplitude=1e-3), RATE, config)  # -63 dBFS: faint, but heard
    assert not is_silent(_tone(0.05), RATE, config)
    assert is_silent(_tone(0.049), RATE, config)
    assert is_silent(np.zeros(0, np.float32), RATE, config)


def test_long_pauses_end_segments_short_ones_do_not():
    # Bursts 1 s apart merge into one segment; a 3 s pause (> max_pause_seconds) starts a new one.
    signal, _ = _bursts([(1.0, 1.0), (1.0, 3.0), (1.0, 0.0)])
    config = SegmentationConfig(max_segment_seconds=30.0, max_pause_seconds=2.0)
    segments = _segments_of(signal, config)
    assert [(round(s.start, 2), round(s.end, 2)) for s in segments] == [(0.0, 3.2), (5.8, 7.0)]


@settings(max_examples=40, deadline=None)
@given(
    levels=st.lists(st.sampled_from([-100.0, -60.0, -30.0, -20.0, -10.0]), min_size=1, max_size=600),
    max_seconds=st.sampled_from([0.5, 1.0, 2.5]),
)
def test_segments_are_ordered_bounded_and_cover_all_speech(levels, max_seconds):
    # Runs of 5 frames at each level, so there are pauses and speech of many lengths.
    energies = np.repeat(np.array(levels), 5)
    config = SegmentationConfig(max_segment_seconds=max_seconds)
    envelope = Envelope(energies, 0.01, energies.size * 0.01)
    segments = find_segments(envelope, config)
    _assert_ordered_and_bounded(segments, config, envelope.duration)
    speech = np.flatnonzero(speech_frames(energies, config))
    covered = np.zeros(energies.size, dtype=bool)
    for segment in segments:
        covered[round(segment.start / 0.01) : round(segment.end / 0.01)] = True
    assert covered[speech].all()


def test_read_blocks_mixes_channels_and_reports_nan(tmp_path):
    stereo = np.stack([_tone(2.0), np.zeros(2 * RATE, np.float32)], axis=1)
    soundfile.write(tmp_path / "stereo.flac", stereo, RATE)
    sample_rate, blocks = read_blocks(tmp_path / "stereo.flac", block_seconds=0.3)
    blocks = list(blocks)
    assert sample_rate == RATE and len(blocks) == 7
    np.testing.assert_allclose(np.concatenate(blocks), stereo.mean(axis=1), atol=1e-4)

    broken = _tone(5.0)
    broken[3 * RATE] = np.nan
    soundfile.write(tmp_path / "nan.wav", broken, RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: NaN or infinite samples \(first at 3\.000 s\)"):
        segment_file(tmp_path / "nan.wav", SegmentationConfig(max_segment_seconds=2.0, block_seconds=1.0))


def test_segment_file_holds_one_block_not_the_recording(tmp_path):
    # 20 minutes at 8 kHz: 38 MB as float32. Written block by block so the test itself stays small.
    path = tmp_path / "long.wav"
    burst, _ = _bursts([(4.0, 1.0)] * 12)  # one minute
    with soundfile.SoundFile(path, "w", samplerate=RATE, channels=1, subtype="PCM_16") as audio_file:
        for _ in range(20):
            audio_file.write(burst)
    float32_bytes = 20 * burst.nbytes
    config = SegmentationConfig(max_segment_seconds=20.0, block_seconds=10.0)
    tracemalloc.start()
    try:
        segments = segment_file(path, config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _assert_ordered_and_bounded(segments, config, 1200.0)
    assert len(segments) == 60  # four 4 s bursts (with 1 s pauses) fit in 20 s
    # The envelope (120,000 frames) and a few 10 s blocks, not the samples: under 1/8 of their size.
    assert peak < float32_bytes / 8, f"peak {peak / 1e6:.1f} MB for a {float32_bytes / 1e6:.0f} MB recording"
