"""Self-contained checkpoints: written atomically, loaded with `weights_only=True`.

A model checkpoint carries everything inference needs (model config, tokenizer, normalisation
statistics inside the weights, feature settings inside the config), so `asr-transcribe` needs
no config files. Training checkpoints add the optimiser, scheduler, counters, sampler position and
random states (`asr.train.training_state`), all as tensors and plain Python data, so that they too
load with `weights_only=True`: a checkpoint from someone else cannot run code on this machine.

Training may also keep the models of its last epochs (`epoch_<N>.pt`), which
`average_model_states` turns into one model (`asr-average`).
"""

import logging
import math
import os
import random
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from asr.files import atomic_write
from asr.model import LAS, ModelConfig
from asr.tokenizer import tokenizer_from_dict

FORMAT = "las-asr/1"

log = logging.getLogger(__name__)


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read; the message names the file."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write `state` to `path` atomically (`asr.files.atomic_write`).

    A crash, a full disk or a kill at any moment leaves either the old file or the new one,
    never a truncated mix; the temporary file is removed on failure.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, binary=True) as file:
            torch.save(state, file)
    except OSError as error:
        raise CheckpointError(
            f"{path}: cannot write checkpoint ({error.strerror or error}); "
            "the previous checkpoint, if any, is unchanged"
        ) from error


