"""Training as one of several processes, and surviving the signals a cluster sends.

`torchrun` starts one process per GPU (or per CPU share) and tells each who it is through the
environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT); `start` reads it and joins the process
group: NCCL between GPUs, gloo between CPU processes. A plain `asr-train` is a group of one, and
every helper here is then a no-op, so the training loop reads the same either way.

    process = start("auto")            # Process(rank, local_rank, world_size, device)
    model = wrap_model(las, process)    # DistributedDataParallel when world_size > 1
    ...
    stop(process)

Preemptible clusters send SIGTERM (SLURM, Kubernetes, spot instances) and wait a grace period
before SIGKILL; `StopSignals` turns SIGTERM and SIGINT into a flag that the loop checks after each
step, so it can write a checkpoint and exit instead of dying mid-epoch.
"""

import datetime
import logging
import os
import signal
from dataclasses import dataclass

import lhotse
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Process:
    """This process's place in the group."""

    rank: int = 0  # 0 .. world_size - 1, over all machines; rank 0 writes checkpoints and logs
    local_rank: int = 0  # index on this machine: which GPU it drives
    world_size: int = 1  # processes in the group
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DeviceError(ValueError):
    """A device this machine does not have, or that the toolkit does not run on (the CLIs print the
    message alone)."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> this process's GPU when CUDA is available, else the CPU; otherwise `name`, checked.

    Raises DeviceError for a name that is no device, a device other than the CPU or CUDA (the CTC
    prefix scores need float64, which Apple's MPS lacks), CUDA on a machine without it, or a GPU
    number the machine does not have.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"{name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"{name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{name}: CUDA is not available on this machine (use cpu or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)  # one GPU per process, as torchrun numbers them
        if device.index >= torch.cuda.device_count():
            raise DeviceError(f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def start(device: str = "auto") -> Process:
    """Join the process group that torchrun describes in the environment, or be a group of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    process = Process(rank, local_rank, world_size, resolve_device(device, local_rank))
    if world_size > 1 and not dist.is_initialized():
        if process.device.type == "cuda":
            torch.cuda.set_device(process.device)
        # a rank that stops answering (a dead node) fails the others after this long, not never
        dist.init_process_group(
            "nccl" if process.device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=30),
        )
        log.info("rank %d of %d on %s", rank, world_size, process.device)
    return process


def stop(process: Process) -> None:
    if process.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, process: Process) -> torch.nn.Module:
    """DistributedDataParallel around `model` in a group, else `model` itself.

    DDP copies rank 0's weights and buffers (the normalisation statistics) to every rank, and
    averages the gradients over ranks during backward.
    """
    if process.world_size == 1:
        return model
    device_ids = [process.device.index] if process.device.type == "cuda" else None
    # the CTC head takes no part in the loss when ctc_weight is 0: DDP must be told to expect that
    unused = getattr(getattr(model, "config", None), "ctc_weight", 1.0) == 0
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=unused
    )


def sum_over_ranks(values: list[float], process: Process) -> list[float]:
    """Element-wise sums of `values` over all ranks (float64, so token and error counts stay exact)."""
    if process.world_size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device(process))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(flags: list[bool], process: Process) -> list[bool]:
    """For each flag, whether it is set on any rank: every rank takes the same branch after it."""
    if process.world_size == 1:
        return [bool(flag) for flag in flags]
    tensor = torch.tensor([float(flag) for flag in flags], device=_collective_device(process))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()]


def gather_to_all(value, process: Process) -> list:
    """`value` from every rank, in rank order (any picklable object)."""
    if process.world_size == 1:
        return [value]
    values = [None] * process.world_size
    dist.all_gather_object(values, value)
    return values


def shard(cuts: lhotse.CutSet, process: Process) -> lhotse.CutSet:
    """Every world_size-th cut, starting at this rank: each utterance on exactly one rank.

    For validation, where every utterance must count once; training batches are sharded by the
    sampler instead (lhotse gives every rank the same number of batches).
    """
    if process.world_size == 1:
        return cuts
    return lhotse.CutSet.from_cuts(
        cut for index, cut in enumerate(cuts) if index % process.world_size == process.rank
    )


def _collective_device(process: Process) -> torch.device:
    return process.device if process.device.type == "cuda" else torch.device("cpu")


class StopSignals:
    """While entered, SIGTERM and SIGINT set `received` instead of killing the process.

    The training loop checks the flag after every step, writes a checkpoint and stops. A second
    signal of either kind gets the default behaviour back (exit at once), for a user who will not
    wait. Handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def __enter__(self) -> "StopSignals":
        try:
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number, frame) -> None:
        if self.received is not None:
            self.__exit__()
            signal.raise_signal(number)  # the second signal: default action
            return
        self.received = number
        # logging from a handler is safe here: Python runs it between bytecodes of the main thread
        log.warning("%s received: stopping after this step with a checkpoint", signal.Signals(number).name)
