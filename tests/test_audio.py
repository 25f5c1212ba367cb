import os

import numpy as np
import pytest
import soundfile
import torch

import asr.audio
from asr.audio import AUDIO_EXTENSIONS, AudioError, audio_info, find_audio_files, load_audio, resample


def _sine(
    sample_rate: int, seconds: float = 0.5, frequency: float = 440.0, amplitude: float = 0.5
) -> np.ndarray:
    time = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


def _peak_frequency(waveform: torch.Tensor, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform.numpy()))
    return float(np.fft.rfftfreq(waveform.numel(), 1 / sample_rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    ("name", "subtype", "tolerance"),
    [
        ("u8.wav", "PCM_U8", 1 / 64),
        ("s16.wav", "PCM_16", 1e-4),
        ("s24.wav", "PCM_24", 1e-6),
        ("s32.wav", "PCM_32", 1e-6),
        ("float.wav", "FLOAT", 0.0),
        ("double.wav", "DOUBLE", 1e-7),
        ("s16.flac", "PCM_16", 1e-4),
        ("s24.flac", "PCM_24", 1e-6),
        ("vorbis.ogg", "VORBIS", 0.1),
        ("s16.aiff", "PCM_16", 1e-4),
    ],
)
def test_load_audio_reads_formats_and_bit_depths(tmp_path, name, subtype, tolerance):
    sine = _sine(16000)
    soundfile.write(tmp_path / name, sine, 16000, subtype=subtype)
    waveform = load_audio(tmp_path / name, 16000)
    assert waveform.dtype == torch.float32 and waveform.shape == (8000,)
    assert np.abs(waveform.numpy() - sine).max() <= tolerance
    assert _peak_frequency(waveform, 16000) == pytest.approx(440, abs=2)


@pytest.mark.parametrize(
    ("name", "file_format", "subtype"), [("a.mp3", "MP3", "MPEG_LAYER_III"), ("a.opus", "OGG", "OPUS")]
)
def test_load_audio_reads_lossy_formats(tmp_path, name, file_format, subtype):
    # Encoder delay shifts the samples, so compare the pitch and the length, not sample values.
    soundfile.write(tmp_path / name, _sine(48000), 48000, format=file_format, subtype=subtype)
    waveform = load_audio(tmp_path / name, 16000)
    assert abs(waveform.numel() - 8000) <= 1200
    assert _peak_frequency(waveform, 16000) == pytest.approx(440, abs=3)


def test_integer_pcm_is_scaled_to_unit_range(tmp_path):
    soundfile.write(tmp_path / "full_scale.wav", np.array([32767, -32768, 0, 16384], np.int16), 16000)
    waveform = load_audio(tmp_path / "full_scale.wav", 16000)
    assert waveform.tolist() == pytest.approx([32767 / 32768, -1.0, 0.0, 0.5])


@pytest.mark.parametrize("file_rate", [8000, 11025, 22050, 44100, 48000])
def test_load_audio_resamples_keeping_length_and_pitch(tmp_path, file_rate):
    soundfile.write(tmp_path / "sine.wav", _sine(file_rate), file_rate, subtype="PCM_16")
    waveform = load_audio(tmp_path / "sine.wav", 16000)
    assert abs(waveform.numel() - 8000) <= 1
    assert waveform.dtype == torch.float32
    assert _peak_frequency(waveform, 16000) == pytest.approx(440, abs=2)
    # Away from the edges the amplitude survives resampling.
    assert waveform[1000:-1000].abs().max().item() == pytest.approx(0.5, abs=0.01)


def test_resample_tensor():
    sine = torch.from_numpy(_sine(8000))
    assert resample(sine, 8000, 8000) is sine
    upsampled = resample(sine, 8000, 16000)
    assert upsampled.shape == (8000,) and upsampled.dtype == torch.float32
    assert _peak_frequency(upsampled, 16000) == pytest.approx(440, abs=2)
    with pytest.raises(ValueError, match="1-D"):
        resample(sine.reshape(2, -1), 8000, 16000)


@pytest.mark.parametrize("samples", [1, 2, 7, 441, 4410, 44101])
@pytest.mark.parametrize(("orig_rate", "new_rate"), [(44100, 16000), (8000, 16000), (48000, 44100)])
def test_resampling_equals_librosa_soxr_hq(samples, orig_rate, new_rate):
    # soxr is called directly (librosa's first resample costs 2 s of imports); the samples and the
    # length, ceil(n * new / old) even for a handful of samples, must stay librosa's
    import librosa

    wave = np.random.default_rng(samples).standard_normal(samples).astype(np.float32)
    expected = librosa.resample(wave, orig_sr=orig_rate, target_sr=new_rate, res_type="soxr_hq")
    got = resample(torch.from_numpy(wave), orig_rate, new_rate).numpy()
    assert got.shape == expected.shape == (int(np.ceil(samples * new_rate / orig_rate)),)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_stereo_is_mixed_down_by_averaging(tmp_path):
    left, right = _sine(16000), np.full(8000, 0.25, np.float32)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    waveform = load_audio(tmp_path / "stereo.wav", 16000)
    np.testing.assert_allclose(waveform.numpy(), (left + right) / 2, atol=1e-7)
    assert audio_info(tmp_path / "stereo.wav").num_channels == 2


def test_silence_and_clipping_are_valid(tmp_path):
    soundfile.write(tmp_path / "silence.wav", np.zeros(1600, np.float32), 16000)
    soundfile.write(tmp_path / "clipped.wav", np.clip(4 * _sine(16000), -1, 1), 16000)
    assert load_audio(tmp_path / "silence.wav", 16000).abs().max() == 0
    assert load_audio(tmp_path / "clipped.wav", 16000).abs().max() == pytest.approx(1.0, abs=1e-4)


def test_offset_and_duration_seek_instead_of_reading_everything(tmp_path, monkeypatch):
    ramp = np.linspace(-1, 1, 16000, dtype=np.float32)
    soundfile.write(tmp_path / "ramp.wav", ramp, 16000, subtype="FLOAT")
    frames_read = []
    original_read = soundfile.SoundFile.read

    def spy_read(self, frames=-1, *args, **kwargs):
        frames_read.append(frames)
        return original_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(soundfile.SoundFile, "read", spy_read)
    piece = load_audio(tmp_path / "ramp.wav", 16000, offset=0.25, duration=0.5)
    np.testing.assert_array_equal(piece.numpy(), ramp[4000:12000])
    assert frames_read == [8000]
    # A slice running past the end is cut short; no duration reads to the end.
    np.testing.assert_array_equal(
        load_audio(tmp_path / "ramp.wav", 16000, offset=0.75, duration=10).numpy(), ramp[12000:]
    )
    assert load_audio(tmp_path / "ramp.wav", 8000, offset=0.5).shape == (4000,)


def test_offset_past_the_end_is_an_error(tmp_path):
    soundfile.write(tmp_path / "short.wav", _sine(16000), 16000)
    with pytest.raises(AudioError, match=r"short\.wav: offset 2\.0 s is at or past the end"):
        load_audio(tmp_path / "short.wav", 16000, offset=2.0)


@pytest.mark.parametrize(("keyword", "value"), [("offset", -1.0), ("duration", 0.0), ("sample_rate", 0)])
def test_bad_arguments_raise_value_error(tmp_path, keyword, value):
    soundfile.write(tmp_path / "a.wav", _sine(16000), 16000)
    arguments = {"sample_rate": 16000, keyword: value}
    with pytest.raises(ValueError, match=keyword):
        load_audio(tmp_path / "a.wav", **arguments)


def _write_bad_file(folder, problem):
    """Create a file with `problem`; returns its path."""
    if problem == "missing":
        return folder / "missing.wav"
    if problem == "directory":
        (folder / "folder.wav").mkdir()
        return folder / "folder.wav"
    if problem == "empty":
        (folder / "empty.wav").touch()
        return folder / "empty.wav"
    if problem == "not audio":
        (folder / "notes.wav").write_text("this is a text file, not audio\n" * 20)
        return folder / "notes.wav"
    soundfile.write(folder / "good.wav", _sine(16000), 16000, subtype="PCM_16")
    if problem == "truncated header":
        (folder / "truncated.wav").write_bytes((folder / "good.wav").read_bytes()[:30])
        return folder / "truncated.wav"
    if problem == "zero samples":
        soundfile.write(folder / "no_samples.wav", np.zeros(0, np.float32), 16000)
        return folder / "no_samples.wav"
    samples = _sine(16000)
    samples[100] = np.nan if problem == "nan" else np.inf
    soundfile.write(folder / "bad_values.wav", samples, 16000, subtype="FLOAT")
    return folder / "bad_values.wav"


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("empty", r"file is empty \(0 bytes\)"),
        ("not audio", "not a readable audio file"),
        ("truncated header", "not a readable audio file"),
        ("zero samples", "no audio samples"),
        ("nan", "NaN or infinite"),
        ("infinity", "NaN or infinite"),
    ],
)
def test_load_audio_errors_name_the_file_and_problem(tmp_path, problem, message):
    path = _write_bad_file(tmp_path, problem)
    with pytest.raises(AudioError, match=message) as caught:
        load_audio(path, 16000)
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "not audio"])
def test_audio_info_errors_name_the_file(tmp_path, problem):
    path = _write_bad_file(tmp_path, problem)
    with pytest.raises(AudioError, match=path.name):
        audio_info(path)


