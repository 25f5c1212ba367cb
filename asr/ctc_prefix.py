"""CTC prefix scores for label-synchronous beam search (Watanabe et al. 2017, "Hybrid CTC/attention
architecture for end-to-end speech recognition", Algorithm 2), for all hypotheses and candidates at once.

For a prefix g and the CTC frame posteriors x_t(k), t = 1..T, the forward variables are

    r^n_t(g)   the first t frames emit g and frame t emits g's last label
    r^b_t(g)   the first t frames emit g and frame t is blank

and the prefix score psi(g + c) sums the probability of every label sequence that starts with g + c:

    phi_{t-1}(g, c) = r^b_{t-1}(g) + (r^n_{t-1}(g) if c != last(g) else 0)   a repeat needs a blank between
    psi(g + c)      = sum_{t=1..T} phi_{t-1}(g, c) x_t(c)
    psi(g + eos)    = r^n_T(g) + r^b_T(g)                                    the full-sequence probability

The recursions r^n_t(h) = (r^n_{t-1}(h) + phi_{t-1}) x_t(c) and r^b_t(h) = (r^b_{t-1}(h) + r^n_{t-1}(h)) b_t
are linear, so each has the closed form of a cumulative sum over frames:

    r^n_t(h) = X_t   * sum_{s<=t} phi_{s-1} / X_{s-1},     X_t = prod_{k<=t} x_k(c)
    r^b_t(h) = Bl_t  * sum_{s<=t} r^n_{s-1}(h) / Bl_{s-1}, Bl_t = prod_{k<=t} x_k(blank)

which `torch.logcumsumexp` computes in the log domain with no Python loop over frames (ESPnet's
`CTCPrefixScoreTH` loops over frames once per output token). The cancellation between the large
cumulative sums is why this module works in float64: a 1000-frame sum of log-probs near -20 keeps
about 1e-12 absolute precision. Only psi is needed for every candidate; the forward variables are
computed for the K hypotheses that survive each step, not for all K x C candidates. psi itself is
a sum of positive terms with no cancellation, so it is computed in the probability domain, with
phi scaled by its largest value: one (K, T) x (T, C) matrix product per utterance instead of a
log-sum-exp over (K, C, T), a third of the time for the same result to within rounding.

Shapes: A utterances, K hypotheses per utterance, C candidate tokens, T CTC frames. Frames past an
utterance's own length never contribute, so an utterance scores the same alone or in a padded batch.
"""

from typing import NamedTuple

import torch

from asr.features import sequence_mask

NEG_INF = float("-inf")


class CTCPrefixState(NamedTuple):
    nonblank: torch.Tensor  # (A, K, T+1) float64, log r^n_t(g) for t = 0..T
    blank: torch.Tensor  # (A, K, T+1) float64, log r^b_t(g) for t = 0..T
    prefix: torch.Tensor  # (A, K) float64, log psi(g)
    repeat: torch.Tensor  # (A, K) float64, log psi(g + last(g)): the repeat needs a blank between