def check_writable(folder: str | os.PathLike) -> None:
    """Create `folder` if needed and prove a file can be written there, before hours of training."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise CheckpointError(
            f"{folder}: cannot write checkpoints here ({error.strerror or error})"
        ) from None


def check_finite(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Refuse to write weights holding NaN or infinity over a checkpoint that may be good."""
    bad = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(
            f"{path}: not written, the model has non-finite values in {', '.join(bad[:3])}"
            f"{' and others' if len(bad) > 3 else ''}; the previous checkpoint is unchanged"
        )


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`, refusing anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 -- torch raises many types for bad files
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, corrupt or not a torch file): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a las-asr checkpoint (expected format {FORMAT!r})")
    return state


def model_state(model: LAS, tokenizer) -> dict:
    """What inference needs, as plain data."""
    return {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "model": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
    }


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, tokenizer) from a checkpoint file."""
    state = load_checkpoint(path)
    try:
        model = LAS(ModelConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
        tokenizer = tokenizer_from_dict(state["tokenizer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path}: checkpoint does not match this version of the model: {error}"
        ) from error
    return model.to(device).eval(), tokenizer


EPOCH_CHECKPOINT = re.compile(r"epoch_(\d+)\.pt")


def epoch_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The `epoch_<N>.pt` files in `folder`, oldest first (by N: epoch_10 comes after epoch_9)."""
    found = [p for p in Path(folder).glob("epoch_*.pt") if EPOCH_CHECKPOINT.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(EPOCH_CHECKPOINT.fullmatch(p.name).group(1)))


def save_epoch_checkpoint(state: dict, folder: str | os.PathLike, epoch: int, keep: int) -> Path:
    """Write `state` as `folder/epoch_<epoch>.pt` and keep only epochs epoch-keep+1 .. epoch.

    Every other `epoch_*.pt` goes, later ones too: they can only be left from an earlier run in the
    same folder, and averaging them with this run's would mix two models.
    """
    path = Path(folder) / f"epoch_{epoch}.pt"
    save_checkpoint(state, path)
    for old in epoch_checkpoints(folder):
        if not epoch - keep < int(EPOCH_CHECKPOINT.fullmatch(old.name).group(1)) <= epoch:
            old.unlink(missing_ok=True)
    return path


def _model_parts(state: dict, path) -> tuple[dict, dict, dict]:
    """(model config, tokenizer, weights) of a loaded checkpoint; refuses one without them."""
    try:
        parts = state["model_config"], state["tokenizer"], state["model"]
    except KeyError as error:
        raise CheckpointError(f"{path}: not a model checkpoint (no {error.args[0]!r})") from None
    if not all(isinstance(part, dict) for part in parts):
        raise CheckpointError(
            f"{path}: not a model checkpoint (model_config, tokenizer, model are not dicts)"
        )
    return parts


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    """The first config key whose values differ, as `encoder.hidden_dim=256, not 512` (b's, then a's)."""
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            if left != right:
                return _first_difference(left, right, f"{prefix}{key}.")
        elif left != right:
            return f"{prefix}{key}={right!r}, not {left!r}"
    return ""


def average_model_states(paths: Sequence[str | os.PathLike]) -> dict:
    """One model checkpoint whose weights are the elementwise mean of the weights in `paths`.

    Averaging the last epochs of a run smooths the noise of the final updates (a common last step
    in ESPnet and icefall recipes). Floating tensors are averaged (summed in float64, then cast
    back); other tensors, such as integer counters, are taken from the last checkpoint, and so is
    `max_utterance_seconds` (asr-transcribe's segment length). The result is a model checkpoint
    even when `paths` are training checkpoints (last.pt): no optimiser state travels with it.
    Checkpoints of different models or tokenizers cannot be averaged: CheckpointError names the
    file that differs from the first.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    first_config, first_tokenizer, first_weights = _model_parts(load_checkpoint(paths[0]), paths[0])
    sums = {k: v.double() if v.is_floating_point() else v for k, v in first_weights.items()}
    state = {}
    for path in paths[1:]:
        state = load_checkpoint(path)
        config, tokenizer, weights = _model_parts(state, path)
        if config != first_config:
            raise CheckpointError(
                f"{path}: model config differs from {paths[0]}: {_first_difference(first_config, config)}"
            )
        if tokenizer != first_tokenizer:
            raise CheckpointError(f"{path}: tokenizer differs from {paths[0]}'s")
        if weights.keys() != sums.keys() or any(weights[k].shape != sums[k].shape for k in sums):
            raise CheckpointError(f"{path}: weights do not have the names and shapes of {paths[0]}'s")
        for name, tensor in weights.items():
            sums[name] = sums[name] + tensor.double() if tensor.is_floating_point() else tensor
    state = state or load_checkpoint(paths[0])
    averaged = {
        name: (total / len(paths)).to(first_weights[name].dtype) if total.is_floating_point() else total
        for name, total in sums.items()
    }
    kept = {
        k: state[k] for k in ("format", "model_config", "tokenizer", "max_utterance_seconds") if k in state
    }
    return {**kept, "model": averaged, "averaged_from": [str(p) for p in paths]}


def random_states() -> dict:
    """This process's random generators as tensors and plain data (loadable with weights_only=True).

    torch drives dropout and SpecAugment; NumPy and Python's `random` are saved too so that
    user code and libraries that draw from them resume where they were.
    """
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),  # uint32 Mersenne Twister words
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_random_states(states: dict) -> None:
    """Restore what `random_states` returned."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    numpy = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


def new_epoch_totals() -> dict:
    """An epoch's running sums (loss x tokens, counts, seconds), for its summary line."""
    sums = dict.fromkeys(("loss", "attention", "ctc", "speaker", "seconds"), 0.0)
    return {**sums, **dict.fromkeys(("tokens", "utterances", "skipped", "nonfinite"), 0)}


@dataclass
class Progress:
    """Where a training run is. last.pt stores it, and a resumed run carries on from exactly here."""

    epoch: int = 0  # the epoch in progress
    batches_done: int = 0  # batches of this epoch consumed (on each rank): the sampler position
    step: int = 0  # optimiser updates so far
    nonfinite_in_a_row: int = 0
    best: dict = field(default_factory=lambda: {"wer": math.inf, "loss": math.inf, "epoch": -1})
    totals: dict = field(default_factory=new_epoch_totals)


def training_state(
    model: LAS, tokenizer, optimizer, scheduler, progress: Progress, random: list[dict], extra: dict
) -> dict:
    """What resuming needs on top of what inference needs; `random` holds every rank's `random_states`."""
    return {
        **model_state(model, tokenizer),
        **extra,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
        "random": random,
    }


def load_training_state(
    path: str | os.PathLike, model: LAS, optimizer, scheduler, rank: int = 0, world_size: int = 1
) -> Progress:
    """Load a `training_state` into the model, optimiser, scheduler and this rank's generators."""
    state = load_checkpoint(path, map_location="cpu")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: does not match this model and optimiser: {error}") from None
    if "progress" not in state:  # written before mid-epoch checkpoints existed: at an epoch's end
        torch.set_rng_state(state["torch_rng"])
        return Progress(epoch=state["epoch"] + 1, step=state["step"], best=state["best"])
    progress = Progress(**state["progress"])
    # sums that an older version did not keep (the speaker adversary's) start at zero
    progress.totals = {**new_epoch_totals(), **progress.totals}
    if len(state["random"]) == world_size:
        set_random_states(state["random"][rank])
    else:  # another number of ranks shards the batches differently: the epoch starts over
        log.warning(
            "%s was written by %d processes, this run has %d: epoch %d restarts from its first batch",
            path,
            len(state["random"]),
            world_size,
            progress.epoch,
        )
        progress.batches_done, progress.totals = 0, new_epoch_totals()
    log.info(
        "resumed from %s: epoch %d, batch %d, step %d",
        path,
        progress.epoch,
        progress.batches_done,
        progress.step,
    )
    return progress
