"""The listener: BiLSTM layers, then pyramid levels that halve the frame rate.

Every layer is exact under padding: an utterance encodes to the same values alone and next to a
longer one (ESPnet's `test_padding_invariance`). Padded positions of every output are zero.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from asr.features import sequence_mask
from asr.model.recurrence import rnn_precision


@dataclass(frozen=True)
class EncoderConfig:
    input_dim: int = 80  # feature bins
    hidden_dim: int = 256  # per direction; outputs are 2 * hidden_dim wide
    num_layers: int = 1  # BiLSTM layers at the input frame rate
    num_pyramid_levels: int = 3  # each one concatenates neighbouring frames: 2 ** levels time reduction
    ctc_level: int = 2  # the CTC head reads the output after this many pyramid levels (2 = 4x)
    dropout: float = 0.0  # between layers
    # > 0: a pyramid level whose concatenated frames are wider than this first projects them to this
    # width (a linear layer), so its BiLSTM's input products shrink (ESPnet's BLSTMP projects too).
    # Fewer FLOPs, a different model; 0 = none (the LAS of Chan et al.).
    pyramid_projection: int = 0


class EncoderOutput(NamedTuple):
    output: torch.Tensor  # (B, T', 2H), T' = ceil(T / 2 ** num_pyramid_levels)
    lengths: torch.Tensor  # (B,)
    ctc_output: torch.Tensor  # (B, T_ctc, 2H) at the CTC level's frame rate
    ctc_lengths: torch.Tensor  # (B,)


def reversal_rows(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(B * T,) rows of a flattened (B * T, D) batch that reverse each sequence within its length.

    Padded frames map to themselves. One `index_select` with these rows copies whole frames,
    where `gather` with an index expanded over D reads one index per value: 16 x 261 x 512 took
    1.1 ms against 2.7 (2 threads, 2026-12-06).
    """
    positions = torch.arange(frames, device=lengths.device)[None, :]  # (1, T)
    last = (lengths - 1)[:, None]
    index = torch.where(positions <= last, last - positions, positions)  # (B, T)
    return (index + frames * torch.arange(len(lengths), device=lengths.device)[:, None]).flatten()


def reverse_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (B, T, D) with its frames taken in the order of `rows` (from `reversal_rows`)."""
    batch, frames, dim = x.shape
    return x.reshape(batch * frames, dim).index_select(0, rows).view(batch, frames, dim)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of `x` (B, T, D) within its own length; padded frames stay in place.

    Applying it twice gives `x` back.
    """
    return reverse_rows(x, reversal_rows(lengths, x.shape[1]))


# On the CPU, a batch whose padding exceeds this share of its frames runs in stages (`run_in_stages`)
STAGED_PADDING_SHARE = 0.25


