import os
import shutil
import subprocess
import sys
from pathlib import Path

import lhotse
import numpy as np
import pytest
import soundfile
import torch

import asr.cli.transcribe as transcribe_cli
from asr.checkpoint import load_model, model_state, save_checkpoint
from asr.cli.transcribe import main
from asr.decoding import DecodingOptions, decode
from asr.features import FeatureConfig
from asr.model import LAS, AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
from asr.segmentation import SegmentationConfig
from asr.tokenizer import CharTokenizer
from asr.transcription import (
    FileAudio,
    Piece,
    Utterance,
    make_batches,
    model_decoder,
    transcribe,
    unique_ids,
)

MODEL_RATE = 8000
# Small beams keep the random model's searches short; > 1 still exercises batched beam search.
FAST = ["--beam-size", "2", "--ctc-weight", "0.3"]


def _build_checkpoint(path: Path, **extra) -> Path:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.build(["abc def"])
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        features=FeatureConfig(sample_rate=MODEL_RATE, num_mel_bins=20),
        encoder=EncoderConfig(input_dim=20, hidden_dim=16, num_layers=0, num_pyramid_levels=3, ctc_level=2),
        attention=AttentionConfig(attention_dim=16),
        decoder=DecoderConfig(embedding_dim=8, hidden_dim=16),
    )
    model = LAS(config)
    with torch.no_grad():
        # A random model ends late or never; a strong eos bias keeps its hypotheses short.
        model.decoder.output.bias[tokenizer.eos_id] += 3.0
    save_checkpoint({**model_state(model, tokenizer), **extra}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _build_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


def _speechlike(seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """Noise modulated at syllable rate: the model hears something different in every file."""
    rng = np.random.default_rng(seed)
    time = np.arange(round(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * time)
    signal = 0.3 * envelope * rng.standard_normal(time.size)
    if channels > 1:
        signal = np.stack([signal, 0.5 * signal], axis=1)
    return signal.astype(np.float32)


def _write(
    path: Path, seconds: float, rate: int = MODEL_RATE, seed: int = 0, channels: int = 1, **kw
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, _speechlike(seconds, rate, seed, channels), rate, **kw)
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _lines(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines()]


def test_outputs_in_input_order_with_file_ids(tmp_path, capsys, checkpoint):
    inputs = [
        _write(tmp_path / "zeta.wav", 1.5, rate=8000, seed=1),
        _write(tmp_path / "alpha.flac", 0.7, rate=16000, seed=2, channels=2),
        _write(tmp_path / "mid.ogg", 2.2, rate=44100, seed=3),
    ]
    segments = tmp_path / "segments.tsv"
    status, out, err = _run(
        capsys, "--model", checkpoint, *FAST, "--device", "cpu", "--segments", segments, *inputs
    )
    assert status == 0, err
    rows = _lines(out)
    assert [row[0] for row in rows] == ["zeta", "alpha", "mid"]
    assert all(len(row) == 2 for row in rows)
    assert "3 files, 4.4 s of audio" in err and "real-time factor" in err
    # Short recordings are one segment each, whole (not trimmed), with the same text.
    segment_rows = _lines(segments.read_text())
    assert [row[:3] for row in segment_rows] == [
        ["zeta", "0.00", "1.50"],
        ["alpha", "0.00", "0.70"],
        ["mid", "0.00", "2.20"],
    ]
    assert [row[3] for row in segment_rows] == [row[1] for row in rows]


def test_no_audio_found_is_a_usage_error(tmp_path, capsys, checkpoint):
    (tmp_path / "empty_folder").mkdir()
    status, out, err = _run(capsys, "--model", checkpoint, tmp_path / "empty_folder")
    assert status == 2 and out == "" and "no audio files found" in err


def test_batching_does_not_change_results(tmp_path, capsys, checkpoint):
    inputs = [_write(tmp_path / f"u{i}.wav", 0.4 + 0.37 * i, seed=i) for i in range(7)]
    outputs = []
    for batch_size in ("1", "8"):
        status, out, err = _run(capsys, "--model", checkpoint, *FAST, "--batch-size", batch_size, *inputs)
        assert status == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]
    assert len(_lines(outputs[0])) == 7


def test_a_length_bonus_lengthens_the_outputs(tmp_path, capsys, checkpoint):
    inputs = [_write(tmp_path / f"u{i}.wav", 0.6 + 0.3 * i, seed=i) for i in range(4)]
    lengths = []
    for bonus in ("0", "3"):
        status, out, err = _run(
            capsys, "--model", checkpoint, "--beam-size", "3", "--length-bonus", bonus, *inputs
        )
        assert status == 0, err
        lengths.append(sum(len(fields[1]) for fields in _lines(out) if len(fields) > 1))
    assert lengths[1] > lengths[0]


def test_folders_are_searched_recursively(tmp_path, capsys, checkpoint):
    _write(tmp_path / "corpus" / "b.wav", 0.5, seed=1)
    _write(tmp_path / "corpus" / "deep" / "er" / "a.flac", 0.5, seed=2)
    _write(tmp_path / "corpus" / ".hidden" / "c.wav", 0.5, seed=3)
    (tmp_path / "corpus" / "notes.txt").write_text("not audio")
    status, out, err = _run(capsys, "--model", checkpoint, *FAST, tmp_path / "corpus")
    assert status == 0, err
    assert sorted(row[0] for row in _lines(out)) == ["a", "b"]


def test_shared_ids_are_made_unique_by_relative_path(tmp_path, capsys, checkpoint):
    first = _write(tmp_path / "x" / "a.wav", 0.5, seed=1)
    _write(tmp_path / "y" / "a.wav", 0.6, seed=2)
    third = _write(tmp_path / "y" / "a.flac", 0.7, seed=3)
    status, out, err = _run(capsys, "--model", checkpoint, *FAST, first, tmp_path / "y", first)
    assert status == 0, err
    assert [row[0] for row in _lines(out)] == ["x/a.wav", "y/a.flac", "y/a.wav", "x/a.wav#2"]
    assert f"{third} is written as 'y/a.flac'" in err
    assert _lines(out)[0][1] == _lines(out)[3][1]  # the same file twice, the same text


def test_ids_keep_no_whitespace():
    utterances = [
        Utterance("my file", FileAudio(Path("my file.wav"))),
        Utterance("b", FileAudio(Path("b.wav"))),
    ]
    assert unique_ids(utterances) == ["my_file", "b"]


def test_manifest_inputs_use_cut_ids(tmp_path, capsys, checkpoint):
    long_recording = lhotse.Recording.from_file(_write(tmp_path / "audio" / "rec.flac", 3.0, rate=16000))
    cuts = lhotse.CutSet.from_cuts(
        [
            long_recording.to_cut().truncate(offset=1.0, duration=1.2).with_id("second-part"),
            long_recording.to_cut().truncate(offset=0.0, duration=0.8).with_id("first-part"),
        ]
    )
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    recordings = lhotse.RecordingSet.from_recordings(
        [
            lhotse.Recording.from_file(
                _write(tmp_path / "audio" / "other.wav", 0.9, seed=5), recording_id="rec-7"
            )
        ]
    )
    recordings.to_file(tmp_path / "recordings.json")
    status, out, err = _run(
        capsys, "--model", checkpoint, *FAST, tmp_path / "cuts.jsonl.gz", tmp_path / "recordings.json"
    )
    assert status == 0, err
    assert [row[0] for row in _lines(out)] == ["second-part", "first-part", "rec-7"]
    assert "3 files, 2.9 s of audio" in err


def test_bad_files_are_reported_and_the_rest_transcribed(tmp_path, capsys, checkpoint):
    good = [_write(tmp_path / "good1.wav", 0.6, seed=1), _write(tmp_path / "good2.flac", 0.8, seed=2)]
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n")
    samples = _speechlike(1.0, MODEL_RATE, 3)
    samples[100] = np.nan
    soundfile.write(tmp_path / "nan.wav", samples, MODEL_RATE, subtype="FLOAT")
    bad = [tmp_path / "empty.wav", tmp_path / "text.wav", tmp_path / "nan.wav", tmp_path / "missing.wav"]
    output = tmp_path / "out.txt"
    status, out, err = _run(capsys, "--model", checkpoint, *FAST, "--output", output, good[0], *bad, good[1])
    assert status == 1
    assert out == ""
    assert [row[0] for row in _lines(output.read_text())] == ["good1", "good2"]
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 4
    for path, problem in zip(bad, ["empty", "not", "NaN", "no such file"], strict=True):
        assert any(str(path) in line and problem in line for line in error_lines), (path, err)
    assert "Traceback" not in err and "2 files" in err and "4 failed" in err


def test_scores_are_the_searchs_acoustic_log_probability_per_step(tmp_path, capsys, checkpoint):
    speech = [_write(tmp_path / "one.wav", 0.6, seed=1), _write(tmp_path / "two.wav", 1.1, seed=2)]
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(MODEL_RATE), MODEL_RATE)
    scores = tmp_path / "scores.tsv"
    status, out, err = _run(capsys, "--model", checkpoint, *FAST, "--scores", scores, *speech, silent)
    assert status == 0, err
    rows = _lines(scores.read_text())
    assert [row[0] for row in rows] == ["one", "two", "silent"] == [row[0] for row in _lines(out)]
    assert rows[2][1] == ""  # nothing decoded, no score
    model, _ = load_model(checkpoint)
    options = DecodingOptions(beam_size=2, ctc_weight=0.3)
    for row, path in zip(rows, speech, strict=False):
        wave = torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None]
        [hypothesis] = decode(model, wave, torch.tensor([wave.shape[1]]), options)
        attention, ctc = hypothesis.attention_score, hypothesis.ctc_score
        expected = (0.7 * attention + 0.3 * ctc) / (len(hypothesis.tokens) + 1)
        assert float(row[1]) == pytest.approx(expected, abs=1e-4) and float(row[1]) < 0


