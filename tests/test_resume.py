"""Never lose work: a killed or preempted run resumes to the very weights of an uninterrupted one.

These tests start real `asr-train` processes on the digits smoke recipe (a tiny model, 24 strings
an epoch, 8 s batches: about 10 steps an epoch) with one thread each, so that CPU training is
deterministic and a resumed run can be compared bit for bit.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from asr.corpora.fsdd import prepare_digits
from tests.conftest import FSDD_DIR

BIN = Path(sys.executable).parent
MAX_EPOCHS = 2


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("digits")
    prepare_digits(FSDD_DIR, data, num_dev=4, num_test=0, num_long=0)
    return data


def train_command(data: Path, exp_dir: Path, *overrides: str) -> list[str]:
    return [
        str(BIN / "asr-train"),
        "experiment=digits_smoke",
        f"data.dir={data}",
        f"exp_dir={exp_dir}",
        "data.corpus.strings_per_epoch=24",
        "data.corpus.extra_train_clips=null",  # prepared without the synthetic voices
        "data.loader.max_duration=8",
        f"trainer.max_epochs={MAX_EPOCHS}",
        "trainer.checkpoint_every_steps=1",
        "trainer.num_threads=1",
        *overrides,
    ]


def train(data: Path, exp_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        train_command(data, exp_dir, *overrides), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def start(data: Path, exp_dir: Path, output: Path) -> subprocess.Popen:
    """A training process in the background; its output goes to a file (a pipe could fill up)."""
    with open(output, "w") as file:
        return subprocess.Popen(
            train_command(data, exp_dir), stdout=file, stderr=subprocess.STDOUT, text=True
        )


def wait_for_progress(process: subprocess.Popen, checkpoint: Path, batches: int) -> dict:
    """Poll last.pt until the run is `batches` batches into its first epoch; returns that progress.

    last.pt is replaced by an atomic rename, so reading it while training writes it is safe.
    """
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended early"
        if checkpoint.exists():
            progress = torch.load(checkpoint, weights_only=True)["progress"]
            if progress["epoch"] == 0 and progress["batches_done"] >= batches:
                return progress
        time.sleep(0.02)
    raise AssertionError("training made no progress")


def weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=True)["model"]


def assert_same_weights(resumed: Path, uninterrupted: Path) -> None:
    expected, actual = weights(uninterrupted), weights(resumed)
    assert expected.keys() == actual.keys()
    different = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not different, f"resumed weights differ in {different}"


@pytest.fixture(scope="module")
def uninterrupted(digits_data, tmp_path_factory) -> Path:
    exp_dir = tmp_path_factory.mktemp("uninterrupted")
    train(digits_data, exp_dir)
    state = torch.load(exp_dir / "last.pt", weights_only=True)
    assert state["progress"]["epoch"] == MAX_EPOCHS and state["progress"]["step"] > 10
    return exp_dir / "last.pt"


def test_a_run_killed_mid_epoch_resumes_to_bit_identical_weights(digits_data, uninterrupted, tmp_path):
    process = start(digits_data, tmp_path, tmp_path / "killed.log")
    seen = wait_for_progress(process, tmp_path / "last.pt", batches=2)
    process.send_signal(signal.SIGKILL)  # no handler, no last words: only what is on disk survives
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    killed_at = torch.load(tmp_path / "last.pt", weights_only=True)["progress"]
    assert (killed_at["epoch"], killed_at["batches_done"]) >= (0, seen["batches_done"])
    assert killed_at["epoch"] < MAX_EPOCHS  # it was stopped before the end

    result = train(digits_data, tmp_path, "trainer.resume=true")
    assert "resumed from" in result.stdout  # Hydra logs to stdout
    assert_same_weights(tmp_path / "last.pt", uninterrupted)


def test_sigterm_writes_a_loadable_checkpoint_and_the_run_resumes_exactly(
    digits_data, uninterrupted, tmp_path
):
    process = start(digits_data, tmp_path, tmp_path / "stopped.log")
    seen = wait_for_progress(process, tmp_path / "last.pt", batches=3)
    process.send_signal(signal.SIGTERM)  # what a preemptible cluster sends before SIGKILL
    process.wait(timeout=60)
    output = (tmp_path / "stopped.log").read_text()
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped by SIGTERM" in output and "trainer.resume=true" in output
    assert "Traceback" not in output
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # plain data: loads without pickle
    assert (state["progress"]["epoch"], state["progress"]["batches_done"]) >= (0, seen["batches_done"])

    train(digits_data, tmp_path, "trainer.resume=true")
    assert_same_weights(tmp_path / "last.pt", uninterrupted)


def test_an_unwritable_exp_dir_is_one_clear_line(digits_data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = subprocess.run(
        train_command(digits_data, blocker / "exp"), capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert str(blocker) in result.stdout + result.stderr