class CTCPrefixScorer:
    """Prefix scores over one batch of CTC posteriors.

    Parameters
    ----------
    log_probs : torch.Tensor, shape = (A, T, V)
        CTC log-posteriors (`LAS.ctc_log_probs`); id 0 is the blank.
    lengths : torch.Tensor, shape = (A,)
        valid frames per utterance.
    units : slice
        the token ids a hypothesis can be extended with (every id but blank and eos).
    """

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, units: slice):
        self.source = log_probs
        valid = sequence_mask(lengths, log_probs.shape[1])  # (A, T)
        # (A, T, V) -> (A, V, T): every gather below picks token rows and keeps frames contiguous.
        # Padded frames are -inf, so they add nothing to psi.
        self.log_probs = (
            log_probs.float().masked_fill(~valid[..., None], NEG_INF).transpose(1, 2).contiguous()
        )
        self.lengths = lengths
        self.valid = valid
        self.units = units
        self._unit_probs = None  # (A, T, C) float64 x_t(unit), made on first use: large for big vocabularies
        # Padded frames get log b = 0 in the recursions: their values stay finite and are never read.
        blank = self.log_probs[:, 0].double().masked_fill(~valid, 0.0)
        self.blank_cumsum = torch.nn.functional.pad(blank.cumsum(-1), (1, 0))  # (A, T+1), Bl_0 = 0

    def initial_state(self, beam_size: int) -> CTCPrefixState:
        """The empty prefix: all-blank paths, psi = 1."""
        utterances, frames_plus_one = self.blank_cumsum.shape
        shape = (utterances, beam_size, frames_plus_one)
        nonblank = self.blank_cumsum.new_full(shape, NEG_INF)
        blank = self.blank_cumsum[:, None].expand(shape)
        prefix = self.blank_cumsum.new_zeros(utterances, beam_size)
        return CTCPrefixState(nonblank, blank, prefix, torch.full_like(prefix, NEG_INF))  # no label to repeat

    def candidates(self, ranking: torch.Tensor, pre_beam: int) -> tuple[torch.Tensor, bool]:
        """(A, K, C) token ids to score for each hypothesis, and whether they are all the units.

        With a vocabulary larger than `pre_beam`, only the `pre_beam` best units by `ranking` (A, K, V),
        the attention (+ LM) log-probabilities, get a prefix score, which costs T frames each
        (ESPnet's pre-beam); 0 scores every unit.
        """
        active_count, beam, _ = ranking.shape
        units = ranking[..., self.units]
        if pre_beam == 0 or pre_beam >= units.shape[-1]:
            all_units = torch.arange(self.units.start, self.units.stop, device=ranking.device)
            return all_units.expand(active_count, beam, -1), True
        return units.topk(pre_beam, dim=-1).indices + self.units.start, False

    def _token_log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """(A, K, C) token ids -> (A, K, C, T) float64 log x_t(token), -inf on padded frames."""
        utterances, beam, candidates = tokens.shape
        frames = self.log_probs.shape[2]
        index = tokens.reshape(utterances, beam * candidates, 1).expand(-1, -1, frames)
        return self.log_probs.gather(1, index).view(utterances, beam, candidates, frames).double()

    def score(
        self, state: CTCPrefixState, last_tokens: torch.Tensor, candidates: torch.Tensor, all_units: bool
    ) -> torch.Tensor:
        """log psi(g + c) for every hypothesis g and candidate token c.

        Parameters
        ----------
        state : CTCPrefixState of the hypotheses g
        last_tokens : torch.Tensor, shape = (A, K)
            the last token of each g (sos for the empty prefix, which no candidate equals).
        candidates : torch.Tensor, shape = (A, K, C)
            token ids; never blank or eos.
        all_units : bool
            True when `candidates` are the `units` range for every hypothesis, which skips a gather.

        Returns
        -------
        torch.Tensor, shape = (A, K, C), float64
        """
        frames = self.log_probs.shape[2]
        # phi_{t-1} for a new label, for t = 1..T: (A, K, T)
        phi_weights, phi_peak = self._scaled(torch.logaddexp(state.blank, state.nonblank)[..., :frames])
        if all_units:
            if self._unit_probs is None:
                self._unit_probs = self.log_probs[:, self.units].double().exp().transpose(1, 2)
            # (A, K, T) @ (A, T, C) -> (A, K, C): sum_t phi_{t-1} x_t(c) for every unit at once
            psi_sum = torch.bmm(phi_weights, self._unit_probs)
        else:
            psi_sum = torch.einsum("akt,akct->akc", phi_weights, self._token_log_probs(candidates).exp())
        psi = torch.log(psi_sum) + phi_peak[..., None]  # (A, K, C)
        # a candidate that repeats g's last label extends only the paths that end in blank: its
        # score came with g's forward variables (`extend`)
        return torch.where(candidates == last_tokens[..., None], state.repeat[..., None], psi)

    def _scaled(self, log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, K, T) log-domain weights -> exp(weights - peak) (A, K, T), zero on padded frames,
        and the peak (A, K), the largest valid weight (0 when there is none).

        Sums of weights times probabilities then need no log-sum-exp: a matrix product in the
        probability domain, with no cancellation (every term is positive). A term underflows to
        zero only when it is e^-700 below the largest weight, far below anything a beam keeps.
        """
        log_weights = log_weights.masked_fill(~self.valid[:, None], NEG_INF)
        peak = log_weights.max(dim=-1).values
        peak = peak.masked_fill(peak == NEG_INF, 0.0)
        return torch.exp(log_weights - peak[..., None]), peak

    def final(self, state: CTCPrefixState) -> torch.Tensor:
        """log p_ctc(g | x), the probability that the whole utterance emits exactly g: (A, K) float64."""
        last_frame = self.lengths[:, None, None].expand(-1, state.blank.shape[1], 1)  # (A, K, 1)
        return torch.logaddexp(state.nonblank.gather(2, last_frame), state.blank.gather(2, last_frame))[
            ..., 0
        ]

    def extend(
        self,
        state: CTCPrefixState,
        parents: torch.Tensor,
        tokens: torch.Tensor,
        parent_last_tokens: torch.Tensor,
        prefix: torch.Tensor,
    ) -> CTCPrefixState:
        """Forward variables of the chosen hypotheses h = g + c.

        Parameters
        ----------
        state : CTCPrefixState of the previous hypotheses, (A, K, ...)
        parents : torch.Tensor, shape = (A, K)
            which previous hypothesis of the same utterance each new one extends.
        tokens : torch.Tensor, shape = (A, K)
            the appended token c (any id for a hypothesis that is no longer live).
        parent_last_tokens : torch.Tensor, shape = (A, K)
            last(g) of each parent.
        prefix : torch.Tensor, shape = (A, K)
            log psi(h), as returned by `score`.
        """
        frames_plus_one = state.blank.shape[2]
        index = parents[..., None].expand(-1, -1, frames_plus_one)
        nonblank, blank = state.nonblank.gather(1, index), state.blank.gather(1, index)
        repeat = (tokens == parent_last_tokens)[..., None]
        phi = torch.where(repeat, blank, torch.logaddexp(blank, nonblank))  # (A, K, T+1): phi_0..phi_T
        log_x = self._token_log_probs(tokens[..., None])[:, :, 0]  # (A, K, T), -inf past the end
        x = log_x.masked_fill(~self.valid[:, None], 0.0)  # keeps the cumulative sums finite past the end
        log_x_product = torch.nn.functional.pad(x.cumsum(-1), (1, 0))  # (A, K, T+1): log X_0..X_T
        start = torch.full_like(prefix[..., None], NEG_INF)  # r_0(h) = 0 for a non-empty h
        # r^n_t(h) = X_t * sum_{s<=t} phi_{s-1} / X_{s-1}
        new_nonblank = log_x_product[..., 1:] + torch.logcumsumexp(
            phi[..., :-1] - log_x_product[..., :-1], -1
        )
        new_nonblank = torch.cat([start, new_nonblank], dim=-1)
        # r^b_t(h) = Bl_t * sum_{s<=t} r^n_{s-1}(h) / Bl_{s-1}
        blank_product = self.blank_cumsum[:, None]  # (A, 1, T+1)
        new_blank = blank_product[..., 1:] + torch.logcumsumexp(
            new_nonblank[..., :-1] - blank_product[..., :-1], -1
        )
        new_blank = torch.cat([start, new_blank], dim=-1)
        # psi(h + c) for c = last(h): sum_t r^b_{t-1}(h) x_t(c), while x_t(c) is at hand
        repeat = torch.logsumexp(new_blank[..., :-1] + log_x, -1)
        return CTCPrefixState(new_nonblank, new_blank, prefix, repeat)

    def select(self, utterances: torch.Tensor) -> "CTCPrefixScorer":
        """Keep some utterances (a finished one leaves the batch) and drop frames none of them has."""
        lengths = self.lengths.index_select(0, utterances)
        frames = int(lengths.max())
        return CTCPrefixScorer(self.source.index_select(0, utterances)[:, :frames], lengths, self.units)

    def select_state(self, state: CTCPrefixState, utterances: torch.Tensor) -> CTCPrefixState:
        """The state of the utterances kept by `select`, trimmed to its frames."""
        frames_plus_one = int(self.lengths.index_select(0, utterances).max()) + 1
        return CTCPrefixState(
            state.nonblank.index_select(0, utterances)[..., :frames_plus_one],
            state.blank.index_select(0, utterances)[..., :frames_plus_one],
            state.prefix.index_select(0, utterances),
            state.repeat.index_select(0, utterances),
        )


def positions_per_span(positions: list[int], sizes: list[int]) -> list[list[int]]:
    """Ascending positions in a batch cut into spans of `sizes` -> each span's own positions."""
    kept, start = [], 0
    for size in sizes:
        kept.append([p - start for p in positions if start <= p < start + size])
        start += size
    return kept