def test_words_are_the_transcripts_words_in_time_order_within_the_recording(tmp_path, capsys, checkpoint):
    audio = [_write(tmp_path / "one.wav", 1.0, seed=1), _write(tmp_path / "two.wav", 2.5, seed=2)]
    words = tmp_path / "words.tsv"
    status, out, err = _run(
        capsys, "--model", checkpoint, *FAST, "--words", words, "--max-segment-seconds", 1.5, *audio
    )
    assert status == 0, err
    rows = _lines(words.read_text())
    for utterance_id, text in _lines(out):
        mine = [row for row in rows if row[0] == utterance_id]
        assert [row[3] for row in mine] == text.split()  # every word, once, in order
        times = [(float(row[1]), float(row[2])) for row in mine]
        assert all(0 <= start < end <= 2.5 + 1e-6 for start, end in times)
        assert all(
            end <= next_start + 1e-6 for (_, end), (next_start, _) in zip(times, times[1:], strict=False)
        )
    assert {row[0] for row in rows} == {"one", "two"}
    assert (
        max(float(row[2]) for row in rows if row[0] == "two") > 1.5
    )  # a later segment's, offset by its start


def test_min_avg_logprob_empties_the_texts_scored_below_it(tmp_path, capsys, checkpoint):
    audio = [
        _write(tmp_path / f"{name}.wav", 0.6 + 0.2 * seed, seed=seed) for seed, name in enumerate("abcd")
    ]
    scores = tmp_path / "scores.tsv"
    status, out, err = _run(capsys, "--model", checkpoint, *FAST, "--scores", scores, *audio)
    assert status == 0, err
    texts, values = dict(_lines(out)), {key: float(value) for key, value in _lines(scores.read_text())}
    assert all(texts.values()), texts  # the random model names something for every file
    ranked = sorted(values, key=values.get)
    threshold = (values[ranked[1]] + values[ranked[2]]) / 2  # the two lowest fall below it
    status, out, err = _run(
        capsys, "--model", checkpoint, *FAST, "--min-avg-logprob", threshold, "--scores", scores, *audio
    )
    assert status == 0, err
    kept = dict(_lines(out))
    assert {key for key, text in kept.items() if not text} == set(ranked[:2])
    assert all(kept[key] == texts[key] for key in ranked[2:])
    notes = [line for line in err.splitlines() if "--min-avg-logprob" in line]
    assert sorted(line.split(":")[2].strip() for line in notes) == sorted(ranked[:2])
    assert {key: float(value) for key, value in _lines(scores.read_text())} == values  # still scored


