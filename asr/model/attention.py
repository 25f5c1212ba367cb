"""Attention over the listener's frames: scaled dot-product, additive and location-aware.

All three share one stateless interface, so the decoder and the search never know which is used:

    keys = attention.prepare(memory)                       # once per utterance
    context, weights = attention(query, keys, memory, mask, previous_weights)

The teacher-forced decoder splits a call in two, so that it can project the queries of all steps
together (`asr/model/recurrence.py`): `attention.query_projection` (an nn.Linear), then
`attention.attend(projected_query, ...)`, which equals `forward` up to floating-point rounding.

Anything that changes from step to step (the previous weights for location-awareness) is passed
in and returned, never kept on the module (ESPnet's attention modules keep state between calls,
which makes batched beam search error-prone).

Queries may outnumber utterances: with B rows of memory, keys and mask and B x G rows of queries
(and previous weights), the G consecutive query rows b*G .. b*G + G-1 all attend over utterance b.
A beam search passes each utterance's frames once for its whole beam, so nothing of size (B*G, T, E)
is copied per beam, and each context is one (G, T) x (T, E) product per utterance.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary


@dataclass(frozen=True)
class AttentionConfig:
    type: str = "location"  # "dot" (scaled dot-product), "additive" (Bahdanau) or "location" (Chorowski)
    attention_dim: int = 128  # size of the query/key projections
    num_heads: int = 1  # dot-product only: heads split attention_dim and each attends over the frames
    location_channels: int = 10  # location-aware only: convolution channels over the previous weights
    location_kernel_size: int = 31  # location-aware only: odd, frames seen around each position


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis with padded positions (mask False) set to exactly zero.

    scores (B*G, ..., T) for mask (B, T): each mask row serves G consecutive score rows.
    """
    batch = mask.shape[0]
    grouped = scores.view(batch, -1, *scores.shape[1:])  # (B, G, ..., T)
    mask = mask.view(batch, 1, *[1] * (scores.dim() - 2), mask.shape[-1])
    return torch.softmax(grouped.masked_fill(~mask, float("-inf")), dim=-1).view_as(scores)


