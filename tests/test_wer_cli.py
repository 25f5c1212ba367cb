import os
import subprocess
import sys

import pytest

from asr.cli.wer import main


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def files(tmp_path):
    reference = _write(tmp_path / "ref.txt", "u1\tThe cat sat.\nu2 hello world\nu3\ta b c d\n")
    hypothesis = _write(tmp_path / "hyp.txt", "u3 a b c d\nu1\tthe bat sat on\nu2 hello world\n")
    return tmp_path, reference, hypothesis


def test_prints_kaldi_summary_lines(files, capsys):
    _, reference, hypothesis = files
    assert main(["--ref", reference, "--hyp", hypothesis]) == 0
    # u1: cat -> bat (S), "on" inserted (I); 9 reference words. Characters: "the cat sat" (11)
    # -> "the bat sat on": 1 substitution + 3 insertions; 11 + 11 + 7 = 29 reference characters.
    assert capsys.readouterr().out.splitlines() == [
        "%WER 22.22 [ 2 / 9, 1 ins, 0 del, 1 sub ]",
        "%CER 13.79 [ 4 / 29, 3 ins, 0 del, 1 sub ]",
        "%SER 33.33 [ 1 / 3 ]",
    ]


def test_missing_hypothesis_is_an_error_naming_ids_and_file(files, capsys):
    tmp_path, reference, _ = files
    hypothesis = _write(tmp_path / "partial.txt", "u1 the cat sat\n")
    assert main(["--ref", reference, "--hyp", hypothesis]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip()
    assert "\n" not in error
    assert "2 ids (u2, u3)" in error and "missing from --hyp" in error and "partial.txt" in error


def test_missing_as_deletions(files, capsys):
    tmp_path, reference, _ = files
    hypothesis = _write(tmp_path / "partial.txt", "u1 the cat sat\n")
    assert main(["--ref", reference, "--hyp", hypothesis, "--missing-as-deletions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "%WER 66.67 [ 6 / 9, 0 ins, 6 del, 0 sub ]"
    assert lines[2] == "%SER 66.67 [ 2 / 3 ]"


def test_ids_only_in_hypothesis_stay_an_error(files, capsys):
    tmp_path, reference, _ = files
    hypothesis = _write(tmp_path / "extra.txt", "u1 a\nu2 b\nu3 c\nu9 stray\n")
    assert main(["--ref", reference, "--hyp", hypothesis, "--missing-as-deletions"]) == 2
    error = capsys.readouterr().err
    assert "1 id (u9)" in error and "extra.txt" in error and "missing from --ref" in error


def test_details_are_worst_first_with_ids_and_counts(files, capsys):
    tmp_path, reference, _ = files
    hypothesis = _write(tmp_path / "hyp.txt", "u1 the cat sat\nu2 hello\nu3 a x y d e\n")
    details = tmp_path / "details.txt"
    assert main(["--ref", reference, "--hyp", hypothesis, "--details", str(details)]) == 0
    assert details.read_text(encoding="utf-8") == (
        "u3 errors=3 words=4 sub=2 del=0 ins=1\n"
        "REF:  a b c d ***\n"
        "HYP:  a x y d e\n"
        "EVAL:   S S   I\n"
        "\n"
        "u2 errors=1 words=2 sub=0 del=1 ins=0\n"
        "REF:  hello world\n"
        "HYP:  hello ***\n"
        "EVAL:       D\n"
        "\n"
        "u1 errors=0 words=3 sub=0 del=0 ins=0\n"
        "REF:  the cat sat\n"
        "HYP:  the cat sat\n"
        "EVAL:\n"
        "\n"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file"),
        (b"u1 a\nu1 b\n", "duplicate utterance id 'u1'"),
        (b"u1 caf\xe9\n", "not valid UTF-8"),
        (b"\n\n", "no utterances"),
        (b"u1\nu2 .\nu3\n", "utterances hold no words"),  # ids alone: no WER to compute
    ],
)
def test_bad_reference_file_gives_one_line_error(files, capsys, content, message):
    tmp_path, _, hypothesis = files
    reference = tmp_path / "bad_ref.txt"
    if content is not None:
        reference.write_bytes(content)
    assert main(["--ref", str(reference), "--hyp", hypothesis]) == 2
    error = capsys.readouterr().err
    assert error.startswith("asr-wer: error: ") and error.count("\n") == 1
    assert message in error and "bad_ref.txt" in error


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "(default: False)" in capsys.readouterr().out


def test_empty_hypothesis_file_with_missing_as_deletions(files, capsys):
    tmp_path, reference, _ = files
    hypothesis = _write(tmp_path / "empty.txt", "")
    assert main(["--ref", reference, "--hyp", hypothesis]) == 2
    assert "3 ids (u1, u2, u3)" in capsys.readouterr().err
    assert main(["--ref", reference, "--hyp", hypothesis, "--missing-as-deletions"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "%WER 100.00 [ 9 / 9, 0 ins, 9 del, 0 sub ]"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_stdout_is_one_clear_error(files):
    _, reference, hypothesis = files
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC
        run = subprocess.run(
            [sys.executable, "-m", "asr.cli.wer", "--ref", reference, "--hyp", hypothesis],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert run.returncode == 1
    assert run.stderr.strip() == "asr-wer: error: cannot write to stdout (No space left on device)"
