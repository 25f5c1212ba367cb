"""The batched beam search behind `asr.decoding.search`: one search over utterances x beams.

Every state tensor has (active utterances x beam) rows, and the only Python loop runs over output
steps (ESPnet's `BatchBeamSearch`; per-hypothesis loops make LAS search take minutes per
utterance, espnet#748). The scores and length limits it applies are described in `asr/decoding.py`.

Selection per step: the beam_size best of an utterance's beam x (candidates + eos) extensions are
kept; those that chose eos move to the finished list and free their slot, which the next step
refills. An utterance is done when no live hypothesis is left or none can still beat its best
finished one; done utterances leave the batch. At the end, back-pointers are followed from every
finished hypothesis to its tokens and attention weights.

Mixed lengths. Utterances run longest first, cut into a few spans of similar lengths
(`length_spans`; CPU only). Each span attends and scores CTC over its own longest utterance's
frames instead of the batch's, so short strings do not pay for a long one's padding; the results
are the ones the padded batch gives, to rounding. On 16 digit strings of 1-5 s at beam 10 the
search took about 5 % less time (recipes/digits/README.md).
"""

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from asr.ctc_prefix import CTCPrefixScorer, SpanCTCPrefixScorer, positions_per_span
from asr.features import sequence_mask
from asr.model.encoder import EncoderOutput
from asr.model.las import LAS

if TYPE_CHECKING:  # asr.decoding imports this module
    from asr.decoding import DecodingOptions
    from asr.lm import LSTMLanguageModel

NEG_INF = float("-inf")
# What one more span of utterances costs a search step (its own attention and CTC calls), in
# attention row-frames (one hypothesis attending over one frame); see `length_spans`.
SPAN_COST = 1000
# a frame counts as covered once its summed attention exceeds this (Chorowski & Jaitly 2017)
COVERAGE_THRESHOLD = 0.5


@dataclass
class Hypothesis:
    """One finished search result (`asr.decoding.search` returns them best first)."""

    tokens: list[int]  # without sos and eos
    score: float  # the ranking score (`asr/decoding.py`'s docstring)
    attention: torch.Tensor | None  # (len(tokens) + 1, T) attention weights of each step, the eos step last
    attention_score: float  # sum of log p_att over the tokens and eos
    ctc_score: float | None  # log p_ctc(tokens | x); None when ctc_weight is 0
    lm_score: float | None  # sum of log p_LM over the tokens and eos; None without fusion
    ended_by: str  # "eos", or "max_length" when the length limit forced eos
    # the words, where the LM spells them (a phone model's lexicon LM); else tokenizer.decode(tokens)
    text: str | None = None


def length_spans(lengths: list[int], rows_per_utterance: int) -> list[int]:
    """Cut utterances sorted by decreasing length into spans of consecutive ones: the span sizes.

    Each span attends (and scores CTC) over its longest utterance's frames, so a span of n
    utterances costs n * rows_per_utterance * (its first length) row-frames, plus SPAN_COST for its
    own operations. The cut minimises the total (dynamic programming over the cut points): one
    span for similar lengths, a few for mixed ones.
    """
    count = len(lengths)
    best, cut = [0.0] + [math.inf] * count, [0] * (count + 1)  # best[j]: the first j utterances
    for end in range(1, count + 1):
        for start in range(end):
            cost = best[start] + SPAN_COST + (end - start) * rows_per_utterance * lengths[start]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    sizes, end = [], count
    while end > 0:
        sizes.append(end - cut[end])
        end = cut[end]
    return sizes[::-1]


class _Candidates(NamedTuple):
    tokens: torch.Tensor  # (A, K, C + 1) token ids, eos last
    scores: torch.Tensor  # (A, K, C + 1) float64 total scores, -inf where not allowed
    ctc: torch.Tensor | None  # (A, K, C + 1) float64 log psi of each extension (eos: log p_ctc(g | x))


class _Chosen(NamedTuple):
    slots: torch.Tensor  # (A, K) the parent's slot in the previous beam
    tokens: torch.Tensor  # (A, K) the appended token
    scores: torch.Tensor  # (A, K) float64 total score, -inf for an empty slot
    attention_scores: torch.Tensor  # (A, K) float64 summed log p_att
    lm_scores: torch.Tensor  # (A, K) float64 summed log p_LM (zero without fusion)
    ctc: torch.Tensor | None  # (A, K) float64 log psi of the new prefix
    live: torch.Tensor  # (A, K) bool: a finite score and not ended
    ended: torch.Tensor  # (A, K) bool: chose eos