def run_in_stages(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`lstm(x)` on the valid frames of rows valid up to `lengths`, skipping most of the padding.

    Rows are ordered by length and time is cut at the lengths of the rows ranked at the quarters,
    so each of at most five stages runs only the rows still valid when it starts, from the state
    the last stage left (what pack_padded_sequence does frame by frame, in a few fused calls).
    On a batch of 16 strings of mixed lengths the first encoder layer ran in 10 ms instead of 16.
    x : (B, T, D) -> (B, T, H); outputs beyond a row's length are zero or stale, for the caller to mask.
    """
    batch, frames, _ = x.shape
    order = lengths.argsort(descending=True, stable=True)
    sorted_lengths = lengths.index_select(0, order).tolist()
    # the encoder sorts its batch once (`PyramidalEncoder.forward`): then nothing moves here
    reorder = sorted_lengths != lengths.tolist()
    ranked = {sorted_lengths[min(batch - 1, batch * quarter // 4)] for quarter in (1, 2, 3)}
    ends = sorted(ranked | {sorted_lengths[-1], frames})
    if reorder:
        x = x.index_select(0, order)
    output = x.new_zeros(batch, frames, lstm.hidden_size)
    state = (x.new_zeros(1, batch, lstm.hidden_size),) * 2
    start = 0
    for end in ends:
        if end <= start:
            continue
        rows = sum(length > start for length in sorted_lengths)  # valid at `start`: a prefix of the order
        if rows == 0:  # only empty rows (zero length) are left
            break
        stage, (hidden, cell) = lstm(x[:rows, start:end], (state[0][:, :rows], state[1][:, :rows]))
        output[:rows, start:end] = stage
        state, start = (hidden, cell), end
    return output.index_select(0, order.argsort()) if reorder else output


class BiLSTM(nn.Module):
    """A bidirectional LSTM layer that is exact under padding and fast on CPU.

    The forward direction runs over the padded batch: padding only follows the valid frames.
    The backward direction runs over each sequence reversed within its own length, then the
    result is reversed back. Both are plain `nn.LSTM` calls over a dense batch, which take the
    fused oneDNN/cuDNN kernels; `pack_padded_sequence` measured about 8x slower on 2 CPU cores. On
    the CPU a batch with much padding runs in a few stages that skip most of it (`run_in_stages`).
    When every sequence fills the batch (`full_length`), nothing needs reversing within a length and
    both directions run as one bidirectional call on the same parameters, without the copies.
    """

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.forward_lstm = nn.LSTM(input_dim, hidden_dim, batch_first=True)
        self.backward_lstm = nn.LSTM(input_dim, hidden_dim, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, full_length: bool = False) -> torch.Tensor:
        """x : (B, T, D) -> (B, T, 2H), zero beyond `lengths`; full_length: every length is T."""
        precision, x = rnn_precision(x)
        with precision:
            if full_length:
                return self._bidirectional(x)
            batch, frames, _ = x.shape
            reversal = reversal_rows(lengths, frames)
            reversed_x = reverse_rows(x, reversal)  # valid frames first, like x
            if x.device.type == "cpu" and int(lengths.sum()) < (1 - STAGED_PADDING_SHARE) * batch * frames:
                forward_output = run_in_stages(self.forward_lstm, x, lengths)
                backward_output = run_in_stages(self.backward_lstm, reversed_x, lengths)
            else:
                forward_output, _ = self.forward_lstm(x)
                backward_output, _ = self.backward_lstm(reversed_x)
        output = torch.cat([forward_output, reverse_rows(backward_output, reversal)], dim=-1)
        # in place, into the fresh output: a second (B, T, 2H) buffer costs more than the product
        return output.mul_(sequence_mask(lengths, frames)[..., None])

    def _bidirectional(self, x: torch.Tensor) -> torch.Tensor:
        weights = [
            getattr(lstm, name)
            for lstm in (self.forward_lstm, self.backward_lstm)
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        ]
        zeros = x.new_zeros(2, x.shape[0], self.forward_lstm.hidden_size)
        output, _, _ = torch._VF.lstm(x, (zeros, zeros), weights, True, 1, 0.0, self.training, True, True)
        return output


def concatenate_neighbours(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) -> (B, ceil(T/2), 2D): concatenate frames 2t and 2t+1 (LAS, Chan et al. 2016).

    Odd-length rule: an odd final frame is kept, paired with a zero frame, so no audio is dropped
    and lengths become ceil(L / 2). Because padded frames are zero, an utterance gets the same
    pairs alone as in a padded batch.
    """
    batch, frames, dim = x.shape
    if frames % 2:
        x = nn.functional.pad(x, (0, 0, 0, 1))
    # (B, T, D) -> (B, T/2, 2D): frames 2t and 2t+1 side by side
    return x.reshape(batch, (frames + 1) // 2, 2 * dim), (lengths + 1) // 2


class PyramidalEncoder(nn.Module):
    """Features (B, T, F) -> EncoderOutput with 2 ** num_pyramid_levels fewer frames."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if not 0 <= config.ctc_level <= config.num_pyramid_levels:
            raise ValueError(f"ctc_level must be in [0, {config.num_pyramid_levels}], got {config.ctc_level}")
        if config.pyramid_projection < 0:
            raise ValueError(f"pyramid_projection must be 0 (none) or more: {config.pyramid_projection}")
        self.config = config
        output_dim = 2 * config.hidden_dim
        input_dims = ([config.input_dim] + [output_dim] * (config.num_layers - 1))[: config.num_layers]
        self.layers = nn.ModuleList(BiLSTM(dim, config.hidden_dim) for dim in input_dims)
        first_pyramid_dim = 2 * (output_dim if config.num_layers else config.input_dim)
        pyramid_dims = [first_pyramid_dim] + [2 * output_dim] * (config.num_pyramid_levels - 1)
        pyramid_dims = pyramid_dims[: config.num_pyramid_levels]
        width = config.pyramid_projection
        # nn.Identity has no parameters: without projections the checkpoint keys stay as they were
        self.projections = nn.ModuleList(
            nn.Linear(dim, width) if 0 < width < dim else nn.Identity() for dim in pyramid_dims
        )
        self.pyramid = nn.ModuleList(
            BiLSTM(min(dim, width) if width > 0 else dim, config.hidden_dim) for dim in pyramid_dims
        )
        self.dropout = nn.Dropout(config.dropout)

    @property
    def output_dim(self) -> int:
        return 2 * self.config.hidden_dim

    @property
    def reduction(self) -> int:
        return 2**self.config.num_pyramid_levels

    def output_lengths(self, lengths: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        levels = self.config.num_pyramid_levels if levels is None else levels
        for _ in range(levels):
            lengths = (lengths + 1) // 2
        return lengths

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> EncoderOutput:
        x, lengths = feats, feat_lens
        # No padding anywhere (nor after halving): the layers may skip the padding bookkeeping. CPU
        # only: on a GPU the test would wait for the device, and cuDNN would copy the two modules'
        # weights into one buffer at every bidirectional call.
        full_length = feats.device.type == "cpu" and bool((feat_lens == feats.shape[1]).all())
        # CPU, padded: the batch runs longest first, so that the layers' staged runs
        # (`run_in_stages`) find their rows in order instead of sorting and unsorting at each call
        order = None
        if feats.device.type == "cpu" and not full_length:
            order = feat_lens.argsort(descending=True, stable=True)
            if bool((order == torch.arange(len(order))).all()):
                order = None
            else:
                x, lengths = x.index_select(0, order), lengths.index_select(0, order)
        for layer in self.layers:
            x = self.dropout(layer(x, lengths, full_length))
        ctc_output, ctc_lengths = x, lengths
        levels = zip(self.projections, self.pyramid, strict=True)
        for level, (projection, layer) in enumerate(levels, start=1):
            x, lengths = concatenate_neighbours(x, lengths)
            # a projection's bias reaches padded frames, but the BiLSTM never reads them into a valid one
            x = self.dropout(layer(projection(x), lengths, full_length))
            if level == self.config.ctc_level:
                ctc_output, ctc_lengths = x, lengths
        if order is not None:
            restore = order.argsort()
            x, lengths = x.index_select(0, restore), lengths.index_select(0, restore)
            ctc_output, ctc_lengths = (
                ctc_output.index_select(0, restore),
                ctc_lengths.index_select(0, restore),
            )
        return EncoderOutput(x, lengths, ctc_output, ctc_lengths)