class SpanCTCPrefixScorer:
    """`CTCPrefixScorer`'s interface over a batch cut into spans of consecutive utterances, each
    span scored over its own frames only.

    A batch of mixed lengths pads every utterance to the longest one's frames, and the recursions
    cost the same on padding as on speech. With the utterances sorted by length and cut into a
    few spans, each span pays only for its own longest utterance. The state is one
    `CTCPrefixState` per span; every result is the spans' results in order, so the caller sees
    (A, ...) tensors as from one scorer, and each utterance's scores are the ones it gets alone.

    Parameters
    ----------
    log_probs, lengths, units : as for `CTCPrefixScorer`, for the whole batch.
    span_sizes : list[int]
        utterances per span, in batch order; they sum to A.
    """

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, units: slice, span_sizes: list[int]):
        if sum(span_sizes) != log_probs.shape[0] or min(span_sizes, default=1) < 1:
            raise ValueError(f"span sizes {span_sizes} do not cut a batch of {log_probs.shape[0]}")
        self.sizes = list(span_sizes)
        self.scorers = []
        for span_log_probs, span_lengths in zip(
            log_probs.split(self.sizes), lengths.split(self.sizes), strict=True
        ):
            frames = int(span_lengths.max())
            self.scorers.append(CTCPrefixScorer(span_log_probs[:, :frames], span_lengths, units))

    def initial_state(self, beam_size: int) -> tuple[CTCPrefixState, ...]:
        return tuple(scorer.initial_state(beam_size) for scorer in self.scorers)

    def candidates(self, ranking: torch.Tensor, pre_beam: int) -> tuple[torch.Tensor, bool]:
        return self.scorers[0].candidates(ranking, pre_beam)  # per token, no frames involved

    def score(self, state, last_tokens, candidates, all_units: bool) -> torch.Tensor:
        parts = zip(
            self.scorers, state, last_tokens.split(self.sizes), candidates.split(self.sizes), strict=True
        )
        return torch.cat([scorer.score(*part, all_units) for scorer, *part in parts])

    def final(self, state) -> torch.Tensor:
        return torch.cat(
            [scorer.final(span_state) for scorer, span_state in zip(self.scorers, state, strict=True)]
        )

    def extend(self, state, parents, tokens, parent_last_tokens, prefix) -> tuple[CTCPrefixState, ...]:
        split = [x.split(self.sizes) for x in (parents, tokens, parent_last_tokens, prefix)]
        return tuple(
            scorer.extend(span_state, *parts)
            for scorer, span_state, *parts in zip(self.scorers, state, *split, strict=True)
        )

    def _per_span(self, utterances: torch.Tensor) -> list[torch.Tensor]:
        """Kept utterances (ascending positions in the batch) -> each span's own positions."""
        return [
            torch.tensor(kept, dtype=torch.long, device=utterances.device)
            for kept in positions_per_span(utterances.tolist(), self.sizes)
        ]

    def select(self, utterances: torch.Tensor) -> "SpanCTCPrefixScorer":
        """Keep some utterances: each span keeps its own and drops frames none of them has; an
        emptied span goes."""
        selected = object.__new__(SpanCTCPrefixScorer)
        selected.sizes, selected.scorers = [], []
        for scorer, kept in zip(self.scorers, self._per_span(utterances), strict=True):
            if len(kept):
                selected.sizes.append(len(kept))
                selected.scorers.append(scorer if len(kept) == len(scorer.lengths) else scorer.select(kept))
        return selected

    def select_state(self, state, utterances: torch.Tensor) -> tuple[CTCPrefixState, ...]:
        """The state of the utterances kept by `select`."""
        return tuple(
            span_state if len(kept) == len(scorer.lengths) else scorer.select_state(span_state, kept)
            for scorer, span_state, kept in zip(self.scorers, state, self._per_span(utterances), strict=True)
            if len(kept)
        )