def test_an_interrupted_run_keeps_what_it_finished_apart(tmp_path, capsys, checkpoint, monkeypatch):
    # 1.4 s, 1.0 s and 0.6 s: one a batch, longest first; Ctrl-C while the second is decoded
    audio = [
        _write(tmp_path / f"{name}.wav", seconds, seed=seed)
        for seed, (name, seconds) in enumerate([("short", 0.6), ("long", 1.4), ("middle", 1.0)])
    ]
    status, complete, _ = _run(capsys, "--model", checkpoint, *FAST, *audio)
    assert status == 0
    real_decoder, calls = transcribe_cli.model_decoder, []

    def decoder_interrupted_on_second_batch(*args, **kwargs):
        decode = real_decoder(*args, **kwargs)

        def decode_texts(waves, wave_lens):
            calls.append(len(waves))
            if len(calls) == 2:
                raise KeyboardInterrupt
            return decode(waves, wave_lens)

        return decode_texts

    monkeypatch.setattr(transcribe_cli, "model_decoder", decoder_interrupted_on_second_batch)
    output = tmp_path / "out.txt"
    output.write_text("an earlier run\n")
    status, out, err = _run(
        capsys, "--model", checkpoint, *FAST, "--batch-size", 1, "--output", output, *audio
    )
    assert status == 130 and out == "" and "Traceback" not in err
    assert output.read_text() == "an earlier run\n"
    expected = [row for row in _lines(complete) if row[0] == "long"]  # the first batch: the longest
    assert _lines((tmp_path / "out.txt.partial").read_text()) == expected
    assert f"interrupted; the 1 of 3 recordings transcribed so far are in {output}.partial" in err
    calls.clear()
    status, out, err = _run(capsys, "--model", checkpoint, *FAST, "--batch-size", 1, *audio)
    assert status == 130 and _lines(out) == expected and "written above" in err
    calls[:] = ["a batch before"]  # interrupted in the first batch: nothing finished, nothing written
    status, out, err = _run(
        capsys, "--model", checkpoint, *FAST, "--batch-size", 1, "--output", output, *audio
    )
    assert status == 130 and out == "" and "before any recording was transcribed; nothing written" in err
    assert output.read_text() == "an earlier run\n"


