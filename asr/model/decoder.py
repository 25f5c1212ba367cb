"""The speller: an LSTM or GRU decoder with input feeding that attends once per output token.

    s_i = RNN([embed(y_{i-1}), c_{i-1}], s_{i-1})     input feeding: the last context goes in
    c_i, a_i = Attend(s_i, h, a_{i-1})
    logits_i = W_o [s_i, c_i]

`forward` is teacher forcing over a whole batch of targets; `step` decodes one token with an
explicit state, so greedy and beam search reuse exactly the same computation.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from asr.model.attention import Attention


@dataclass(frozen=True)
class DecoderConfig:
    cell: str = "lstm"  # "lstm" or "gru"
    embedding_dim: int = 128
    hidden_dim: int = 256
    num_layers: int = 1
    dropout: float = 0.0  # on the embeddings, between layers and before the output layer


class DecoderState(NamedTuple):
    hidden: tuple[torch.Tensor, ...]  # per layer (B, H)
    cell: tuple[torch.Tensor, ...]  # per layer (B, H) for LSTM cells; empty for GRU
    context: torch.Tensor  # (B, E) the last attention context
    weights: torch.Tensor  # (B, T) the last attention weights

    def select(self, index: torch.Tensor) -> "DecoderState":
        """Reorder or repeat batch entries (beam search): every tensor indexed along dim 0."""
        return DecoderState(
            tuple(h.index_select(0, index) for h in self.hidden),
            tuple(c.index_select(0, index) for c in self.cell),
            self.context.index_select(0, index),
            self.weights.index_select(0, index),
        )


class AttentionDecoder(nn.Module):
    def __init__(self, config: DecoderConfig, vocab_size: int, memory_dim: int, attention: Attention):
        super().__init__()
        if config.cell not in ("lstm", "gru"):
            raise ValueError(f"decoder cell must be 'lstm' or 'gru', got {config.cell!r}")
        self.config = config
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim)
        cell_class = nn.LSTMCell if config.cell == "lstm" else nn.GRUCell
        input_dims = [config.embedding_dim + memory_dim] + [config.hidden_dim] * (config.num_layers - 1)
        self.cells = nn.ModuleList(cell_class(dim, config.hidden_dim) for dim in input_dims)
        self.attention = attention
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden_dim + memory_dim, vocab_size)

    def initial_state(self, memory: torch.Tensor, memory_lens: torch.Tensor) -> DecoderState:
        """Zero recurrent state and context; the previous alignment is uniform over valid frames."""
        batch, frames, memory_dim = memory.shape
        zeros = memory.new_zeros(batch, self.config.hidden_dim)
        valid = (torch.arange(frames, device=memory.device)[None, :] < memory_lens[:, None]).to(memory.dtype)
        return DecoderState(
            hidden=(zeros,) * len(self.cells),
            cell=(zeros,) * len(self.cells) if self.config.cell == "lstm" else (),
            context=memory.new_zeros(batch, memory_dim),
            weights=valid / memory_lens[:, None].to(memory.dtype),
        )

    def _advance(self, embedded, state: DecoderState, keys, memory, mask):
        x = torch.cat([embedded, state.context], dim=-1)
        hidden, cell = [], []
        for layer, rnn in enumerate(self.cells):
            if self.config.cell == "lstm":
                h, c = rnn(x, (state.hidden[layer], state.cell[layer]))
                cell.append(c)
            else:
                h = rnn(x, state.hidden[layer])
            hidden.append(h)
            x = self.dropout(h)
        context, weights = self.attention(h, keys, memory, mask, state.weights)
        logits = self.output(self.dropout(torch.cat([h, context], dim=-1)))
        return logits, DecoderState(tuple(hidden), tuple(cell), context, weights)

    def step(self, tokens, state, keys, memory, mask) -> tuple[torch.Tensor, DecoderState]:
        """
        tokens : (B,) the previous output token (sos at the start)
        keys : attention.prepare(memory); memory : (B, T, E); mask : (B, T) bool, True on valid frames
        returns logits (B, V) and the new state
        """
        return self._advance(self.dropout(self.embedding(tokens)), state, keys, memory, mask)

    def forward(self, tokens_in: torch.Tensor, memory: torch.Tensor, memory_lens: torch.Tensor):
        """Teacher forcing.

        tokens_in : (B, U) sos followed by the targets
        returns logits (B, U, V) and attention weights (B, U, T)
        """
        mask = torch.arange(memory.shape[1], device=memory.device)[None, :] < memory_lens[:, None]
        keys = self.attention.prepare(memory)
        state = self.initial_state(memory, memory_lens)
        embedded = self.dropout(self.embedding(tokens_in))  # all steps in one call
        all_logits, all_weights = [], []
        for i in range(tokens_in.shape[1]):
            logits, state = self._advance(embedded[:, i], state, keys, memory, mask)
            all_logits.append(logits)
            all_weights.append(state.weights)
        return torch.stack(all_logits, dim=1), torch.stack(all_weights, dim=1)