class _Finished(NamedTuple):
    """The best `beam_size` finished hypotheses of every utterance, (B, K) each, best first."""

    score: torch.Tensor
    step: torch.Tensor  # the step that chose eos = the number of tokens
    slot: torch.Tensor  # the slot of the hypothesis that chose eos, in that step's beam
    attention_score: torch.Tensor
    lm_score: torch.Tensor
    ctc_score: torch.Tensor
    forced: torch.Tensor  # bool: ended at max_tokens

    @classmethod
    def empty(cls, batch: int, beam: int, device: torch.device) -> "_Finished":
        scores = torch.full((batch, beam), NEG_INF, dtype=torch.float64, device=device)
        step = torch.zeros(batch, beam, dtype=torch.long, device=device)
        zeros = torch.zeros_like(scores)
        return cls(scores, step, step.clone(), zeros, zeros.clone(), zeros.clone(), step.bool())


class BatchBeamSearch:
    """The running state of one search; `run()` performs it and returns the n-best lists.

    Shapes: A active utterances, K = beam_size, N = A * K rows (utterance-major), V vocabulary,
    T attention frames of the longest active utterance. The caller checks the options, the eval
    mode and the LM's vocabulary (`asr.decoding.search`) and runs it under `torch.inference_mode`.
    """

    def __init__(
        self,
        model: LAS,
        encoder_output: EncoderOutput,
        options: "DecodingOptions",
        lm: "LSTMLanguageModel | None",
    ):
        self.options, self.lm, self.decoder = options, lm, model.decoder
        self.beam, self.eos, self.vocab_size = options.beam_size, model.sos_eos_id, model.config.vocab_size
        memory, lengths = encoder_output.output, encoder_output.lengths
        batch, device = memory.shape[0], memory.device
        self.memory_lengths = lengths  # by utterance, as given; everything below is by active position
        # The utterances run longest first, so that spans of similar lengths (`length_spans`) can
        # attend over their own frames only; `active` maps positions back to the caller's order.
        self.active = lengths.argsort(descending=True, stable=True)
        memory, lengths = memory.index_select(0, self.active), lengths.index_select(0, self.active)
        # CPU only: on a GPU the padded work is nearly free and every span adds kernel launches
        self.span_sizes = length_spans(lengths.tolist(), self.beam) if device.type == "cpu" else [batch]
        self.spans = self._spans(lengths)
        # the 1e-9 keeps ratio * T that is an integer in exact arithmetic from rounding the wrong way
        self.max_tokens = torch.floor(lengths.double() * options.max_length_ratio + 1e-9).long()
        min_tokens = torch.ceil(lengths.double() * options.min_length_ratio - 1e-9).long()
        self.min_tokens = torch.minimum(min_tokens, self.max_tokens)
        rows = torch.arange(batch, device=device).repeat_interleave(self.beam)
        # the attention keys are projected once per utterance; the frames, keys and mask stay one
        # per utterance, which the attention shares among the beam's rows (asr/model/attention.py)
        self.keys = self.decoder.attention.prepare(memory)
        self.memory = memory
        self.mask = sequence_mask(lengths, memory.shape[1])
        self.decoder_state = self.decoder.initial_state(memory, lengths).select(rows)
        self.tokens = torch.full((batch * self.beam,), self.eos, device=device)  # sos
        # only slot 0 starts live, so the first step does not pick the same extension K times
        self.live = torch.zeros(batch, self.beam, dtype=torch.bool, device=device)
        self.live[:, 0] = True
        self.attention_scores = torch.zeros(batch, self.beam, dtype=torch.float64, device=device)
        self.lm_scores = torch.zeros_like(self.attention_scores)
        self.lm_state = lm.initial_state(batch * self.beam, device) if lm is not None else None
        self.coverage = torch.zeros_like(self.decoder_state.weights) if options.coverage_weight else None
        self.ctc = self.ctc_state = None
        if options.ctc_weight > 0:
            units = slice(1, self.vocab_size - 1)  # every id but blank and eos
            log_probs = model.ctc_log_probs(encoder_output).index_select(0, self.active)
            ctc_lengths = encoder_output.ctc_lengths.index_select(0, self.active)
            if len(self.span_sizes) > 1:
                self.ctc = SpanCTCPrefixScorer(log_probs, ctc_lengths, units, self.span_sizes)
            else:
                self.ctc = CTCPrefixScorer(log_probs, ctc_lengths, units)
            self.ctc_state = self.ctc.initial_state(self.beam)
        self.finished = _Finished.empty(batch, self.beam, device)
        self.history = []  # per step: active (A,), tokens (A, K), slots (A, K), attention weights (A, K, T)

    def _spans(self, lengths: torch.Tensor):
        """(first, end, frames) of each span over the active positions; None for a single span."""
        if len(self.span_sizes) < 2:
            return None
        frames, spans, start = lengths.tolist(), [], 0
        for size in self.span_sizes:
            spans.append((start, start + size, frames[start]))  # sorted: its first is its longest
            start += size
        return spans

    def run(self) -> list[list[Hypothesis]]:
        for step in itertools.count():
            candidates, attention, lm_log_probs, covered = self._expand(step)
            chosen = self._select(candidates, attention, lm_log_probs)
            self._record(step, chosen)
            done = self._done(step, chosen, covered)
            if bool(done.all()):
                break
            self._advance(chosen, done)
        return self._collect()

    def _expand(self, step: int):
        """One decoder (and LM) step for every row, and the scores of all allowed extensions."""
        options, active_count, beam, vocab_size = self.options, len(self.active), self.beam, self.vocab_size
        logits, self.decoder_state = self.decoder.step(
            self.tokens, self.decoder_state, self.keys, self.memory, self.mask, self.spans
        )
        attention = torch.log_softmax(logits.float(), dim=-1).view(active_count, beam, vocab_size)
        fused = (1 - options.ctc_weight) * attention.double()
        lm_log_probs = None
        if self.lm is not None:
            lm_log_probs, self.lm_state = self.lm.step(self.tokens, self.lm_state)
            lm_log_probs = lm_log_probs.view(active_count, beam, vocab_size)
            fused = fused + options.lm_weight * lm_log_probs.double()
        base, covered = self._prefix_scores(step)
        units = torch.arange(1, vocab_size - 1, device=logits.device).expand(active_count, beam, -1)
        unit_ctc = eos_ctc = ctc = None
        if self.ctc is not None:
            # the pre-beam ranks by the unweighted attention (+ LM), still meaningful at ctc_weight 1
            ranking = attention if lm_log_probs is None else attention + options.lm_weight * lm_log_probs
            units, all_units = self.ctc.candidates(ranking, options.ctc_pre_beam)
            unit_ctc = self.ctc.score(self.ctc_state, self.tokens.view(active_count, beam), units, all_units)
            eos_ctc = self.ctc.final(self.ctc_state)
            ctc = torch.cat([unit_ctc, eos_ctc[..., None]], dim=-1)
        unit_scores = fused.gather(2, units) + options.length_bonus
        eos_scores = fused[..., self.eos]
        if ctc is not None:
            unit_scores = unit_scores + options.ctc_weight * unit_ctc
            eos_scores = eos_scores + options.ctc_weight * eos_ctc
        unit_scores = unit_scores.masked_fill((step >= self.max_tokens)[:, None, None], NEG_INF)
        eos_scores = eos_scores.masked_fill(~self._eos_allowed(step, attention, unit_scores), NEG_INF)
        scores = base[..., None] + torch.cat([unit_scores, eos_scores[..., None]], dim=-1)
        scores = scores.masked_fill(~self.live[..., None], NEG_INF)
        tokens = torch.cat([units, torch.full_like(units[..., :1], self.eos)], dim=-1)
        return _Candidates(tokens, scores, ctc), attention, lm_log_probs, covered

    def _prefix_scores(self, step: int):
        """(A, K) score of each live prefix without its CTC term, and its covered frames (or None)."""
        options = self.options
        base = (1 - options.ctc_weight) * self.attention_scores + options.length_bonus * step
        if self.lm is not None:
            base = base + options.lm_weight * self.lm_scores
        if self.coverage is None:
            return base, None
        # the weights of this step count for every extension of the row, eos included
        self.coverage = self.coverage + self.decoder_state.weights
        covered = (self.coverage > COVERAGE_THRESHOLD).sum(-1).view_as(base)
        return base + options.coverage_weight * covered, covered

    def _eos_allowed(self, step: int, attention: torch.Tensor, unit_scores: torch.Tensor) -> torch.Tensor:
        """(A, K) bool: min length reached and eos confident enough, or no other way to go on.

        No other way: max length reached, or CTC gives every other extension probability zero (a
        prefix needs at least one frame per label), so no live hypothesis is lost to the threshold.
        """
        allowed = (step >= self.min_tokens)[:, None].expand(attention.shape[:2])
        threshold = self.options.eos_threshold
        # With ctc_weight 1 the attention has no say, so neither has its eos confidence.
        if math.isfinite(threshold) and self.options.ctc_weight < 1:
            best = attention[..., 1:].max(dim=-1).values  # the blank never competes
            allowed = allowed & (attention[..., self.eos] >= best - threshold)
        return allowed | (unit_scores == NEG_INF).all(dim=-1)

    def _select(self, candidates: _Candidates, attention, lm_log_probs) -> _Chosen:
        """The K best extensions of each utterance, eos included (ESPnet's beam search)."""
        active_count, beam, width = candidates.tokens.shape
        scores, index = candidates.scores.view(active_count, beam * width).topk(beam, dim=1)
        slots = torch.div(index, width, rounding_mode="floor")
        tokens = candidates.tokens.view(active_count, -1).gather(1, index)
        vocab_index = slots * self.vocab_size + tokens  # into (A, K * V)
        attention_scores = self.attention_scores.gather(1, slots) + attention.view(active_count, -1).gather(
            1, vocab_index
        )
        lm_scores = self.lm_scores
        if lm_log_probs is not None:
            lm_scores = lm_scores.gather(1, slots) + lm_log_probs.view(active_count, -1).gather(
                1, vocab_index
            )
        ctc = candidates.ctc.view(active_count, -1).gather(1, index) if candidates.ctc is not None else None
        finite = scores > NEG_INF
        ended = finite & (tokens == self.eos)
        return _Chosen(slots, tokens, scores, attention_scores, lm_scores, ctc, finite & ~ended, ended)

    def _record(self, step: int, chosen: _Chosen) -> None:
        """Merge this step's ended hypotheses into the finished lists; keep back-pointers and weights."""
        weights = self.decoder_state.weights.view(len(self.active), self.beam, -1)
        self.history.append((self.active, chosen.tokens, chosen.slots, weights))
        if not bool(chosen.ended.any()):  # most steps: skips some 30 small tensor operations
            return
        new = _Finished(
            chosen.scores.masked_fill(~chosen.ended, NEG_INF),
            torch.full_like(chosen.slots, step),
            chosen.slots,
            chosen.attention_scores,
            chosen.lm_scores,
            chosen.ctc if chosen.ctc is not None else torch.zeros_like(chosen.scores),
            (step >= self.max_tokens)[:, None].expand_as(chosen.ended),
        )
        merged = [
            torch.cat([old.index_select(0, self.active), value], dim=1)
            for old, value in zip(self.finished, new, strict=True)
        ]
        order = merged[0].topk(self.beam, dim=1).indices
        for old, value in zip(self.finished, merged, strict=True):
            old[self.active] = value.gather(1, order)

    def _done(self, step: int, chosen: _Chosen, covered) -> torch.Tensor:
        """(A,) bool: no live hypothesis left, or none can beat the best finished one.

        Every later token adds a log-probability <= 0 (the CTC prefix probability never grows), so a
        live score can still rise only by the length bonus and newly covered frames.
        """
        options = self.options
        bound = chosen.scores
        if options.length_bonus > 0:
            bound = bound + options.length_bonus * (self.max_tokens - step - 1).clamp(min=0)[:, None]
        if options.coverage_weight > 0:
            frames = self.memory_lengths.index_select(0, self.active)[:, None]
            bound = bound + options.coverage_weight * (frames - covered.gather(1, chosen.slots))
        best_live = bound.masked_fill(~chosen.live, NEG_INF).max(dim=1).values
        best_finished = self.finished.score.index_select(0, self.active).max(dim=1).values
        return best_live <= best_finished

    def _advance(self, chosen: _Chosen, done: torch.Tensor) -> None:
        """Move every state to the chosen hypotheses of the utterances that are not done."""
        beam, active_count = self.beam, len(self.active)
        parent_last = self.tokens.view(active_count, beam).gather(1, chosen.slots)
        utterances, dropping = torch.arange(active_count, device=done.device), bool(done.any())
        if dropping:
            utterances = (~done).nonzero().squeeze(1)  # positions of the utterances that go on
            chosen = _Chosen(*(None if x is None else x.index_select(0, utterances) for x in chosen))
            parent_last = parent_last.index_select(0, utterances)
        rows = (utterances[:, None] * beam + chosen.slots).flatten()  # the parents, (A' * K,)
        self.decoder_state = self.decoder_state.select(rows)
        if self.lm is not None:
            self.lm_state = self.lm.select_state(self.lm_state, rows)
        if self.coverage is not None:
            self.coverage = self.coverage.index_select(0, rows)
        if self.ctc is not None:
            state = self.ctc_state
            if dropping:
                state, self.ctc = self.ctc.select_state(state, utterances), self.ctc.select(utterances)
            self.ctc_state = self.ctc.extend(state, chosen.slots, chosen.tokens, parent_last, chosen.ctc)
        self.tokens = chosen.tokens.flatten()
        self.live, self.attention_scores, self.lm_scores = (
            chosen.live,
            chosen.attention_scores,
            chosen.lm_scores,
        )
        if dropping:
            self._drop_utterances(utterances)

    def _drop_utterances(self, keep: torch.Tensor) -> None:
        """Remove done utterances from the batch and frames that no remaining one has."""
        kept = positions_per_span(keep.tolist(), self.span_sizes)
        self.span_sizes = [len(positions) for positions in kept if positions]
        self.active = self.active.index_select(0, keep)
        self.max_tokens = self.max_tokens.index_select(0, keep)
        self.min_tokens = self.min_tokens.index_select(0, keep)
        lengths = self.memory_lengths.index_select(0, self.active)
        self.spans = self._spans(lengths)
        frames = int(lengths.max())
        self.keys = self.keys.index_select(0, keep)[:, :frames]
        self.memory = self.memory.index_select(0, keep)[:, :frames]
        self.mask = self.mask.index_select(0, keep)[:, :frames]
        self.decoder_state = self.decoder_state._replace(weights=self.decoder_state.weights[:, :frames])
        if self.coverage is not None:
            self.coverage = self.coverage[:, :frames]

    def _stack_history(self, batch: int, beam: int):
        """(S, B, K) tokens and back-pointers and (S, B, K, T) weights, whatever was active when."""
        steps, frames = len(self.history), int(self.memory_lengths.max())
        tokens = torch.zeros(steps, batch, beam, dtype=torch.long, device=self.memory.device)
        slots = torch.zeros_like(tokens)
        weights = self.memory.new_zeros(steps, batch, beam, frames)
        for step, (active, step_tokens, step_slots, step_weights) in enumerate(self.history):
            tokens[step, active], slots[step, active] = step_tokens, step_slots
            weights[step, active, :, : step_weights.shape[-1]] = step_weights
        return tokens, slots, weights

    def _collect(self) -> list[list[Hypothesis]]:
        """Follow the back-pointers of every finished hypothesis to its tokens and attention weights."""
        finished = self.finished
        batch, beam = finished.score.shape
        tokens, slots, weights = self._stack_history(batch, beam)
        utterance = torch.arange(batch, device=tokens.device).repeat_interleave(beam)  # (M,), M = B * K
        end, slot = finished.step.flatten(), finished.slot.flatten()
        out_tokens = torch.zeros(batch * beam, len(self.history), dtype=torch.long, device=tokens.device)
        out_weights = weights.new_zeros(batch * beam, len(self.history) + 1, weights.shape[-1])
        out_weights[torch.arange(batch * beam, device=tokens.device), end] = weights[end, utterance, slot]
        for step in reversed(range(len(self.history))):  # a loop over steps, vectorised over hypotheses
            on = step < end
            parent = slots[step, utterance, slot]
            out_tokens[:, step] = tokens[step, utterance, slot]
            out_weights[:, step] = torch.where(
                on[:, None], weights[step, utterance, parent], out_weights[:, step]
            )
            slot = torch.where(on, parent, slot)
        return self._hypotheses(out_tokens, out_weights)

    def _hypotheses(self, tokens, weights) -> list[list[Hypothesis]]:
        """Python objects from the finished lists; tokens (M, S) and weights (M, S + 1, T), M = B * K."""
        batch, beam = self.finished.score.shape
        entries = zip(*(x.flatten().tolist() for x in self.finished), strict=True)
        token_lists, frames = tokens.tolist(), self.memory_lengths.tolist()
        spell = self.lm.text_of if getattr(self.lm, "owns_spelling", False) else None
        results = [[] for _ in range(batch)]
        for entry, (score, end, _, attention_score, lm_score, ctc_score, forced) in enumerate(entries):
            utterance = entry // beam
            if score == NEG_INF:  # fewer than K hypotheses ended
                continue
            hypothesis = Hypothesis(
                tokens=token_lists[entry][:end],
                score=score,
                attention=weights[entry, : end + 1, : frames[utterance]].clone(),
                attention_score=attention_score,
                ctc_score=ctc_score if self.ctc is not None else None,
                lm_score=lm_score if self.lm is not None else None,
                ended_by="max_length" if forced else "eos",
                text=spell(token_lists[entry][:end]) if spell is not None else None,
            )
            results[utterance].append(hypothesis)
        return results