def test_unknown_format_falls_back_and_still_names_the_file(tmp_path):
    # libsndfile cannot read M4A; the audioread fallback cannot read random bytes either.
    (tmp_path / "voice.m4a").write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(AudioError, match=r"voice\.m4a: not a readable audio file"):
        load_audio(tmp_path / "voice.m4a", 16000)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_permissions(tmp_path):
    soundfile.write(tmp_path / "locked.wav", _sine(16000), 16000)
    (tmp_path / "locked.wav").chmod(0)
    with pytest.raises(AudioError, match=r"locked\.wav: permission denied"):
        load_audio(tmp_path / "locked.wav", 16000)


def test_permission_error_message(tmp_path, monkeypatch):
    # The same path as above, reachable when the tests run as root.
    soundfile.write(tmp_path / "locked.wav", _sine(16000), 16000)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(asr.audio, "open", refuse, raising=False)
    with pytest.raises(AudioError, match=r"locked\.wav: permission denied"):
        load_audio(tmp_path / "locked.wav", 16000)


def test_audio_info_reads_the_header(tmp_path):
    soundfile.write(tmp_path / "a.flac", np.zeros((22050, 2), np.float32), 44100)
    info = audio_info(tmp_path / "a.flac")
    assert (info.sample_rate, info.num_frames, info.num_channels, info.duration) == (44100, 22050, 2, 0.5)


