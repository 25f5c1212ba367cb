"""asr-evaluate end to end: a tiny random model over connected FSDD digit strings."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lhotse
import matplotlib.image
import numpy as np
import pytest
import soundfile
import torch

from asr.checkpoint import model_state, save_checkpoint
from asr.cli.evaluate import main
from asr.decoding import DecodingOptions
from asr.diagnostics import DEFINITIONS
from asr.evaluation import bucket_edges, make_buckets, utterance_diagnostics
from asr.metrics import read_transcripts, word_errors
from asr.model import LAS
from asr.tokenizer import CharTokenizer
from tests.conftest import FSDD_DIR, tiny_config

RATE = 8000
FAST = ["--beam-size", "2", "--device", "cpu"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PLOTS = ["attention_worst.png", "attention_median.png", "attention_longest.png", "wer_by_length.png"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.build(DIGITS)
    model = LAS(tiny_config(vocab_size=tokenizer.vocab_size))
    with torch.no_grad():
        # A random model ends late or never; an eos bias keeps its hypotheses a few characters long.
        model.decoder.output.bias[tokenizer.eos_id] += 2.0
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(model_state(model, tokenizer), path)
    return path


def _fsdd_clips(count: int) -> list[tuple[Path, str]]:
    """`count` (at most 28) vendored test clips of several speakers and digits, with their words."""
    with open(FSDD_DIR / "transcripts.tsv", encoding="utf-8") as file:
        rows = [row for row in csv.DictReader(file, delimiter="\t") if row["split"] == "test"]
    return [(FSDD_DIR / "recordings" / f"{row['utt_id']}.flac", row["text"]) for row in rows[::9][:count]]


def _string(path: Path, clips: list[tuple[Path, str]], pause_seconds: float = 0.2) -> str:
    """Write the clips one after another with pauses between them; returns the reference text."""
    silence = np.zeros(round(pause_seconds * RATE), np.float32)
    parts = [part for clip, _ in clips for part in (soundfile.read(clip, dtype="float32")[0], silence)]
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.concatenate(parts[:-1]), RATE)
    return " ".join(text for _, text in clips)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """Seven strings of 1 to 7 digits (0.3 to 4 s), a reference file, and a manifest with supervisions."""
    folder = tmp_path_factory.mktemp("corpus")
    clips = _fsdd_clips(28)
    starts = np.cumsum([0, *range(1, 7)])  # string n holds clips[starts[n] : starts[n] + n + 1]
    references = {
        f"string{n}": _string(folder / "audio" / f"string{n}.wav", clips[starts[n] : starts[n] + n + 1])
        for n in range(7)
    }
    (folder / "ref.txt").write_text("".join(f"{key}\t{text}\n" for key, text in references.items()))
    cuts = []
    for key, text in references.items():
        recording = lhotse.Recording.from_file(folder / "audio" / f"{key}.wav", recording_id=key)
        supervision = lhotse.SupervisionSegment(key, key, 0.0, recording.duration, text=text)
        cuts.append(recording.to_cut().with_id(key))
        cuts[-1].supervisions = [supervision]
    lhotse.CutSet.from_cuts(cuts).to_file(folder / "cuts.jsonl.gz")
    return folder, folder / "ref.txt"


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def report(tmp_path_factory, checkpoint, corpus) -> Path:
    folder, ref = corpus
    out = tmp_path_factory.mktemp("report")
    status = main(
        [*FAST, "--model", str(checkpoint), "--out", str(out), "--ref", str(ref), str(folder / "audio")]
    )
    assert status == 0
    return out


def test_the_report_folder_holds_every_item(report, checkpoint):
    for name in ["summary.json", "report.md", "errors.txt", "hypotheses.txt", "references.txt", *PLOTS]:
        assert (report / name).is_file(), name
    summary = json.loads((report / "summary.json").read_text())
    assert summary["num_utterances"] == 7 and summary["num_words"] == 28
    for key in ("percent", "substitutions", "deletions", "insertions"):
        assert key in summary["wer"] and key in summary["cer"]
    assert 0 <= summary["sentence_error_rate"] <= 100 and summary["real_time_factor"] > 0
    assert summary["settings"]["decoding"]["beam_size"] == 2
    assert summary["settings"]["decoding"]["ctc_weight"] == DecodingOptions().ctc_weight
    assert summary["settings"]["model_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert set(summary["diagnostics"]) == set(DEFINITIONS)
    assert {"duration", "words"} <= set(summary["buckets"]) and summary["definitions"] == DEFINITIONS


def test_bucket_wer_agrees_with_word_errors_on_the_bucket(report):
    summary = json.loads((report / "summary.json").read_text())
    references = read_transcripts(report / "references.txt")
    hypotheses = read_transcripts(report / "hypotheses.txt")
    assert len(summary["buckets"]["words"]) == 7  # one bucket per word count, 1 to 7
    for name, buckets in summary["buckets"].items():
        assert sorted(i for bucket in buckets for i in bucket["utterances"]) == sorted(references), name
        for bucket in buckets:
            ids = bucket["utterances"]
            counts = word_errors([references[i] for i in ids], [hypotheses[i] for i in ids])
            assert bucket["wer"]["percent"] == pytest.approx(100 * counts.error_rate, abs=1e-4)
            assert (
                bucket["wer"]["substitutions"],
                bucket["wer"]["deletions"],
                bucket["wer"]["insertions"],
            ) == (
                counts.substitutions,
                counts.deletions,
                counts.insertions,
            )
            assert bucket["num_words"] == counts.num_reference


def test_plots_open_and_the_report_explains_every_diagnostic(report):
    for name in PLOTS:
        image = matplotlib.image.imread(report / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 100, name
    markdown = (report / "report.md").read_text()
    for key, definition in DEFINITIONS.items():
        assert f"- **{key}**: {definition}" in markdown
    for heading in ("## WER by duration", "## WER by number of reference words", "## Attention diagnostics"):
        assert heading in markdown
    assert all(f"]({name})" in markdown for name in PLOTS)


def test_errors_are_listed_worst_first_with_alignments(report):
    blocks = (report / "errors.txt").read_text().strip().split("\n\n")
    assert len(blocks) == 7
    errors = [int(block.split()[1].removeprefix("errors=")) for block in blocks]
    assert errors == sorted(errors, reverse=True)
    assert all("\nREF:" in block and "\nHYP:" in block and "\nattention: " in block for block in blocks)


def test_confidence_groups_cover_every_utterance_and_the_auc_matches_errors_txt(report):
    confidence = json.loads((report / "summary.json").read_text())["confidence"]
    scores, wrong = {}, {}
    for block in (report / "errors.txt").read_text().strip().split("\n\n"):
        fields = dict(item.split("=", 1) for item in block.split("\n")[0].split()[1:])
        utterance = block.split()[0]
        scores[utterance], wrong[utterance] = float(fields["avg_logprob"]), int(fields["errors"]) > 0
    assert all(score < 0 for score in scores.values())
    groups = confidence["groups"]
    members = [utterance for group in groups for utterance in group["utterances"]]
    assert sorted(members) == sorted(scores) and len(groups) == 4  # 7 utterances: 2, 2, 2, 1
    ordered = [scores[utterance] for utterance in members]
    assert ordered == sorted(ordered)  # lowest first
    for group in groups:
        assert group["low"] == pytest.approx(min(scores[u] for u in group["utterances"]), abs=1e-4)
        assert group["num_utterances"] == len(group["utterances"])
    bad = [scores[u] for u in scores if wrong[u]]
    good = [scores[u] for u in scores if not wrong[u]]
    if bad and good:
        pairs = [(b < g) + 0.5 * (b == g) for b in bad for g in good]
        assert confidence["auc_errors"] == pytest.approx(sum(pairs) / len(pairs), abs=1e-3)
    else:
        assert confidence["auc_errors"] is None
    assert "## WER by confidence" in (report / "report.md").read_text()


def test_a_manifest_needs_no_reference_file_and_scores_the_same(tmp_path, capsys, checkpoint, corpus, report):
    folder, _ = corpus
    status, out, err = _run(capsys, *FAST, "--model", checkpoint, "--out", tmp_path, folder / "cuts.jsonl.gz")
    assert status == 0, err
    assert out.startswith("%WER") and "%CER" in out and "%SER" in out
    manifest_summary = json.loads((tmp_path / "summary.json").read_text())
    file_summary = json.loads((report / "summary.json").read_text())
    assert manifest_summary["wer"] == file_summary["wer"]
    assert manifest_summary["buckets"]["words"] == file_summary["buckets"]["words"]


def test_a_full_disk_still_prints_the_figures_and_keeps_the_old_report(
    tmp_path, capsys, checkpoint, corpus, report, monkeypatch
):
    folder, _ = corpus
    out = tmp_path / "report"
    out.mkdir()
    (out / "summary.json").write_text('{"an": "earlier report"}\n')
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    status, printed, err = _run(capsys, *FAST, "--model", checkpoint, "--out", out, folder / "cuts.jsonl.gz")
    assert status == 1 and "Traceback" not in err
    assert f"{out}: cannot write the report (No space left on device)" in err
    wer = json.loads((report / "summary.json").read_text())["wer"]
    assert printed.startswith(f"%WER {wer['percent']:.2f}")  # the evaluation's figures are not lost
    assert os.listdir(out) == ["summary.json"]  # no partial or temporary files
    assert (out / "summary.json").read_text() == '{"an": "earlier report"}\n'


def test_segmented_recordings_are_stitched(tmp_path, capsys, checkpoint):
    reference = _string(tmp_path / "audio" / "long.wav", _fsdd_clips(10), pause_seconds=0.6)
    (tmp_path / "ref.txt").write_text(f"long\t{reference}\n")
    argv = [*FAST, "--model", checkpoint, "--ref", tmp_path / "ref.txt", tmp_path / "audio"]
    status, _, err = _run(capsys, *argv, "--out", tmp_path / "out", "--max-segment-seconds", "3")
    assert status == 0, err
    header = (tmp_path / "out" / "errors.txt").read_text().splitlines()[0]
    ended_by = header.split("ended_by=")[1].split()[0].split(",")
    assert len(ended_by) >= 3  # one search per segment
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"]["decoding"]["max_segment_seconds"] == 3.0


def test_segment_diagnostics_are_combined_by_steps():
    forward, backward = torch.eye(4), torch.eye(2).flip(0)  # 4 steps forward, 2 steps reversed
    values = utterance_diagnostics([forward, backward], "one two", "one two three", stuck_steps=5)
    assert values["monotonicity"] == pytest.approx(4 / 6)  # 1 over 4 steps, 0 over 2 steps
    assert values["diagonality"] == pytest.approx((4 - 2) / 6)
    assert values["longest_peak_run"] == 1 and values["stuck"] == 0.0
    assert values["early_stop"] == 1.0 and values["looping"] == 0.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "have no reference (give --ref FILE)"),
        (["--ref", "{tmp}/missing.txt"], "missing.txt"),
        (["--ref", "{tmp}/partial.txt"], "1 of 2 recordings have no reference"),
        (["--beam-size", "0"], "--beam-size must be at least 1"),
        (["--stuck-steps", "1"], "--stuck-steps"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, checkpoint, corpus, extra, message):
    folder, _ = corpus
    (tmp_path / "partial.txt").write_text("string0\tzero\n")
    inputs = [folder / "audio" / "string0.wav", folder / "audio" / "string1.wav"]
    argv = ["--model", checkpoint, "--out", tmp_path / "out", *[arg.format(tmp=tmp_path) for arg in extra]]
    status, out, err = _run(capsys, *argv, *inputs)
    assert status == 2 and out == "" and message in err, err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        f"(default: {DecodingOptions().beam_size})" in help_text
        and "(default: decode them whole)" in help_text
    )


def test_buckets_hold_every_value_once():
    durations = [0.5, 1.0, 1.2, 2.0, 3.3, 4.0, 6.1, 6.1, 9.9, 12.0]
    edges = bucket_edges(durations, num_buckets=4)
    buckets = make_buckets(durations, edges)
    assert edges[0] <= min(durations) and edges[-1] >= max(durations)
    assert sorted(i for bucket in buckets for i in bucket.members) == list(range(len(durations)))
    words = [1, 2, 2, 3]
    assert [b.label for b in make_buckets(words, bucket_edges(words, integer=True), integer=True)] == [
        "1",
        "2",
        "3",
    ]


def test_installed_command_runs_from_any_folder(tmp_path, checkpoint, corpus):
    command = shutil.which("asr-evaluate", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.skip("asr-evaluate is not installed in this environment")
    folder, ref = corpus
    result = subprocess.run(
        [
            command,
            *FAST,
            "--model",
            str(checkpoint),
            "--out",
            "out",
            "--ref",
            str(ref),
            str(folder / "audio"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "report.md").is_file()


def test_a_language_model_is_fused_and_recorded(tmp_path, capsys, checkpoint, corpus):
    from asr.checkpoint import load_checkpoint
    from asr.lm import LanguageModelConfig, LSTMLanguageModel, language_model_state
    from asr.tokenizer import tokenizer_from_dict

    folder, ref = corpus
    tokenizer = tokenizer_from_dict(load_checkpoint(checkpoint)["tokenizer"])
    torch.manual_seed(1)
    lm = LSTMLanguageModel(LanguageModelConfig(tokenizer.vocab_size, embedding_dim=8, hidden_dim=16))
    save_checkpoint(language_model_state(lm, tokenizer), tmp_path / "lm.pt")
    inputs = [folder / "audio" / "string3.wav", "--ref", ref]
    args = ["--model", checkpoint, *FAST, *inputs]
    assert main([str(a) for a in [*args, "--out", tmp_path / "plain"]]) == 0
    lm_args = [*args, "--out", tmp_path / "fused", "--lm", tmp_path / "lm.pt", "--lm-weight", "2.0"]
    assert main([str(a) for a in lm_args]) == 0
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    fused = json.loads((tmp_path / "fused" / "summary.json").read_text())
    assert plain["settings"]["decoding"]["lm_weight"] == 0.0
    assert fused["settings"]["decoding"]["lm_weight"] == 2.0
    # a heavily weighted random LM changes what the random acoustic model writes
    assert (tmp_path / "plain" / "hypotheses.txt").read_text() != (
        tmp_path / "fused" / "hypotheses.txt"
    ).read_text()
    capsys.readouterr()
    status, out, err = _run(capsys, *args, "--out", tmp_path / "x", "--lm-weight", "0.5")
    assert status == 2 and "--lm-weight needs --lm" in err


def test_hum_is_removed_before_scoring_unless_kept(tmp_path, capsys, checkpoint):
    reference = _string(tmp_path / "clean" / "digits.wav", _fsdd_clips(4))
    clean, _ = soundfile.read(tmp_path / "clean" / "digits.wav", dtype="float64")
    time = np.arange(len(clean)) / RATE
    hum = np.sin(2 * np.pi * 60.0 * time) + 0.5 * np.sin(2 * np.pi * 120.0 * time + 1.0)
    hum *= np.sqrt(np.mean(clean**2) / np.mean(hum**2) / 10)  # 10 dB below the speech
    (tmp_path / "hum").mkdir()
    soundfile.write(tmp_path / "hum" / "digits.wav", clean + hum, RATE, subtype="FLOAT")
    (tmp_path / "ref.txt").write_text(f"digits\t{reference}\n")
    common = [*FAST, "--model", checkpoint, "--ref", tmp_path / "ref.txt"]
    summaries = {}
    for name, extra in [("clean", []), ("hum", []), ("kept", ["--keep-hum"])]:
        folder = tmp_path / ("clean" if name == "clean" else "hum")
        status, _, err = _run(capsys, *common, *extra, "--out", tmp_path / f"out_{name}", folder)
        assert status == 0, err
        assert ("mains hum removed from 1 of 1 recordings" in err) == (name == "hum")
        summaries[name] = json.loads((tmp_path / f"out_{name}" / "summary.json").read_text())
    assert summaries["hum"]["settings"]["decoding"]["remove_mains_hum"] is True
    assert summaries["kept"]["settings"]["decoding"]["remove_mains_hum"] is False
