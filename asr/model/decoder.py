"""The speller: an LSTM or GRU decoder with input feeding that attends once per output token.

    s_i = RNN([embed(y_{i-1}), c_{i-1}], s_{i-1})     input feeding: the last context goes in
    c_i, a_i = Attend(s_i, h, a_{i-1})
    logits_i = W_o [s_i, c_i]                          or W_o tanh(W_c [s_i, c_i]) (`attentional_dim`)

`forward` is teacher forcing over a whole batch of targets; `step` decodes one token with an
explicit state, so greedy and beam search reuse exactly the same computation.

`forward` computes what a loop of `step` computes (to floating-point rounding; the test is
`tests/test_speed_paths.py`) but does little per step: the embeddings' share of the first cell's
gates and the output layer are one GEMM each for all steps, and the weight gradients of the
per-step GEMMs are one GEMM each after the loop (`asr/model/recurrence.py`; issue 7).

With `input_feeding: false` the RNN reads only the embeddings (s_i = RNN(embed(y_{i-1}), s_{i-1}),
attention on top, as Luong et al. 2015): a different, opt-in model whose teacher-forced RNN runs as
one fused nn.LSTM/nn.GRU call over all steps.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from asr.model.attention import Attention
from asr.model.recurrence import (
    Embedded,
    LoopContexts,
    LoopLinear,
    loop_cell,
    lstm_pointwise_in_place,
    onednn_gemm_available,
    onednn_linear,
    run_cells,
    search_lstm_weights,
)


@dataclass(frozen=True)
class DecoderConfig:
    cell: str = "lstm"  # "lstm" or "gru"
    embedding_dim: int = 128
    hidden_dim: int = 256
    num_layers: int = 1
    dropout: float = 0.0  # on the embeddings, between layers and before the output layer
    input_feeding: bool = True  # feed the last context into the RNN; false: attention on top only (faster)
    # > 0: the logits read Luong's attentional state tanh(W_c [s_i, c_i]) of this width, which mixes
    # state and context non-linearly (without input feeding nothing else does); 0: W_o [s_i, c_i]
    attentional_dim: int = 0


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
        first_dim = config.embedding_dim + (memory_dim if config.input_feeding else 0)
        input_dims = [first_dim] + [config.hidden_dim] * (config.num_layers - 1)
        self.cells = nn.ModuleList(cell_class(dim, config.hidden_dim) for dim in input_dims)
        self.attention = attention
        self.dropout = nn.Dropout(config.dropout)
        if config.attentional_dim < 0:
            raise ValueError(f"attentional_dim must be 0 (none) or more, got {config.attentional_dim}")
        state_dim = config.hidden_dim + memory_dim
        # None without it, so checkpoints of models without it keep their keys
        self.attentional = nn.Linear(state_dim, config.attentional_dim) if config.attentional_dim else None
        self.output = nn.Linear(config.attentional_dim or state_dim, vocab_size)

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

    def _advance(self, embedded, state: DecoderState, keys, memory, mask, spans=None):
        x = torch.cat([embedded, state.context], dim=-1) if self.config.input_feeding else embedded
        hidden, cell = [], []
        for layer, rnn in enumerate(self.cells):
            if self.config.cell == "lstm":
                h, c = rnn(x, (state.hidden[layer], state.cell[layer]))
                cell.append(c)
            else:
                h = rnn(x, state.hidden[layer])
            hidden.append(h)
            x = self.dropout(h)
        return self._attend(hidden, cell, state, keys, memory, mask, spans)

    def _attend(self, hidden, cell, state: DecoderState, keys, memory, mask, spans):
        """The step's attention from the last layer's hidden state, and its logits."""
        h = hidden[-1]
        if spans is None or len(spans) == 1:
            context, weights = self.attention(h, keys, memory, mask, state.weights)
        else:
            context, weights = self.attention.forward_in_spans(h, keys, memory, mask, state.weights, spans)
        return self._logits(h, context), DecoderState(tuple(hidden), tuple(cell), context, weights)

    def _logits(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(..., H) decoder states and (..., E) contexts -> (..., V) logits."""
        x = self.dropout(torch.cat([hidden, context], dim=-1))
        if self.attentional is not None:
            x = self.dropout(torch.tanh(self.attentional(x)))
        return self.output(x)

    def step(self, tokens, state, keys, memory, mask, spans=None) -> tuple[torch.Tensor, DecoderState]:
        """
        tokens : (B,) the previous output token (sos at the start)
        keys : attention.prepare(memory); memory : (B, T, E); mask : (B, T) bool, True on valid frames
        spans : optional (first, end, frames) spans of utterances that attend over their first
            frames only (`Attention.forward_in_spans`; a beam search over a length-sorted batch)
        returns logits (B, V) and the new state
        """
        if self._search_cells_apply():
            hidden, cell = self._search_cells(tokens, state)
            return self._attend(hidden, cell, state, keys, memory, mask, spans)
        return self._advance(self.dropout(self.embedding(tokens)), state, keys, memory, mask, spans)

    @property
    def _dropout_active(self) -> bool:
        return self.training and self.config.dropout > 0

    def _search_cells_apply(self) -> bool:
        """Whether `step` can run its LSTM cells as `_search_cells` does: inference (no autograd, no
        dropout) in fp32 on a CPU with oneDNN."""
        return (
            self.config.cell == "lstm"
            and not torch.is_grad_enabled()
            and not self._dropout_active
            and onednn_gemm_available(self.embedding.weight)
        )

    def _search_cells(self, tokens: torch.Tensor, state: DecoderState):
        """The LSTM cells of one search step, each one GEMM on oneDNN (`search_lstm_weights`).

        The first cell's embedding share of the gates is a row of a table made once per weight
        change, looked up by token, instead of an embedding lookup, a concatenation and its part of
        the product every step. oneDNN's GEMM runs a beam's few rows at about twice MKL's rate
        (asr/model/recurrence.py). The same function as `_advance`'s cells, to rounding.
        """
        hidden, cell, x = [], [], None
        for layer, rnn in enumerate(self.cells):
            known, weight = search_lstm_weights(rnn, self.embedding if layer == 0 else None)
            if layer == 0:
                known = known.index_select(0, tokens)
                inputs = [state.context] if self.config.input_feeding else []
            else:
                inputs = [x]
            gates = onednn_linear(torch.cat([*inputs, state.hidden[layer]], dim=-1), weight).add_(known)
            x, c = lstm_pointwise_in_place(gates, state.cell[layer])
            hidden.append(x)
            cell.append(c)
        return hidden, cell

    def forward(self, tokens_in: torch.Tensor, memory: torch.Tensor, memory_lens: torch.Tensor):
        """Teacher forcing.

        tokens_in : (B, U) sos followed by the targets
        returns logits (B, U, V) and attention weights (B, U, T)
        """
        mask = torch.arange(memory.shape[1], device=memory.device)[None, :] < memory_lens[:, None]
        keys = self.attention.prepare(memory)
        state = self.initial_state(memory, memory_lens)
        if self.config.input_feeding:
            if self._dropout_active:
                embedded = self.dropout(self.embedding(tokens_in.t()))  # (U, B, D), time first
            else:  # without dropout the first cell projects the embedding table, not every token
                embedded = Embedded(tokens_in.t(), self.embedding.weight)
            hidden, contexts, weights = self._input_feeding_loop(embedded, state, keys, memory, mask)
        else:
            states = self._layer_states(state)
            embedded = self.dropout(self.embedding(tokens_in.t()))  # (U, B, D): all steps in one call
            hidden = run_cells(self.cells, embedded, states, self.config.dropout, self.training)
            contexts, weights = self._attention_loop(hidden, state.weights, keys, memory, mask)
        # the output layer for all steps in one GEMM: (U, B, H + E) -> (B, U, V)
        return self._logits(hidden, contexts).transpose(0, 1), weights.transpose(0, 1)

    def forward_by_steps(self, tokens_in: torch.Tensor, memory: torch.Tensor, memory_lens: torch.Tensor):
        """Teacher forcing as a plain loop of `step`: the reference that `forward` equals (see tests)."""
        mask = torch.arange(memory.shape[1], device=memory.device)[None, :] < memory_lens[:, None]
        keys = self.attention.prepare(memory)
        state = self.initial_state(memory, memory_lens)
        embedded = self.dropout(self.embedding(tokens_in))
        all_logits, all_weights = [], []
        for i in range(tokens_in.shape[1]):
            logits, state = self._advance(embedded[:, i], state, keys, memory, mask)
            all_logits.append(logits)
            all_weights.append(state.weights)
        return torch.stack(all_logits, dim=1), torch.stack(all_weights, dim=1)

    def _layer_states(self, state: DecoderState) -> list[tuple[torch.Tensor, ...]]:
        """Per layer (h, c) for LSTM cells, (h,) for GRU cells."""
        return (
            list(zip(state.hidden, state.cell, strict=True)) if state.cell else [(h,) for h in state.hidden]
        )

    def _input_feeding_loop(self, embedded, state: DecoderState, keys, memory, mask):
        """embedded (U, B, D) or `Embedded` tokens -> hidden (U, B, H), contexts (U, B, E), weights
        (U, B, T), as `step` does."""
        steps, batch = embedded.shape[:2]
        cells = [
            loop_cell(cell, embedded if layer == 0 else None, steps, batch)
            for layer, cell in enumerate(self.cells)
        ]
        query = LoopLinear.from_linear(self.attention.query_projection, steps, batch)
        # where the context is the weights' sum of memory frames, memory's gradient from the
        # contexts is one product after the loop (LoopContexts), not one per step
        contexts = LoopContexts(memory, steps) if self.attention.weights_then_context else None
        states, context, weights = self._layer_states(state), state.context, state.weights
        all_hidden, all_contexts, all_weights = [], [], []
        for i in range(steps):
            x = context  # input feeding: [embed(y_{i-1}), c_{i-1}], the embedding part already projected
            for layer, cell in enumerate(cells):
                states[layer] = cell(i, x, states[layer])
                x = self.dropout(states[layer][0])
            hidden = states[-1][0]
            if contexts is None:
                context, weights = self.attention.attend(query(i, hidden), keys, memory, mask, weights)
            else:
                weights = self.attention.attend_weights(query(i, hidden), keys, mask, weights)
                context = contexts(i, weights)
            all_hidden.append(hidden)
            all_contexts.append(context)
            all_weights.append(weights)
        return torch.stack(all_hidden), torch.stack(all_contexts), torch.stack(all_weights)

    def _attention_loop(self, hidden, initial_weights, keys, memory, mask):
        """Without input feeding: hidden (U, B, H) -> contexts (U, B, E), weights (U, B, T).

        The queries are known for all steps, so they are projected in one GEMM; steps still run in
        order, because location-aware attention reads the previous weights.
        """
        queries = self.attention.query_projection(hidden)  # all steps in one GEMM
        if self.attention.weights_then_context:
            # the contexts do not feed back here: the weights step by step, then every step's
            # context in one batched product (B, U, T) x (B, T, E), instead of one per step
            weights, all_weights = initial_weights, []
            for query in queries.unbind(0):
                weights = self.attention.attend_weights(query, keys, mask, weights)
                all_weights.append(weights)
            weights = torch.stack(all_weights)  # (U, B, T)
            return torch.bmm(weights.transpose(0, 1), memory).transpose(0, 1), weights
        weights, all_contexts, all_weights = initial_weights, [], []
        for query in queries.unbind(0):
            context, weights = self.attention.attend(query, keys, memory, mask, weights)
            all_contexts.append(context)
            all_weights.append(weights)
        return torch.stack(all_contexts), torch.stack(all_weights)
