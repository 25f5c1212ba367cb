"""A plain (non-editable) install works from any folder, with no checkout and no conf/ beside it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from asr.checkpoint import model_state, save_checkpoint
from asr.model import LAS
from asr.tokenizer import CharTokenizer
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install --no-deps .` of a copy of the sources into a fresh target folder."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "exp", "tests", "recipes", "*.egg-info", "build", "__pycache__"
        ),
    )
    target = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    shutil.rmtree(source)  # nothing may depend on the sources once installed
    return target


def run_installed(target, cwd, *arguments):
    environment = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run(
        [sys.executable, *arguments], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


def test_installed_package_transcribes_and_scores_from_another_folder(installed, tmp_path, fsdd_dir):
    tokenizer = CharTokenizer.build(["zero one two"])
    torch.manual_seed(0)
    save_checkpoint(
        model_state(LAS(tiny_config(vocab_size=tokenizer.vocab_size)).eval(), tokenizer),
        tmp_path / "model.pt",
    )
    audio, rate = soundfile.read(fsdd_dir / "recordings" / "1_jackson_0.flac")
    soundfile.write(tmp_path / "clip.wav", np.repeat(audio[:, None], 2, axis=1), rate)  # stereo WAV
    where = run_installed(installed, tmp_path, "-c", "import asr; print(asr.__file__)")
    assert where.stdout.startswith(str(installed))
    result = run_installed(
        installed,
        tmp_path,
        "-m",
        "asr.cli.transcribe",
        "--model",
        "model.pt",
        "--output",
        "hyp.txt",
        "clip.wav",
    )
    assert result.returncode == 0, result.stderr
    line = (tmp_path / "hyp.txt").read_text().splitlines()[0]
    assert line.split("\t")[0] == "clip"
    (tmp_path / "ref.txt").write_text("clip one\n")
    score = run_installed(installed, tmp_path, "-m", "asr.cli.wer", "--ref", "ref.txt", "--hyp", "hyp.txt")
    assert score.returncode == 0 and score.stdout.startswith("%WER")


def test_installed_training_app_finds_its_packaged_configs(installed, tmp_path):
    result = run_installed(installed, tmp_path, "-m", "asr.cli.train", "--cfg", "job", "experiment=digits")
    assert result.returncode == 0, result.stderr
    assert "sample_rate: 8000" in result.stdout and "exp_dir: exp/digits" in result.stdout
