"""Mains hum removal (asr.dehum) on real FSDD speech with hum added, and in asr-transcribe."""

import numpy as np
import pytest
import soundfile
import torch

from asr.cli.transcribe import main as transcribe
from asr.dehum import HumConfig, remove_mains_hum
from asr.features import FeatureConfig, LogMelFeatures
from asr.transcription import FileAudio, Piece, Utterance, load_batch
from tests.test_transcribe import _build_checkpoint

RATE = 8000


@pytest.fixture(scope="module")
def speech(fsdd_dir) -> np.ndarray:
    """Three real digits of two voices with short pauses: a 1.5-2 s string at 8 kHz."""
    pause = np.zeros(RATE // 10)
    parts = []
    for name in ("3_jackson_7.flac", "8_george_12.flac", "1_jackson_20.flac"):
        wave, rate = soundfile.read(fsdd_dir / "recordings" / name, dtype="float64")
        assert rate == RATE
        parts += [wave, pause]
    return np.concatenate(parts)


def hum(samples: int, frequency: float, amplitudes: list[float]) -> np.ndarray:
    t = np.arange(samples) / RATE
    return sum(a * np.sin(2 * np.pi * k * frequency * t + k) for k, a in enumerate(amplitudes, start=1))


def log_mel(wave: np.ndarray) -> torch.Tensor:
    """(frames, 80) log-mel frames as the digits recipe's model computes them."""
    features = LogMelFeatures(FeatureConfig(sample_rate=RATE, f_max=4000.0, high_pass_hz=80.0))
    samples = torch.as_tensor(wave, dtype=torch.float32)[None]
    return features(samples, torch.tensor([samples.shape[1]]))[0][0]


def with_hum(wave: np.ndarray, tone: np.ndarray, snr_db: float) -> np.ndarray:
    scale = np.sqrt(np.mean(wave**2) / np.mean(tone**2) / 10 ** (snr_db / 10))
    return wave + scale * tone


@pytest.mark.parametrize(
    "frequency, amplitudes, snr_db, max_distance",
    [
        (59.7, [1, 1 / 2, 1 / 3, 0, 1 / 5], 10.0, 0.4),  # 60 Hz mains, 0.5 % low, with harmonics
        (50.4, [1.0], 15.0, 0.5),  # a pure 50 Hz tone
        (49.6, [1 / k for k in range(1, 20)], 5.0, 0.45),  # a buzz rich in harmonics up to 950 Hz
    ],
)
def test_hum_is_found_and_subtracted_from_real_speech(speech, frequency, amplitudes, snr_db, max_distance):
    tone = hum(len(speech), frequency, amplitudes)
    noisy = with_hum(speech, tone, snr_db)
    cleaned, found = remove_mains_hum(torch.from_numpy(noisy), RATE)
    assert found is not None
    assert abs(found.frequency - frequency) < 0.01
    strong = [k for k, a in enumerate(amplitudes, start=1) if a >= 1 / 3]
    assert set(strong) <= set(found.harmonics)
    assert cleaned.dtype == torch.float64 and cleaned.shape == (len(speech),)
    residual = cleaned.numpy() - speech
    # 20 dB less than the hum at least (26-28 dB measured); the fit trusts the pauses, not the voice
    assert np.mean(residual**2) < np.mean((noisy - speech) ** 2) * 10 ** (-20 / 10)
    # in the lowest 20 of the model's 80 log-mel bins (0-330 Hz), where the hum was, the frames are
    # much closer to the clean speech's than the noisy ones were
    clean_frames = log_mel(speech)[:, :20]
    before = (log_mel(noisy)[:, :20] - clean_frames).abs().mean()
    after = (log_mel(cleaned.numpy())[:, :20] - clean_frames).abs().mean()
    assert after < max_distance * before


def test_clean_speech_and_short_recordings_are_left_as_they_are(speech, fsdd_dir):
    wave = torch.from_numpy(speech).float()
    cleaned, found = remove_mains_hum(wave, RATE)
    assert found is None and cleaned is wave
    for name in ("0_nicolas_3.flac", "5_lucas_30.flac", "7_yweweler_11.flac", "9_george_40.flac"):
        clip, _ = soundfile.read(fsdd_dir / "recordings" / name, dtype="float32")
        assert remove_mains_hum(torch.from_numpy(clip), RATE)[1] is None, name
    short = torch.from_numpy(with_hum(speech[: RATE // 10], hum(RATE // 10, 60.0, [1.0]), 0.0))
    cleaned, found = remove_mains_hum(short, RATE)  # 0.1 s: below min_seconds
    assert found is None and cleaned is short


def test_a_tone_that_is_not_steady_is_not_taken_for_hum(speech):
    tone = hum(len(speech), 60.0, [1.0, 0.5])
    tone[: len(speech) // 2] = 0  # it starts halfway: a sound in the room, not the mains
    _, found = remove_mains_hum(torch.from_numpy(with_hum(speech, tone, 5.0)), RATE)
    assert found is None
    # the same tone held throughout is hum
    steady = hum(len(speech), 60.0, [1.0, 0.5])
    assert remove_mains_hum(torch.from_numpy(with_hum(speech, steady, 5.0)), RATE)[1] is not None


def test_the_detection_threshold_is_the_config_s(speech):
    noisy = torch.from_numpy(with_hum(speech, hum(len(speech), 60.0, [1.0]), 35.0))  # faint
    assert remove_mains_hum(noisy, RATE)[1] is not None
    assert remove_mains_hum(noisy, RATE, HumConfig(detect_db=60.0))[1] is None


def test_transcription_loads_the_audio_without_its_hum(tmp_path, speech):
    noisy = with_hum(speech, hum(len(speech), 60.2, [1, 0.5, 0.3]), 10.0)
    path = tmp_path / "hum.wav"
    soundfile.write(path, noisy, RATE, subtype="FLOAT")
    utterance = Utterance("hum", FileAudio(path))
    piece = Piece(0, 0, None, len(speech) / RATE)
    _, kept, _ = load_batch([piece], [utterance], RATE, print)
    assert utterance.hum is None  # no HumConfig: the audio as it is
    np.testing.assert_allclose(kept[0].numpy(), noisy, atol=1e-6)
    _, cleaned, _ = load_batch([piece], [utterance], RATE, print, HumConfig())
    assert utterance.hum is not None and abs(utterance.hum.frequency - 60.2) < 0.05
    assert np.mean((cleaned[0].numpy() - speech) ** 2) < 0.05 * np.mean((noisy - speech) ** 2)


def test_asr_transcribe_removes_hum_and_says_so(tmp_path, capsys, speech, one_thread):
    checkpoint = _build_checkpoint(tmp_path / "model.pt")
    path = tmp_path / "hum.wav"
    soundfile.write(path, with_hum(speech, hum(len(speech), 60.0, [1, 0.5]), 10.0), RATE)
    soundfile.write(tmp_path / "clean.wav", speech, RATE)
    arguments = ["--model", str(checkpoint), "--beam-size", "1", str(path), str(tmp_path / "clean.wav")]
    assert transcribe(arguments) == 0
    err = capsys.readouterr().err
    assert "note: hum: mains hum at 60.0 Hz removed before decoding (harmonics 1, 2" in err
    assert "note: clean:" not in err
    assert transcribe(["--keep-hum", *arguments]) == 0
    assert "mains hum" not in capsys.readouterr().err


def test_a_long_recording_is_fitted_whole_in_bounded_memory(speech):
    """Five minutes at 16 kHz: the spectrum reads its first 30 s, the fit runs block by block."""
    import resource

    rate = 16000
    wave = np.tile(np.repeat(speech, 2), 120)[: 300 * rate]  # 8 kHz speech played at 16 kHz, repeated
    t = np.arange(len(wave)) / rate
    tone = 0.05 * np.sin(2 * np.pi * 50.1 * t) + 0.02 * np.sin(2 * np.pi * 150.3 * t)
    noisy = torch.from_numpy(wave + tone)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cleaned, found = remove_mains_hum(noisy, rate)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert found is not None and abs(found.frequency - 50.1) < 0.01 and {1, 3} <= set(found.harmonics)
    residual = cleaned.numpy() - wave
    assert np.mean(residual**2) < 0.01 * np.mean((noisy.numpy() - wave) ** 2)
    # the recording is 37 MiB in float64; a design of all of it, or its zero-padded spectrum, 0.5-1.5 GB
    assert grown_mib < 400