def weighted_sum(weights: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Contexts sum_t w_t h_t: weights (B*G, T), memory (B, T, E) -> (B*G, E), one bmm for all rows."""
    batch = memory.shape[0]
    return torch.bmm(weights.view(batch, -1, weights.shape[-1]), memory).view(weights.shape[0], -1)


def add_query(keys: torch.Tensor, projected_query: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """keys (B, T, A) + alpha projected_query (B*G, A) -> a fresh (B*G, T, A): every row's keys
    plus its (scaled) query."""
    batch, frames, dim = keys.shape
    return torch.add(keys[:, None], projected_query.view(batch, -1, 1, dim), alpha=alpha).view(
        -1, frames, dim
    )


class Attention(nn.Module):
    """The interface. `memory` is the listener output (B, T, E); `mask` (B, T) is True on valid frames.

    Queries and previous weights have B x G rows (see the module docstring); G is 1 in training.
    """

    def prepare(self, memory: torch.Tensor) -> torch.Tensor:
        """Encoder-side projection, computed once per utterance: (B, T, E) -> (B, T, attention_dim)."""
        raise NotImplementedError

    def forward(self, query, keys, memory, mask, previous_weights):
        """
        query : (B, Q) decoder state; keys : from `prepare`; memory : (B, T, E);
        mask : (B, T) bool; previous_weights : (B, T), the last step's weights (used by location).
        returns context (B, E) and weights (B, T), which sum to one over valid frames.
        """
        raise NotImplementedError

    def attend(self, projected_query, keys, memory, mask, previous_weights):
        """`forward` after the query projection: projected_query (B, attention_dim) -> context, weights."""
        raise NotImplementedError

    def forward_in_spans(self, query, keys, memory, mask, previous_weights, spans):
        """`forward` with each span of utterances attending over its own first frames only.

        spans : sequence of (first, end, frames): utterances first..end-1 (and their query rows)
            have no valid frame at or past `frames`. A beam search over a batch sorted by length
            passes a few spans, so that short utterances skip the longest one's padding; the
            padded frames would get weight exactly zero anyway, so the results are `forward`'s.
        Weights come back (B*G, T), zero past each span's frames.
        """
        projected_query = self.query_projection(query)
        group = projected_query.shape[0] // memory.shape[0]
        contexts, weights = [], previous_weights.new_zeros(previous_weights.shape)
        for first, end, frames in spans:
            rows = slice(first * group, end * group)
            context, weights[rows, :frames] = self.attend(
                projected_query[rows],
                keys[first:end, :frames],
                memory[first:end, :frames],
                mask[first:end, :frames],
                previous_weights[rows, :frames],
            )
            contexts.append(context)
        return torch.cat(contexts), weights

    # True where the context is the weights' sum of memory frames (einsum "bt,bte->be") and
    # `attend_weights` gives the weights alone: a caller whose contexts do not feed back into the
    # next step can then form all steps' contexts in one batched product.
    weights_then_context = False

    def attend_weights(self, projected_query, keys, mask, previous_weights):
        """`attend` without the context: weights (B, T). Only where `weights_then_context`."""
        raise NotImplementedError


class DotProductAttention(Attention):
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, with Q = W_q s, K = W_k h, V = h.

    With several heads, each head scores its own slice of the projections; the context is the
    concatenation of the heads' weighted sums of V's slices of `memory` projected back by W_o,
    and the returned weights are the heads' mean (for plots and location features).
    """

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int, num_heads: int = 1):
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim {attention_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query_projection = nn.Linear(query_dim, attention_dim)
        self.key_projection = nn.Linear(memory_dim, attention_dim)
        if num_heads > 1:
            if memory_dim % num_heads:
                raise ValueError(f"memory_dim {memory_dim} is not divisible by num_heads {num_heads}")
            self.value_projection = nn.Linear(memory_dim, memory_dim)
            self.output_projection = nn.Linear(memory_dim, memory_dim)

    def prepare(self, memory):
        keys = self.key_projection(memory)
        if self.num_heads > 1:
            # keys and projected values side by side, so the interface stays one tensor
            keys = torch.cat([keys, self.value_projection(memory)], dim=-1)
        return keys

    def forward(self, query, keys, memory, mask, previous_weights):
        return self.attend(self.query_projection(query), keys, memory, mask, previous_weights)

    def attend(self, projected_query, keys, memory, mask, previous_weights):
        batch, frames, _ = memory.shape
        rows = projected_query.shape[0]
        if self.num_heads == 1:
            q = projected_query.view(batch, -1, projected_query.shape[-1])  # (B, G, A)
            scores = torch.bmm(q, keys.transpose(1, 2)).view(rows, frames) / math.sqrt(q.shape[-1])
            weights = masked_softmax(scores, mask)
            return weighted_sum(weights, memory), weights
        heads = self.num_heads
        attention_dim = self.query_projection.out_features
        # (B*G, A) -> (B, G, heads, A/heads); keys (B, T, A + E) -> per-head keys and values
        q = projected_query.view(batch, -1, heads, attention_dim // heads)
        k = keys[..., :attention_dim].view(batch, frames, heads, -1)
        v = keys[..., attention_dim:].view(batch, frames, heads, -1)
        scores = torch.einsum("bgha,btha->bght", q, k) / math.sqrt(q.shape[-1])
        head_weights = masked_softmax(scores.reshape(rows, heads, frames), mask)  # (B*G, heads, T)
        context = torch.einsum("bght,bthe->bghe", head_weights.view(batch, -1, heads, frames), v)
        return self.output_projection(context.reshape(rows, -1)), head_weights.mean(dim=1)


class AdditiveAttention(Attention):
    """e_t = v^T tanh(W_k h_t + W_q s) (Bahdanau et al. 2015).

    Computed as 2 v^T sigmoid(2 (W_k h_t + W_q s)), which gives the same weights (`normalise`).
    The keys from `prepare` are 2 W_k h_t, so that the factor 2 costs nothing per step: the query
    is added with alpha 2 and the location term (below) accumulated with alpha 2, and scaling by 2
    is exact in floating point, so the energies are bit for bit twice the plain ones.
    """

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int):
        super().__init__()
        self.query_projection = nn.Linear(query_dim, attention_dim, bias=False)
        self.key_projection = nn.Linear(memory_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def prepare(self, memory):
        return 2 * self.key_projection(memory)

    def forward(self, query, keys, memory, mask, previous_weights):
        return self.attend(self.query_projection(query), keys, memory, mask, previous_weights)

    weights_then_context = True

    def attend(self, projected_query, keys, memory, mask, previous_weights):
        weights = self.attend_weights(projected_query, keys, mask, previous_weights)
        return weighted_sum(weights, memory), weights

    def attend_weights(self, projected_query, keys, mask, previous_weights):
        return self.normalise(add_query(keys, projected_query, alpha=2), mask)

    def normalise(self, energies, mask):
        """2e: twice the energies (B*G, T, A), a fresh tensor that this overwrites -> weights (B*G, T).

        v^T tanh(e) = 2 v^T sigmoid(2e) - sum(v), and a softmax over frames ignores a constant, so
        the scores are 2 v^T sigmoid(2e): the same weights, to rounding (`tests/test_model.py`
        checks them against tanh). PyTorch's CPU tanh is not vectorised like its sigmoid: on 2
        threads it runs at 0.7 G values/s against 4.4, and it was the largest part of a beam
        search step (160 rows x T frames x A per step).
        """
        # in place, and v^T as a matrix-vector product: nn.Linear's (B, T, A) -> (B, T, 1) path
        # and a second (B, T, A) buffer cost more than the arithmetic
        scores = energies.sigmoid_().matmul(2 * self.score.weight.view(-1))  # (B*G, T)
        return masked_softmax(scores, mask)


# Above this many frames, the banded matrix's product costs more than the windows' (its FLOPs grow
# with T^2): the search then computes the location features as training does.
TOEPLITZ_MAX_FRAMES = 320
# convolution weight -> ((data pointer, version), (F, F x channels) banded matrix); as
# `asr.model.recurrence.search_lstm_weights`, weak and outside the module
_LOCATION_MATRICES = WeakIdKeyDictionary()


def location_matrix(weight: torch.Tensor, frames: int) -> torch.Tensor:
    """The location convolution (channels, 1, K), zero-padded by K // 2, as a (T, T x channels)
    matrix M with (F * a)[t, c] = sum_s a[s] M[s, t * channels + c], for T = `frames`.

    M[s, t, c] = w[c, s - t + K // 2] where that index is in the kernel, else 0: it depends on
    s - t alone, so the matrix for T frames is the top-left corner of a larger one. One is built
    per weight (and version: an optimiser step or a loaded state rebuilds it) and reused.
    """
    key = (weight.data_ptr(), weight._version)
    cached = _LOCATION_MATRICES.get(weight)
    if cached is None or cached[0] != key or cached[1].shape[0] < frames:
        channels, _, width = weight.shape
        size = max(frames, 64)
        offset = torch.arange(size, device=weight.device)
        kernel_index = offset[:, None] - offset[None, :] + width // 2  # (s, t)
        inside = (kernel_index >= 0) & (kernel_index < width)
        banded = weight.detach().view(channels, width)[:, kernel_index.clamp(0, width - 1)] * inside
        cached = _LOCATION_MATRICES[weight] = (key, banded.permute(1, 2, 0).reshape(size, size * channels))
    matrix = cached[1]
    return matrix[:frames, : frames * (matrix.shape[1] // matrix.shape[0])]


class LocationAwareAttention(AdditiveAttention):
    """e_t = v^T tanh(W_k h_t + W_q s + W_f (F * w_prev)_t) (Chorowski et al. 2015).

    The convolution over the previous step's weights tells the scorer where it attended last,
    which pushes the alignment forward monotonically and is what keeps long utterances on track.
    """

    def __init__(self, query_dim, memory_dim, attention_dim, channels: int = 10, kernel_size: int = 31):
        super().__init__(query_dim, memory_dim, attention_dim)
        if kernel_size % 2 == 0:
            raise ValueError(f"location_kernel_size must be odd, got {kernel_size}")
        self.location_conv = nn.Conv1d(1, channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.location_projection = nn.Linear(channels, attention_dim, bias=False)

    def location_features(self, previous_weights: torch.Tensor) -> torch.Tensor:
        """(F * a_prev)_t for every frame: previous_weights (B*G, T) -> (B*G, T, channels)."""
        channels, _, width = self.location_conv.weight.shape
        rows, frames = previous_weights.shape
        if torch.is_grad_enabled() or frames > TOEPLITZ_MAX_FRAMES:
            # The convolution as a product with each frame's window of K previous weights (zero
            # beyond the ends, as the conv pads): the same sums, without oneDNN's set-up cost for a
            # tiny conv. Training takes this path: autograd differentiates it as it is.
            padded = nn.functional.pad(previous_weights, (width // 2, width // 2))
            windows = padded.unfold(1, width, 1)  # (B*G, T, K)
            return windows.matmul(self.location_conv.weight.view(channels, width).t())
        # Search: one product with the convolution's banded (T, T x channels) matrix. Its
        # (rows x T) x (T x 10 T) shape runs near the GEMM rate, where the windows' copy and the
        # (rows T x K) x (K x 10) product did not: 160 rows x 66 frames 0.11 ms instead of 0.4-1.1.
        matrix = location_matrix(self.location_conv.weight, frames)
        return (previous_weights @ matrix).view(rows, frames, channels)

    def attend_weights(self, projected_query, keys, mask, previous_weights):
        channels = self.location_conv.out_channels
        location = self.location_features(previous_weights)  # (B*G, T, channels)
        energies = add_query(keys, projected_query, alpha=2)
        rows, frames, dim = energies.shape
        # 2 W_f location accumulated in place by the matrix product (addmm_): no second (B*G, T, A)
        # buffer and no copy into it, which cost more than the product itself in a beam search step.
        # Autocast leaves in-place operations alone, so the operands take the energies' dtype here.
        energies.view(-1, dim).addmm_(
            location.view(-1, channels).to(energies.dtype),
            self.location_projection.weight.t().to(energies.dtype),
            alpha=2,
        )
        return self.normalise(energies.view(rows, frames, dim), mask)


def build_attention(config: AttentionConfig, query_dim: int, memory_dim: int) -> Attention:
    if config.type == "dot":
        return DotProductAttention(query_dim, memory_dim, config.attention_dim, config.num_heads)
    if config.num_heads != 1:
        raise ValueError(f"num_heads > 1 is only implemented for dot attention, not {config.type!r}")
    if config.type == "additive":
        return AdditiveAttention(query_dim, memory_dim, config.attention_dim)
    if config.type == "location":
        return LocationAwareAttention(
            query_dim, memory_dim, config.attention_dim, config.location_channels, config.location_kernel_size
        )
    raise ValueError(f"unknown attention type {config.type!r}; expected 'dot', 'additive' or 'location'")
