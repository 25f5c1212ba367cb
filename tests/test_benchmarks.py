"""The scripts in benchmarks/ run and print their figures (tiny models, generated audio, one repeat)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import lhotse
import numpy as np
import pytest
import soundfile
import torch

from asr.checkpoint import model_state, save_checkpoint
from asr.decoding import DecodingOptions, decode
from asr.model import LAS
from asr.model.recurrence import cpu_has_fast_bf16
from asr.tokenizer import CharTokenizer
from tests.conftest import REPO, tiny_config

BENCHMARKS = REPO / "benchmarks"


pytestmark = pytest.mark.usefixtures("one_thread")


def _module(name: str):
    """Import benchmarks/<name>.py, which is a script folder, not a package."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tokenizer = CharTokenizer.build(["one two three"])
    torch.manual_seed(0)
    model = LAS(tiny_config(vocab_size=tokenizer.vocab_size))
    with torch.no_grad():
        model.decoder.output.bias[tokenizer.eos_id] += 3.0  # a random model: end soon
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(model_state(model, tokenizer), path)
    return path


def test_decode_speed_prints_a_table_and_the_figures(checkpoint):
    arguments = ["--model", str(checkpoint), "--data", "generated", "--num-utterances", "3"]
    arguments += ["--repeats", "1", "--threads", "1"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "decode_speed.py"), *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[1].startswith("| batch | search | batched RTF |")
    rows = [[cell.strip() for cell in line.split("|")[1:3]] for line in lines[3:9]]
    searches = ["greedy", "beam 10", "beam 10 + CTC 0.3"]
    assert [search for _, search in rows] == searches * 2
    assert [batch.split()[0] for batch, _ in rows] == ["mixed"] * 3 + ["similar"] * 3
    assert lines[-1].startswith("RESULT ")
    summary = json.loads(lines[-1].removeprefix("RESULT "))
    assert summary["num_utterances"] == 3 and summary["threads"] == 1 and summary["device"] == "cpu"
    assert list(summary["batches"]) == ["mixed", "similar"]
    for batch in summary["batches"].values():
        shortest, longest = batch["utterance_seconds"]
        assert batch["num_utterances"] == 3 and 0 < shortest <= longest
        assert 3 * shortest <= batch["audio_seconds"] <= 3 * longest
        for row in batch["searches"].values():
            assert row["batched_rtf"] > 0 and row["one_at_a_time_rtf"] > 0
            assert row["speedup"] == pytest.approx(row["one_at_a_time_seconds"] / row["batched_seconds"])
            assert row["batched_utterances_per_second"] == pytest.approx(3 / row["batched_seconds"])
            assert row["batched_rtf"] == pytest.approx(row["batched_seconds"] / batch["audio_seconds"])
            assert row["search_batched_seconds"] > 0 and row["search_one_at_a_time_seconds"] > 0
            assert row["search_speedup"] == pytest.approx(
                row["search_one_at_a_time_seconds"] / row["search_batched_seconds"]
            )
    # the generated similar-length batch spans 2.4-2.6 s, the mixed one more
    similar = summary["batches"]["similar"]["utterance_seconds"]
    assert 2.4 <= similar[0] <= similar[1] <= 2.6


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_the_benchmarks_refuse_cuda_on_a_machine_without_it(capsys):
    assert _module("decode_speed").main(["--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "epoch_speed.py"), "--device", "cuda"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2 and "CUDA is not available" in result.stderr


def test_the_default_model_is_digits_sized_and_never_ends_early():
    decode_speed = _module("decode_speed")
    torch.manual_seed(0)
    model = decode_speed.fresh_digits_model()
    assert model.config.features.sample_rate == 8000
    assert 2_000_000 < sum(p.numel() for p in model.parameters()) < 3_000_000
    wave = decode_speed.generated_utterance(seed=0, sample_rate=8000)
    assert torch.equal(wave, decode_speed.generated_utterance(seed=0, sample_rate=8000))  # deterministic
    waves, lengths = decode_speed.pad([wave])
    with torch.no_grad():
        frames = int(model.encode(waves, lengths).lengths[0])
    (hypothesis,) = decode(model, waves, lengths, DecodingOptions(beam_size=1, ctc_weight=0.0))
    assert hypothesis.ended_by == "max_length" and len(hypothesis.tokens) == 2 * frames


def test_longest_repeat_counts_back_to_back_ngrams():
    longest_repeat = _module("long_strings").longest_repeat
    assert longest_repeat(["five", "four", "five", "four", "five", "four", "one"]) == 3
    assert longest_repeat(["seven", "seven", "seven", "six"]) == 3
    assert longest_repeat(["one", "two", "three"]) == 1
    assert longest_repeat([]) == 0


def _cuts(folder: Path, seconds: list[int]) -> list:
    """Cuts of constant audio, `seconds[i]` long, with the text word<i>."""
    cuts = []
    for index, length in enumerate(seconds):
        path = folder / f"string{index}.flac"
        soundfile.write(path, np.full(8000 * length, 0.1, dtype=np.float32), 8000)
        cut = lhotse.Recording.from_file(path).to_cut()
        cut.supervisions = [lhotse.SupervisionSegment(cut.id, cut.id, 0, cut.duration, text=f"word{index}")]
        cuts.append(cut)
    return cuts


def test_decode_speed_times_both_batches_unless_told_one():
    parse = _module("decode_speed").build_parser().parse_args
    assert parse([]).batches == "both"
    assert parse(["--batches", "mixed"]).batches == "mixed"
    assert parse(["--similar-lengths"]).batches == "similar"  # the older spelling still works
    with pytest.raises(SystemExit):
        parse(["--batches", "sorted"])


def test_decode_speed_takes_the_first_or_the_median_length_utterances(tmp_path):
    load_utterances = _module("decode_speed").load_utterances
    manifest = tmp_path / "cuts.jsonl.gz"
    lhotse.CutSet.from_cuts(_cuts(tmp_path, [5, 1, 4, 2, 3])).to_file(manifest)
    first = load_utterances(str(manifest), 3, 8000, similar_lengths=False)
    assert [len(wave) // 8000 for wave in first] == [5, 1, 4]  # by id: string0, string1, string2
    median = load_utterances(str(manifest), 3, 8000, similar_lengths=True)
    assert [len(wave) // 8000 for wave in median] == [4, 2, 3]  # durations 2-4 s, in id order


def test_long_recordings_are_built_deterministically(tmp_path):
    long_recording = _module("long_recording")
    cuts = _cuts(tmp_path, [1, 2, 3])
    first = long_recording.build_recording(cuts, 0.2, seed=0, path=tmp_path / "a.flac")
    second = long_recording.build_recording(cuts, 0.2, seed=0, path=tmp_path / "b.flac")
    assert first == second and (tmp_path / "a.flac").read_bytes() == (tmp_path / "b.flac").read_bytes()
    seconds, reference, num_strings = first
    assert reference.split()[:4] == ["word0", "word1", "word2", "word0"]  # cycles through the strings
    assert num_strings == len(reference.split()) and 9 <= seconds <= 12


def test_robustness_writes_each_condition_and_scores_it(checkpoint, tmp_path):
    rate, recordings = 8000, []
    for index in range(2):
        wave = 0.1 * np.sin(2 * np.pi * (200 + 100 * index) * np.arange(rate) / rate)
        path = tmp_path / f"r{index}.wav"
        soundfile.write(path, wave, rate)
        recordings.append(lhotse.Recording.from_file(path, recording_id=f"r{index}"))
    cuts = lhotse.CutSet.from_manifests(recordings=lhotse.RecordingSet.from_recordings(recordings))
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    (tmp_path / "ref.txt").write_text("".join(f"{cut.id} one two\n" for cut in cuts))
    conditions = ["clean", "dc offset", "hum 60 Hz", "44.1 kHz stereo", "ogg vorbis"]
    arguments = ["--model", str(checkpoint), "--cuts", str(tmp_path / "cuts.jsonl.gz")]
    arguments += ["--ref", str(tmp_path / "ref.txt"), "--out", str(tmp_path / "out"), "--beam-size", "1"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "robustness.py"), *arguments, "--conditions", *conditions],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "%" in line]
    assert [row.split("|")[1].strip() for row in rows] == conditions
    figures = json.loads(result.stdout.splitlines()[-1].removeprefix("RESULT "))["results"]
    assert set(figures) == set(conditions) and all(row["words"] == 4 for row in figures.values())
    first = next(iter(cuts)).id
    offset, _ = soundfile.read(tmp_path / "out" / "dc_offset" / f"{first}.wav")
    assert abs(offset.mean() - 0.02) < 1e-3
    hum, _ = soundfile.read(tmp_path / "out" / "hum_60_Hz" / f"{first}.wav")
    clean, _ = soundfile.read(tmp_path / "out" / "clean" / f"{first}.wav")
    snr = 10 * np.log10(np.mean(clean**2) / np.mean((hum - clean) ** 2))
    assert abs(snr - 10) < 0.2
    stereo, stereo_rate = soundfile.read(tmp_path / "out" / "441_kHz_stereo" / f"{first}.wav")
    assert stereo_rate == 44100 and stereo.shape == (44100, 2)
    assert soundfile.info(tmp_path / "out" / "ogg_vorbis" / f"{first}.ogg").format == "OGG"


def test_robustness_pitch_and_tempo_move_only_what_they_name():
    """Pitch +3 semitones keeps the length and moves a tone by 2^(3/12); tempo 1.25 keeps the tone and
    shortens the recording by 1.25; both on a speech-sized vocoder frame (64 ms), not 2048 samples."""
    robustness = _module("robustness")
    rate = 8000
    assert robustness.speech_fft_size(8000) == 512 and robustness.speech_fft_size(16000) == 1024
    wave = 0.3 * np.sin(2 * np.pi * 200.0 * np.arange(2 * rate) / rate)

    def peak_hz(signal):
        middle = signal[rate // 2 : rate // 2 + rate // 2]  # 0.5 s away from the edges: 2 Hz bins
        return np.argmax(np.abs(np.fft.rfft(middle * np.hanning(len(middle))))) * rate / len(middle)

    higher = robustness.CONDITIONS["pitch +3"](wave, rate, None)
    assert len(higher) == len(wave) and abs(peak_hz(higher) - 200 * 2 ** (3 / 12)) < 4
    faster = robustness.CONDITIONS["tempo 1.25"](wave, rate, None)
    assert abs(len(faster) - len(wave) / 1.25) <= 1 and abs(peak_hz(faster) - 200) < 4


SHARED_BENCH = REPO.parent / "shared" / "bench"


def _contract_row(script: str) -> dict:
    """One training step of benchmarks/<script>.py through the shared harness -> its RESULT dict."""
    command = [sys.executable, str(BENCHMARKS / f"{script}.py"), "--bench-dir", str(SHARED_BENCH)]
    command += ["--warmup", "1", "--iters", "1", "--no-decode", "--wait-idle", "0", "--threads", "1"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])


@pytest.mark.skipif(
    not (SHARED_BENCH / "common.py").exists(), reason="needs the shared LAS benchmark contract"
)
def test_the_bf16_rows_keep_input_feeding_and_differ_only_in_precision_and_encoder():
    """peer_team_bf16.py is the contract's model (same parameters) under bf16 where the CPU has it;
    peer_team_bf16_pyramid.py drops the full-rate BiLSTM (fewer parameters, about half the FLOPs)."""
    exact, bf16, pyramid = (
        _contract_row(s) for s in ("peer_team", "peer_team_bf16", "peer_team_bf16_pyramid")
    )
    assert (exact["peer"], bf16["peer"], pyramid["peer"]) == ("team", "team_bf16", "team_bf16_pyramid")
    assert bf16["params"] == exact["params"] > pyramid["params"]
    assert pyramid["model_train_gflop"] < 0.6 * bf16["model_train_gflop"]
    fast_bf16 = cpu_has_fast_bf16()
    assert (bf16.get("autocast") == "bf16") == (pyramid.get("autocast") == "bf16") == fast_bf16
    assert exact.get("autocast") != "bf16"
    for row in (exact, bf16, pyramid):
        assert row["train_step_s"] > 0 and row["peak_rss_train_mib"] > 0


def test_evict_page_cache_visits_every_shared_library_and_refuses_a_missing_folder(tmp_path, capsys):
    evict = _module("evict_page_cache")
    (tmp_path / "lib" / "deep").mkdir(parents=True)
    for name in ("lib/libone.so", "lib/deep/libtwo.so.13", "lib/notes.txt"):
        (tmp_path / name).write_bytes(b"\0" * 8192)
    assert evict.evict([tmp_path]) == 2
    assert (tmp_path / "lib" / "libone.so").read_bytes() == b"\0" * 8192  # dropped from memory, not disk
    assert evict.main([str(tmp_path)]) == 0
    assert "2 shared libraries dropped" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        evict.main([str(tmp_path / "missing")])
