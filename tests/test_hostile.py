"""Hostile input: every file gives a result or a clear message naming it; nothing crashes or hangs.

Property-based tests (hypothesis) write malformed and extreme audio files: every container and
sample format libsndfile writes, 1-6 channels, 0-4000 frames, silence, noise, clipping, values of
1e30, NaN and infinity, then truncate them, corrupt their headers or replace them with random bytes.
`asr.audio.load_audio` must return a finite mono waveform or raise AudioError naming the file, and
`asr-transcribe` must report the bad files and transcribe the rest. Fixed tests cover a folder of
named hostile files (an hour-long one among them) and training on a manifest full of bad entries.
"""

import contextlib
import faulthandler
import io
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lhotse import AudioSource, CutSet, MonoCut, Recording, SupervisionSegment

from asr.audio import AudioError, audio_info, load_audio
from asr.checkpoint import model_state, save_checkpoint
from asr.cli.transcribe import main as transcribe_main
from asr.corpora import ManifestCorpus
from asr.corpora.fsdd import DIGIT_WORDS
from asr.data import LoaderConfig
from asr.decoding import DecodingOptions
from asr.model import LAS
from asr.tokenizer import CharTokenizer
from asr.train import OptimizerOptions, TrainerOptions, TrainingError, fit
from tests.conftest import FSDD_DIR, tiny_config

SUBTYPES = {"WAV": ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"), "FLAC": ("PCM_16", "PCM_24")}
RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000)
HANG_SECONDS = 120  # a test that runs this long is stuck: dump every stack and end the run


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    """Turn a hang, even one inside C code that no Python timeout can interrupt, into a loud failure."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@dataclass(frozen=True)
class AudioSpec:
    container: str  # WAV or FLAC
    subtype: str
    rate: int
    channels: int
    frames: int
    content: str  # silence | noise | clipped | loud | nan | inf
    damage: str  # none | truncate | header | random | empty
    where: float  # 0..1: where truncation or header damage falls
    seed: int


@st.composite
def audio_specs(draw) -> AudioSpec:
    container = draw(st.sampled_from(sorted(SUBTYPES)))
    return AudioSpec(
        container=container,
        subtype=draw(st.sampled_from(SUBTYPES[container])),
        rate=draw(st.sampled_from(RATES)),
        channels=draw(st.integers(1, 6)),
        frames=draw(st.integers(0, 4000)),
        content=draw(st.sampled_from(["silence", "noise", "clipped", "loud", "nan", "inf"])),
        damage=draw(st.sampled_from(["none", "none", "truncate", "header", "random", "empty"])),
        where=draw(st.floats(0.0, 1.0)),
        seed=draw(st.integers(0, 2**16)),
    )


def audio_bytes(spec: AudioSpec) -> bytes:
    """The file `spec` describes: written by libsndfile, then damaged."""
    rng = np.random.default_rng(spec.seed)
    samples = np.zeros((spec.frames, spec.channels))
    if spec.content != "silence":
        samples = 0.3 * rng.standard_normal((spec.frames, spec.channels))
    if spec.content == "clipped":
        samples = np.clip(8 * samples, -1, 1)
    elif spec.content == "loud":
        samples = samples * 1e30  # finite in float64; float32 files hold it as infinity
    elif spec.content in ("nan", "inf") and spec.frames:
        samples[rng.integers(spec.frames), 0] = np.nan if spec.content == "nan" else np.inf
    if spec.subtype not in ("FLOAT", "DOUBLE"):  # integer PCM can hold neither NaN nor 1e30
        samples = np.clip(np.nan_to_num(samples), -1, 1)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, spec.rate, subtype=spec.subtype, format=spec.container)
    data = buffer.getvalue()
    cut = int(spec.where * len(data))
    if spec.damage == "truncate":
        return data[:cut]
    if spec.damage == "header":  # overwrite 4 bytes among the first 48: sizes, rate, channels, bits
        position = int(spec.where * 44)
        return data[:position] + rng.bytes(4) + data[position + 4 :]
    if spec.damage == "random":
        return rng.bytes(max(1, cut))
    if spec.damage == "empty":
        return b""
    return data


def write_file(folder: Path, name: str, spec: AudioSpec) -> Path:
    path = folder / f"{name}.{spec.container.lower()}"
    path.write_bytes(audio_bytes(spec))
    return path


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=audio_specs())
def test_load_audio_returns_finite_mono_audio_or_names_the_file(spec):
    with tempfile.TemporaryDirectory() as folder, no_hang():
        path = write_file(Path(folder), "hostile", spec)
        for read in (lambda: audio_info(path), lambda: load_audio(path, 16000)):
            try:
                result = read()
            except AudioError as error:
                assert str(error).startswith(f"{path}: "), str(error)
                continue
            if isinstance(result, torch.Tensor):
                assert result.dtype == torch.float32 and result.dim() == 1 and result.numel() > 0
                # peak 1 at the file's rate (louder float audio is scaled down); resampling overshoots
                assert torch.isfinite(result).all() and result.abs().max() < 4


def tiny_checkpoint(path: Path) -> Path:
    """A random tiny model whose strong end-of-sentence bias keeps its (meaningless) outputs short."""
    tokenizer = CharTokenizer.build(["abc def"])
    torch.manual_seed(0)
    model = LAS(tiny_config(vocab_size=tokenizer.vocab_size))
    with torch.no_grad():
        model.decoder.output.bias[tokenizer.eos_id] += 3.0
    save_checkpoint(model_state(model, tokenizer), path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


def speechlike(seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    time = np.arange(round(seconds * rate)) / rate
    signal = 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * time)) * rng.standard_normal(time.size)
    return np.stack([signal * (1 - 0.1 * c) for c in range(channels)], axis=1).astype(np.float32)


def transcribe(*arguments) -> tuple[int, dict[str, str], list[str]]:
    """Run asr-transcribe in this process: (status, {id: text}, error lines)."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "out.txt"
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = transcribe_main(["--beam-size", "2", "--output", str(output), *map(str, arguments)])
        lines = output.read_text(encoding="utf-8").splitlines() if output.exists() else []
    texts = dict(line.split("\t", 1) for line in lines)
    errors = [line for line in stderr.getvalue().splitlines() if ": error: " in line]
    assert "Traceback" not in stderr.getvalue()
    return status, texts, errors


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(audio_specs(), min_size=1, max_size=3))
def test_transcribe_reports_bad_files_and_transcribes_the_rest(checkpoint, specs):
    with tempfile.TemporaryDirectory() as folder, no_hang():
        folder = Path(folder)
        soundfile.write(folder / "good.wav", speechlike(0.5, 16000, 0), 16000)
        paths = [write_file(folder, f"file{index}", spec) for index, spec in enumerate(specs)]
        status, texts, errors = transcribe("--model", checkpoint, folder)
        assert "good" in texts
        for path in paths:
            named = [line for line in errors if f"{path}: " in line]
            assert (path.stem in texts) != bool(named), (path, texts, errors)  # one or the other
        assert status == (1 if errors else 0)