def test_a_full_disk_keeps_the_old_output_and_prints_the_transcripts(
    tmp_path, capsys, checkpoint, monkeypatch
):
    audio = [_write(tmp_path / "one.wav", 0.6, seed=1), _write(tmp_path / "two.wav", 0.8, seed=2)]
    output, segments = tmp_path / "out.txt", tmp_path / "segments.txt"
    status, out, _ = _run(capsys, "--model", checkpoint, *FAST, *audio)
    assert status == 0
    output.write_text("the transcripts of an earlier run\n")
    segments.write_text("earlier segments\n")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    status, fallback, err = _run(
        capsys, "--model", checkpoint, *FAST, "--output", output, "--segments", segments, *audio
    )
    assert status == 1
    assert fallback == out  # the decoding is not lost: the transcripts follow on stdout
    assert output.read_text() == "the transcripts of an earlier run\n"  # not truncated
    assert segments.read_text() == "earlier segments\n"
    assert sorted(os.listdir(tmp_path)) == ["one.wav", "out.txt", "segments.txt", "two.wav"]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 2 and "Traceback" not in err, err
    assert f"{output}: cannot write the transcripts (No space left on device)" in errors[1]
    assert "follow on stdout" in errors[1] and str(segments) in errors[0]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "{tmp}/missing.pt"], "checkpoint not found"),
        (["--model", "{tmp}/corrupt.pt"], "not a readable checkpoint"),
        (["--model", "{model}", "--lm-weight", "0.5"], "--lm-weight needs --lm"),
        (["--model", "{model}", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--model", "{model}", "--device", "tpu"], "--device"),
        (["--model", "{model}", "--output", "{tmp}/no/such/folder/out.txt"], "cannot write"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, checkpoint, arguments, message):
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    audio = _write(tmp_path / "a.wav", 0.5)
    argv = [arg.format(tmp=tmp_path, model=checkpoint) for arg in arguments]
    status, out, err = _run(capsys, *argv, audio)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(tmp_path, capsys, checkpoint):
    status, _, err = _run(capsys, "--model", checkpoint, "--device", "cuda", _write(tmp_path / "a.wav", 0.5))
    assert status == 2 and "CUDA is not available" in err


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    defaults = DecodingOptions()
    assert (
        f"(default: {defaults.beam_size})" in help_text and f"(default: {defaults.ctc_weight})" in help_text
    )
    assert "(default: auto)" in help_text and "max_utterance_seconds, else 20" in help_text


def test_checkpoint_max_utterance_seconds_sets_the_segment_length(tmp_path, capsys):
    model = _build_checkpoint(tmp_path / "model.pt", max_utterance_seconds=4.0)
    audio = _write(tmp_path / "long.wav", 9.0)
    segments_path = tmp_path / "segments.tsv"
    status, out, err = _run(capsys, "--model", model, *FAST, "--segments", segments_path, audio)
    assert status == 0, err
    segments = [(float(row[1]), float(row[2])) for row in _lines(segments_path.read_text())]
    assert len(segments) >= 3 and all(end - start <= 4.0 + 1e-6 for start, end in segments)


def _burst_recording(path: Path, minutes: int) -> Path:
    """Speech-like bursts of 2-6 s with 0.5-1.5 s pauses, written a minute at a time."""
    rng = np.random.default_rng(0)
    with soundfile.SoundFile(path, "w", samplerate=MODEL_RATE, channels=1, subtype="PCM_16") as audio_file:
        for minute in range(minutes):
            parts, length = [], 0.0
            while length < 60.0:
                burst, pause = rng.uniform(2.0, 6.0), rng.uniform(0.5, 1.5)
                parts += [
                    _speechlike(burst, MODEL_RATE, seed=minute * 100 + len(parts)),
                    np.zeros(round(pause * MODEL_RATE), np.float32),
                ]
                length += burst + pause
            audio_file.write(np.concatenate(parts)[: 60 * MODEL_RATE])
    return path


@pytest.mark.slow
def test_long_recording_is_segmented_decoded_and_joined(tmp_path, capsys, checkpoint):
    audio = _burst_recording(tmp_path / "lecture.wav", minutes=3)
    segments_path, output = tmp_path / "segments.tsv", tmp_path / "out.txt"
    status, _, err = _run(
        capsys,
        "--model",
        checkpoint,
        *FAST,
        "--max-segment-seconds",
        "15",
        "--segments",
        segments_path,
        "--output",
        output,
        audio,
    )
    assert status == 0, err
    rows = _lines(segments_path.read_text())
    times = [(float(row[1]), float(row[2])) for row in rows]
    assert len(rows) >= 12 and all(row[0] == "lecture" for row in rows)
    assert all(0 < end - start <= 15.0 + 1e-6 for start, end in times)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(times, times[1:], strict=False))
    assert times[0][0] < 1.0 and times[-1][1] > 179.0
    [(utterance_id, text)] = _lines(output.read_text())
    assert utterance_id == "lecture"
    assert text == " ".join(row[3] for row in rows if row[3])
    assert "1 file, 180.0 s of audio" in err


def _spy_decoder(checkpoint: Path, record):
    """The checkpoint's real greedy decoder, calling record(waves, wave_lens) on every batch first."""
    model, tokenizer = load_model(checkpoint)
    decode = model_decoder(model, tokenizer, DecodingOptions(beam_size=1))

    def spy(waves, wave_lens):
        record(waves, wave_lens)
        return decode(waves, wave_lens)

    return spy


def test_only_a_batch_of_segments_is_loaded_at_a_time(tmp_path, checkpoint):
    # Spy on the real decoder: every batch it sees is a few segments, never the recording.
    audio = _burst_recording(tmp_path / "long.wav", minutes=1)
    batch_samples = []
    spy = _spy_decoder(checkpoint, lambda waves, wave_lens: batch_samples.append(waves.numel()))
    utterances = [Utterance("long", FileAudio(audio))]
    segmentation = SegmentationConfig(max_segment_seconds=8.0)
    report = transcribe(
        utterances,
        spy,
        MODEL_RATE,
        segmentation=segmentation,
        batch_size=2,
        max_batch_seconds=100.0,
        on_error=pytest.fail,
        progress=False,
    )
    assert report.num_files == 1 and report.audio_seconds == pytest.approx(60.0)
    assert len(utterances[0].segments) >= 8
    assert max(batch_samples) <= 2 * 8.0 * MODEL_RATE  # two segments of at most 8 s
    assert sum(batch_samples) < 2 * 60 * MODEL_RATE


def test_digital_silence_is_not_decoded_and_gets_no_text(tmp_path, capsys, checkpoint):
    # The random model names some tokens for any input, as a trained one names digits for silence.
    speech = _write(tmp_path / "speech.wav", 1.2, seed=4)
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(MODEL_RATE), MODEL_RATE)
    faint = tmp_path / "faint.wav"  # -40 dBFS noise: quiet, but above the silence floor
    soundfile.write(faint, 0.01 * _speechlike(1.0, MODEL_RATE, seed=5), MODEL_RATE)
    long_silent = tmp_path / "long_silent.wav"  # longer than a segment: the VAD finds no speech
    soundfile.write(long_silent, np.zeros(25 * MODEL_RATE), MODEL_RATE)
    blip = tmp_path / "blip.wav"  # loud, but 40 ms: shorter than any word (min_speech_seconds)
    soundfile.write(blip, _speechlike(1.0, MODEL_RATE, seed=6)[: MODEL_RATE // 25], MODEL_RATE)
    segments = tmp_path / "segments.tsv"
    status, out, err = _run(
        capsys, "--model", checkpoint, *FAST, "--segments", segments, silent, speech, faint, long_silent, blip
    )
    assert status == 0, err
    assert "5 files, 28.2 s of audio" in err  # a silent file is transcribed, to an empty text
    assert "note: silent: no speech found; empty text" in err and "faint:" not in err
    assert "note: long_silent: no speech found" in err and "note: blip: no speech found" in err
    rows = _lines(out)
    assert [row[0] for row in rows] == ["silent", "speech", "faint", "long_silent", "blip"]
    assert rows[0][1] == rows[3][1] == rows[4][1] == "" and rows[2][1] != ""
    # the silent file's row is left out of the batch: the others decode as they do alone
    status, alone, alone_err = _run(capsys, "--model", checkpoint, *FAST, speech)
    assert status == 0, alone_err
    assert _lines(alone) == [rows[1]]
    # no speech, no segment (as the pauses of a long recording)
    assert [row[0] for row in _lines(segments.read_text())] == ["speech", "faint"]


def test_the_decoder_never_sees_a_silent_recording(tmp_path, checkpoint):
    paths = [tmp_path / "a.wav", tmp_path / "b.wav"]
    soundfile.write(paths[0], np.zeros(4000), MODEL_RATE)
    _write(paths[1], 0.8, seed=6)
    seen = []
    spy = _spy_decoder(checkpoint, lambda waves, wave_lens: seen.append(wave_lens.tolist()))
    utterances = [Utterance(path.stem, FileAudio(path)) for path in paths]
    transcribe(
        utterances,
        spy,
        MODEL_RATE,
        segmentation=SegmentationConfig(),
        batch_size=8,
        max_batch_seconds=100.0,
        on_error=pytest.fail,
        progress=False,
    )
    assert seen == [[round(0.8 * MODEL_RATE)]]
    assert utterances[0].text == "" and utterances[0].segments == []
    assert len(utterances[1].segments) == 1


def test_batches_are_sorted_by_duration_and_capped():
    durations = [3.0, 9.0, 1.0, 9.0, 5.0]
    pieces = [Piece(i, 0, None, duration) for i, duration in enumerate(durations)]
    batches = make_batches(pieces, batch_size=2, max_batch_seconds=12.0)
    assert [[piece.utterance for piece in batch] for batch in batches] == [[1], [3], [4, 0], [2]]


def test_installed_command_runs_from_any_folder(tmp_path, checkpoint):
    command = shutil.which("asr-transcribe", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.skip("asr-transcribe is not installed in this environment")
    audio = _write(tmp_path / "clip.wav", 0.6)
    environment = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run(
        [command, "--model", str(checkpoint), *FAST, str(audio)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("clip\t")


def test_a_segmented_recordings_score_weighs_its_segments_by_steps():
    utterance = Utterance("long", FileAudio(Path("long.wav")))
    assert utterance.avg_logprob is None  # nothing decoded
    utterance.scores = [(-1.0, 4), (0.0, 0), (-3.0, 2)]  # the middle segment was silent
    assert utterance.avg_logprob == pytest.approx(-4.0 / 6)
