"""An LSTM language model over the tokenizer's ids, for shallow fusion in beam search.

    p(y_i | y_<i) = softmax(W_o LSTM(embed(y_<i)))

It shares the acoustic model's id layout (`asr/tokenizer.py`): 0 is the blank, which never occurs
in text and pads token tensors, and V-1 is both <sos> (the first input) and <eos> (the last
target), so the search can add `lm_weight * log p_LM(token | prefix)` for every candidate, eos
included (Gulcehre et al. 2015, "On using monolingual corpora in neural machine translation").

Like the decoder, it has a teacher-forcing `forward` and a `step` with an explicit state, so the
search steps it batched over utterances and beams next to the decoder.

A language-model checkpoint (`asr-train-lm`) is self-contained like a model checkpoint: its own
format key, the config, the tokenizer it was trained with (the acoustic model's, for fusion) and
the weights, all plain data that loads with `torch.load(weights_only=True)`.
"""

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from asr.checkpoint import FORMAT as MODEL_FORMAT
from asr.checkpoint import CheckpointError
from asr.features import sequence_mask
from asr.tokenizer import tokenizer_from_dict

# Distinct from the acoustic model's format, so that one is never loaded as the other.
LM_FORMAT = "las-asr-lm/1"


@dataclass(frozen=True)
class LanguageModelConfig:
    vocab_size: int  # the tokenizer's: <blank> (0), <unk> (1), units, <sos/eos> (vocab_size - 1)
    embedding_dim: int = 256  # token embedding size
    hidden_dim: int = 512  # LSTM units per layer
    num_layers: int = 2  # stacked LSTM layers
    dropout: float = 0.1  # on the embeddings, between layers and before the output layer


class LanguageModelState(NamedTuple):
    hidden: torch.Tensor  # (num_layers, B, hidden_dim)
    cell: torch.Tensor  # (num_layers, B, hidden_dim)


class LSTMLanguageModel(nn.Module):
    """Next-token distributions over token ids.

    >>> lm = LSTMLanguageModel(LanguageModelConfig(vocab_size=6, embedding_dim=4, hidden_dim=8))
    >>> state = lm.initial_state(batch_size=2, device=torch.device("cpu"))
    >>> log_probs, state = lm.step(torch.tensor([5, 5]), state)  # sos for both
    >>> log_probs.shape
    torch.Size([2, 6])
    """

    def __init__(self, config: LanguageModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        # nn.LSTM applies its dropout only between layers; the embedding and output dropouts are ours.
        self.lstm = nn.LSTM(
            config.embedding_dim,
            config.hidden_dim,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden_dim, config.vocab_size)

    @property
    def sos_eos_id(self) -> int:
        return self.config.vocab_size - 1

    def forward(self, tokens_in: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Teacher forcing.

        Parameters
        ----------
        tokens_in : torch.Tensor, shape = (batch, max_tokens)
            sos followed by the tokens, padded after `lengths`.
        lengths : torch.Tensor, shape = (batch,)
            valid inputs per row.

        Returns
        -------
        logits : torch.Tensor, shape = (batch, max_tokens, vocab_size)
            zero at padded positions. The LSTM runs left to right, so padding after a row's
            tokens cannot change its valid outputs and no packing is needed.
        """
        output, _ = self.lstm(self.dropout(self.embedding(tokens_in)))
        logits = self.output(self.dropout(output))
        return logits * sequence_mask(lengths, tokens_in.shape[1])[..., None].to(logits.dtype)

    def initial_state(self, batch_size: int, device: torch.device) -> LanguageModelState:
        """Zero hidden and cell states, as `nn.LSTM` starts `forward`."""
        shape = (self.config.num_layers, batch_size, self.config.hidden_dim)
        zeros = torch.zeros(shape, device=device, dtype=self.output.weight.dtype)
        return LanguageModelState(zeros, zeros)

    def step(
        self, tokens: torch.Tensor, state: LanguageModelState
    ) -> tuple[torch.Tensor, LanguageModelState]:
        """One token for each row.

        Parameters
        ----------
        tokens : torch.Tensor, shape = (batch,)
            the previous token (sos at the start).
        state : LanguageModelState

        Returns
        -------
        log_probs : torch.Tensor, shape = (batch, vocab_size), float32
        state : LanguageModelState
        """
        # (B,) -> (B, 1, E): a one-step sequence through the same nn.LSTM as `forward`
        output, (hidden, cell) = self.lstm(self.dropout(self.embedding(tokens[:, None])), tuple(state))
        logits = self.output(self.dropout(output[:, 0]))
        return torch.log_softmax(logits.float(), dim=-1), LanguageModelState(hidden, cell)

    def select_state(self, state: LanguageModelState, index: torch.Tensor) -> LanguageModelState:
        """Reorder or repeat rows (beam search); the batch is dim 1 of nn.LSTM states."""
        return LanguageModelState(state.hidden.index_select(1, index), state.cell.index_select(1, index))


def language_model_state(lm: LSTMLanguageModel, tokenizer) -> dict:
    """What fusion needs, as plain data: format, config, tokenizer and weights."""
    return {
        "format": LM_FORMAT,
        "lm_config": dataclasses.asdict(lm.config),
        "tokenizer": tokenizer.to_dict(),
        "model": {name: tensor.detach().cpu() for name, tensor in lm.state_dict().items()},
    }


def load_language_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(LM in eval mode on `device`, tokenizer) from a checkpoint written by `asr-train-lm`.

    Raises
    ------
    CheckpointError
        naming the file: missing, unreadable, not a language model, or not matching this
        version of the language model.
    """
    state = read_language_model_checkpoint(path)
    try:
        lm = LSTMLanguageModel(LanguageModelConfig(**state["lm_config"]))
        lm.load_state_dict(state["model"])
        tokenizer = tokenizer_from_dict(state["tokenizer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path}: checkpoint does not match this version of the language model: {error}"
        ) from error
    if tokenizer.vocab_size != lm.config.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the LM {lm.config.vocab_size}"
        )
    return lm.to(device).eval(), tokenizer


def read_language_model_checkpoint(path: str | os.PathLike) -> dict:
    """The plain-data dict of a language-model checkpoint, read with `weights_only=True`.

    `asr.checkpoint.load_checkpoint` accepts only the acoustic model's format, hence this reader.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- torch raises many types for bad files
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, corrupt or not a torch file): {first_line}"
        ) from error
    kind = state.get("format") if isinstance(state, dict) else None
    if kind == MODEL_FORMAT:
        raise CheckpointError(
            f"{path}: an acoustic model checkpoint, not a language model (train one with asr-train-lm)"
        )
    if kind != LM_FORMAT:
        raise CheckpointError(f"{path}: not a las-asr language model (expected format {LM_FORMAT!r})")
    return state