def test_find_audio_files_keeps_files_in_order_and_sorts_folders(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub" / "deeper").mkdir(parents=True)
    (corpus / ".cache").mkdir()
    for name in ["b.wav", "a.FLAC", "sub/c.ogg", "sub/deeper/d.Mp3", "notes.txt", "._b.wav", ".cache/e.wav"]:
        (corpus / name).touch()
    (tmp_path / "z.wav").touch()
    (tmp_path / "list.txt").touch()

    found = find_audio_files([tmp_path / "z.wav", str(corpus), tmp_path / "list.txt"])
    expected = [
        "z.wav",
        "corpus/a.FLAC",
        "corpus/b.wav",
        "corpus/sub/c.ogg",
        "corpus/sub/deeper/d.Mp3",
        "list.txt",
    ]
    assert found == [tmp_path / name for name in expected]
    # A single path is one input, not a sequence of characters.
    assert find_audio_files(str(tmp_path / "z.wav")) == [tmp_path / "z.wav"]
    assert ".wav" in AUDIO_EXTENSIONS and ".flac" in AUDIO_EXTENSIONS


def test_find_audio_files_missing_input_is_named(tmp_path):
    with pytest.raises(AudioError, match=r"nowhere: no such file or directory"):
        find_audio_files([tmp_path, tmp_path / "nowhere"])
