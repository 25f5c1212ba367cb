"""Several processes train as one: two gloo ranks on half a batch each = one process on all of it.

The comparison is exact in the mathematics, so the test can demand float tolerance:

* DDP averages the ranks' gradients. Each rank's loss is a mean over its own tokens (the
  cross-entropy) and utterances (CTC, each utterance's loss divided by its length), so the average
  of two rank means equals the mean over the whole batch only when both ranks hold as many tokens
  and utterances. The batch is built that way: four utterances of four tokens each, two per rank.
* Dropout and SpecAugment draw random numbers that depend on the batch shape; the tiny model has no
  dropout, and SpecAugment is switched off.
* Padding differs (each rank pads to its own longest utterance); the encoder is exact under padding.
* The optimiser is SGD. Adam divides each gradient by the root of its running square, so a gradient
  that is zero in exact arithmetic but 1e-9 in floats (a bias that the softmax cancels) moves its
  weight by a full learning rate, one way in one run and the other way in the other.

The ranks run `asr.train.train_one_epoch`, the loop `asr-train` runs, started by `torchrun`; this file
is the worker script too (`python tests/test_distributed.py OUT` under torchrun).
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asr import distributed
from asr.checkpoint import Progress
from asr.corpora.fsdd import prepare_digits
from asr.data import collate
from asr.distributed import DeviceError, Process, StopSignals, resolve_device
from asr.features import SpecAugmentConfig
from asr.model import LAS
from asr.train import Run, TrainerOptions, train_one_epoch

REPO = Path(__file__).resolve().parents[1]
FSDD_DIR = REPO / "recipes" / "digits" / "fsdd"
BIN = Path(sys.executable).parent
NUM_STEPS = 3


def controlled_batch(ranks: list[int], world_size: int):
    """Utterances 0-3 (different lengths, four tokens each); rank r of n takes every n-th from r."""
    generator = torch.Generator().manual_seed(1234)
    lengths = [8000, 5600, 7200, 4000]  # samples at 8 kHz
    waves = [0.1 * torch.randn(length, generator=generator) for length in lengths]
    tokens = [torch.randint(2, 11, (4,), generator=generator).tolist() for _ in lengths]
    chosen = [index for index in range(4) if index % world_size in ranks]
    return collate(
        [f"u{i}" for i in chosen],
        ["" for _ in chosen],
        [waves[i] for i in chosen],
        [tokens[i] for i in chosen],
    )


def tiny_model() -> LAS:
    sys.path.insert(0, str(REPO))  # the worker runs as a script, outside pytest
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    return LAS(tiny_config(spec_augment=SpecAugmentConfig(num_freq_masks=0, num_time_masks=0)))


def train_controlled(process: Process) -> LAS:
    """NUM_STEPS steps on this rank's share of the controlled batch; returns the trained model."""
    model = tiny_model()
    model.normalization.set_statistics(torch.full((20,), -5.0), torch.full((20,), 3.0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trained = distributed.wrap_model(model, process)
    run = Run(model, trained, optimizer, scheduler, process, StopSignals())
    batch = controlled_batch([process.rank], process.world_size)
    progress = Progress()
    options = TrainerOptions(exp_dir="unused", device="cpu", checkpoint_every_steps=0)
    assert train_one_epoch(run, [batch] * NUM_STEPS, options, progress, save_last=None)
    assert progress.step == NUM_STEPS
    return model


def test_two_gloo_ranks_on_half_the_batch_match_one_process_on_all_of_it(tmp_path):
    result = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            __file__,
            str(tmp_path / "two_ranks.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    two_ranks = torch.load(tmp_path / "two_ranks.pt", weights_only=True)
    one_process = train_controlled(Process()).state_dict()
    assert two_ranks.keys() == one_process.keys()
    for name, weights in one_process.items():
        torch.testing.assert_close(two_ranks[name], weights, rtol=1e-5, atol=1e-6, msg=name)
    initial = tiny_model().state_dict()  # the steps did move the weights
    assert not torch.allclose(initial["ctc_head.weight"], one_process["ctc_head.weight"])


def test_asr_train_under_torchrun_with_two_gloo_ranks(tmp_path):
    """The command a user runs: sharded batches, reduced validation, one writer."""
    prepare_digits(FSDD_DIR, tmp_path / "data", num_dev=3, num_test=0, num_long=0)  # 2 + 1 dev cuts
    result = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "asr.cli.train",
            "experiment=digits_smoke",
            f"data.dir={tmp_path / 'data'}",
            f"exp_dir={tmp_path / 'exp'}",
            "data.corpus.strings_per_epoch=12",
            "data.corpus.extra_train_clips=null",  # prepared without the synthetic voices
            "trainer.max_epochs=1",
            "trainer.num_threads=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = torch.load(tmp_path / "exp" / "last.pt", weights_only=True)
    assert len(state["random"]) == 2  # each rank's generators, for an exact resume
    assert state["progress"]["epoch"] == 1
    log = (tmp_path / "exp" / "train.log").read_text()
    assert log.count("epoch 0: train loss") == 1 and "rank 1" not in log  # rank 0 alone writes it
    assert "on cpu x 2;" in log and "(3 utterances)" in log  # validation summed over both shards
    assert (tmp_path / "exp" / "best.pt").exists()


def test_resolve_device_takes_what_the_machine_has_and_names_what_it_cannot():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    for name, message in [
        ("gpu0", "is not a device"),
        ("mps", "is not supported"),
        ("meta", "not supported"),
    ]:
        with pytest.raises(DeviceError, match=message):
            resolve_device(name)
    with pytest.raises(DeviceError, match="CUDA device|CUDA is not available"):
        resolve_device("cuda:64")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asr_train_on_cuda_without_a_gpu_fails_in_one_line(tmp_path):
    prepare_digits(FSDD_DIR, tmp_path / "data", num_dev=3, num_test=0, num_long=0)
    result = subprocess.run(
        [
            str(BIN / "asr-train"),
            "experiment=digits_smoke",
            f"data.dir={tmp_path / 'data'}",
            f"exp_dir={tmp_path / 'exp'}",
            "trainer.device=cuda",
            "data.corpus.extra_train_clips=null",  # prepared without the synthetic voices
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr  # Hydra's log handler writes to stdout
    assert result.returncode == 1
    assert "trainer.device=cuda: CUDA is not available on this machine" in output
    assert "Traceback" not in output and not (tmp_path / "exp" / "last.pt").exists()


def worker(out: str) -> None:
    process = distributed.start("cpu")
    try:
        model = train_controlled(process)
        assert distributed.sum_over_ranks([1.0], process) == [2.0]
        if process.is_main:
            torch.save(model.state_dict(), out)
    finally:
        distributed.stop(process)


if __name__ == "__main__":
    worker(sys.argv[1])