def hour_of_silence_with_a_word(path: Path) -> Path:
    """One hour at 8 kHz, 8-bit (29 MB), silent but for one second of noise half-way."""
    rate = 8000
    with soundfile.SoundFile(path, "w", rate, 1, subtype="PCM_U8") as file:
        minute = np.zeros(60 * rate, np.float32)
        for index in range(60):
            file.write(
                minute if index != 30 else np.concatenate([speechlike(1.0, rate, 5)[:, 0], minute[rate:]])
            )
    return path


def test_a_folder_of_hostile_files(checkpoint, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    soundfile.write(good / "pcm16.wav", speechlike(0.8, 16000, 1), 16000, subtype="PCM_16")
    soundfile.write(good / "u8_8k.wav", speechlike(0.6, 8000, 2), 8000, subtype="PCM_U8")
    soundfile.write(good / "s24_48k_stereo.flac", speechlike(0.7, 48000, 3, 2), 48000, subtype="PCM_24")
    soundfile.write(good / "float_44k_6ch.wav", speechlike(0.5, 44100, 4, 6), 44100, subtype="FLOAT")
    soundfile.write(good / "clipped.wav", np.clip(10 * speechlike(0.5, 16000, 6), -1, 1), 16000)
    soundfile.write(
        good / "loud.wav", 1e30 * speechlike(0.5, 16000, 7).astype(np.float64), 16000, subtype="DOUBLE"
    )
    soundfile.write(good / "silence.wav", np.zeros(8000, np.float32), 8000)
    # each problem, and a word in the message that names it
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    soundfile.write(bad / "zero_samples.wav", np.zeros(0, np.float32), 16000)
    (bad / "text.wav").write_text("this is not audio\n" * 50)
    flac = (good / "s24_48k_stereo.flac").read_bytes()
    (bad / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    (bad / "header_only.wav").write_bytes((good / "pcm16.wav").read_bytes()[:30])
    wave = (good / "pcm16.wav").read_bytes()
    (bad / "rate_zero.wav").write_bytes(wave[:24] + bytes(4) + wave[28:])
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        samples = speechlike(0.5, 16000, 8)
        samples[100] = value
        soundfile.write(bad / f"{name}.wav", samples, 16000, subtype="FLOAT")
    problems = {
        "empty": "empty",
        "zero_samples": "no audio samples",
        "text": "not a readable audio file",
        "truncated": "truncated or corrupt",
        "header_only": "not a readable audio file",
        "rate_zero": "sample rate of 0",
        "nan": "NaN or infinite",
        "inf": "NaN or infinite",
        "missing": "no such file",
    }
    hour = hour_of_silence_with_a_word(tmp_path / "hour.wav")
    manifest = tmp_path / "manifest.jsonl.gz"  # the same problems through lhotse
    recordings = [
        Recording.from_file(good / "loud.wav", recording_id="m_loud"),
        Recording.from_file(bad / "nan.wav", recording_id="m_nan"),
        bad_recording(tmp_path / "gone.wav", "m_gone"),
    ]
    CutSet.from_cuts(cut_of(recording, "") for recording in recordings).to_file(manifest)
    problems.update({"m_nan": "NaN or infinite", "m_gone": "cannot load audio"})

    with no_hang():
        status, texts, errors = transcribe(
            "--model", checkpoint, good, bad, hour, tmp_path / "missing.wav", manifest
        )
        alone_status, alone, _ = transcribe("--model", checkpoint, good)
    assert status == 1 and alone_status == 0
    assert set(texts) == {p.stem for p in good.iterdir()} | {"hour", "m_loud"}
    assert {name: texts[name] for name in alone} == alone  # bad neighbours change no good result
    assert len(errors) == len(problems)
    for name, problem in problems.items():
        assert any(f"{name}." in line or f":{name}:" in line for line in errors), (name, errors)
        assert any(name in line and problem in line for line in errors), (name, problem, errors)


def bad_recording(path: Path, recording_id: str) -> Recording:
    """A manifest entry that claims one second of 8 kHz audio at `path`, whatever is there."""
    source = AudioSource(type="file", channels=[0], source=str(path))
    return Recording(recording_id, [source], sampling_rate=8000, num_samples=8000, duration=1.0)


def cut_of(recording: Recording, text) -> MonoCut:
    supervision = SupervisionSegment(recording.id, recording.id, 0.0, recording.duration, text=text)
    return MonoCut(recording.id, 0.0, recording.duration, 0, recording=recording, supervisions=[supervision])


def hostile_manifest(folder: Path) -> tuple[Path, int]:
    """Training cuts: six FSDD clips (one with an empty transcript, one with characters seen nowhere
    else) and four bad files; dev cuts: two clips (one with characters outside the vocabulary) and a
    missing file. Returns the training manifest and the number of bad cuts in it."""
    paths = [FSDD_DIR / "recordings" / f"{digit}_jackson_10.flac" for digit in range(6)]
    recordings = [Recording.from_file(path) for path in paths]
    texts = ["", "zéro ✓ 42", *DIGIT_WORDS[2:6]]
    good = [cut_of(recording, text) for recording, text in zip(recordings, texts, strict=True)]
    (folder / "text.wav").write_text("not audio\n")
    soundfile.write(folder / "nan.wav", np.full(8000, np.nan, np.float32), 8000, subtype="FLOAT")
    (folder / "truncated.flac").write_bytes(paths[0].read_bytes()[:200])
    bad = [
        cut_of(bad_recording(folder / name, name.split(".")[0]), "one")
        for name in ("missing.wav", "text.wav", "nan.wav", "truncated.flac")
    ]
    CutSet.from_cuts(good + bad).to_file(folder / "train.jsonl.gz")
    dev = [good[2], cut_of(recordings[3], "three жук"), bad[0]]
    CutSet.from_cuts(dev).to_file(folder / "dev.jsonl.gz")
    return folder / "train.jsonl.gz", len(bad)


def fit_on(corpus, exp_dir: Path):
    tokenizer = CharTokenizer.build(corpus.texts())
    torch.manual_seed(0)
    model = LAS(tiny_config(vocab_size=tokenizer.vocab_size))
    return fit(
        model,
        tokenizer,
        corpus,
        TrainerOptions(exp_dir=str(exp_dir), max_epochs=1, device="cpu", stats_batches=2),
        OptimizerOptions(warmup_steps=1),
        LoaderConfig(max_duration=4.0, num_buckets=1),
        None,
        DecodingOptions(beam_size=1),
    )


def test_training_skips_and_counts_bad_utterances(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="asr")
    manifest, num_bad = hostile_manifest(tmp_path)
    corpus = ManifestCorpus(str(manifest), str(tmp_path / "dev.jsonl.gz"))
    with no_hang():
        fit_on(corpus, tmp_path / "exp")
    assert f"{num_bad} skipped" in caplog.text  # the epoch's summary line
    for name in ("missing.wav", "text.wav", "nan.wav", "truncated.flac"):
        assert any(name in r.message and r.levelname == "WARNING" for r in caplog.records), name
    assert (tmp_path / "exp" / "last.pt").exists() and (tmp_path / "exp" / "best.pt").exists()


def test_training_on_nothing_usable_says_so(tmp_path):
    cuts = [cut_of(bad_recording(tmp_path / f"missing{i}.wav", f"missing{i}"), "one") for i in range(3)]
    CutSet.from_cuts(cuts).to_file(tmp_path / "train.jsonl.gz")
    corpus = ManifestCorpus(str(tmp_path / "train.jsonl.gz"), str(tmp_path / "train.jsonl.gz"))
    with pytest.raises(TrainingError, match="no usable audio"):
        fit_on(corpus, tmp_path / "exp")
    assert not os.path.exists(tmp_path / "exp" / "last.pt")


def test_a_manifest_that_is_not_utf8_is_one_clear_line(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b'\xff\xfe{"id": "x"}\n')
    command = [
        str(Path(sys.executable).parent / "asr-train"),
        "experiment=digits_smoke",
        f"exp_dir={tmp_path / 'exp'}",
        f"data.corpus.train_clips={tmp_path / 'train.jsonl'}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "ERROR" in line]
    assert "cannot read the training data" in line and "train.jsonl" in line and "utf-8" in line
