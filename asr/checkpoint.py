"""Self-contained checkpoints: written atomically, loaded with `weights_only=True`.

A model checkpoint carries everything inference needs (model config, tokenizer, normalisation
statistics inside the weights, feature settings inside the config), so `asr-transcribe` needs
no config files. Training checkpoints add the optimiser, scheduler, counters and random states.
"""

import os
import tempfile
from pathlib import Path

import torch

from asr.model import LAS, ModelConfig
from asr.tokenizer import tokenizer_from_dict

FORMAT = "las-asr/1"


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read; the message names the file."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, rename.

    A crash, a full disk or a kill at any moment leaves either the old file or the new one,
    never a truncated mix; the temporary file is removed on failure.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot write checkpoint: {error.strerror or error}") from error
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CheckpointError(
                f"{path}: cannot write checkpoint ({error.strerror or error}); "
                "the previous checkpoint, if any, is unchanged"
            ) from error
        raise


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
