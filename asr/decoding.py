"""Beam search for LAS with joint CTC prefix scores and language-model shallow fusion.

One search, batched over utterances and beams (`asr/beam_search.py`, ESPnet's batch beam search;
per-hypothesis loops make LAS search take minutes per utterance, espnet#748). Greedy search is
this search with beam_size 1, by construction. This module holds its options and entry points.

Scoring. A hypothesis y = y_1..y_U, ended by y_{U+1} = eos, ranks by

    score(y) = sum_{i=1..U+1} [(1 - w) log p_att(y_i | y_<i, x) + lm_weight log p_LM(y_i | y_<i)]
             + w log p_ctc(y | x) + length_bonus U + coverage_weight coverage(y)

with w = ctc_weight (Watanabe et al. 2017). While y is an unfinished prefix its CTC term is the
prefix probability log psi(y) (`asr/ctc_prefix.py`), which becomes log p_ctc(y | x) at eos.
Final ranking uses this score as it is, with no division by length: the CTC term already
penalises outputs that are too short as well as too long, and `length_bonus` is the one knob
against the attention decoder's preference for short outputs. Because it is a plain sum, a
finished hypothesis never changes and the search can stop as soon as no live hypothesis can beat
the best finished one.

Lengths. T is an utterance's number of attention memory frames (`EncoderOutput.lengths`) and
token counts exclude eos:

    max_tokens = floor(max_length_ratio * T)   at this length eos is the only choice
    min_tokens = min(ceil(min_length_ratio * T), max_tokens)   eos is masked before it

Between the two, eos must also pass `eos_threshold`, unless CTC rules out every other extension;
the threshold is off at ctc_weight 1, where the attention has no say.
"""

from dataclasses import dataclass

import torch

from asr.beam_search import COVERAGE_THRESHOLD, BatchBeamSearch, Hypothesis
from asr.lm import LSTMLanguageModel
from asr.model.encoder import EncoderOutput
from asr.model.las import LAS

__all__ = [
    "COVERAGE_THRESHOLD",
    "DecodingOptions",
    "Hypothesis",
    "acoustic_log_probability",
    "per_step",
    "decode",
    "search",
]


@dataclass(frozen=True)
class DecodingOptions:
    """Search settings shared by asr-transcribe, asr-evaluate and validation during training."""

    beam_size: int = 10  # hypotheses kept per utterance; 1 is greedy search
    ctc_weight: float = 0.3  # w in (1 - w) attention + w CTC (Watanabe et al. 2017); 0 or 1: one of them
    lm_weight: float = 0.0  # shallow fusion: + lm_weight log p_LM(token | prefix), eos included; needs an LM
    length_bonus: float = 0.0  # added per token (not eos); > 0 counters the attention's short-output bias
    coverage_weight: float = 0.0  # times the frames whose summed attention exceeds 0.5 (Chorowski & Jaitly)
    eos_threshold: float = 1.5  # eos only if log p_att(eos) >= max log p_att - this (Chorowski & Jaitly 2017)
    min_length_ratio: float = 0.0  # at least ceil(ratio * T) tokens, T = attention frames: eos masked before
    max_length_ratio: float = 2.0  # at most floor(ratio * T) tokens, then eos is forced (espnet#1297: loops)
    ctc_pre_beam: int = 40  # CTC scores only this many best attention+LM tokens per hypothesis; 0: all

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.lm_weight < 0 or self.eos_threshold < 0 or self.ctc_pre_beam < 0:
            raise ValueError("lm_weight, eos_threshold and ctc_pre_beam must not be negative")
        if not 0.0 <= self.min_length_ratio <= self.max_length_ratio:
            raise ValueError(
                f"need 0 <= min_length_ratio ({self.min_length_ratio}) <= max_length_ratio "
                f"({self.max_length_ratio})"
            )


def decode(
    model: LAS,
    waves: torch.Tensor,
    wave_lens: torch.Tensor,
    options: DecodingOptions = DecodingOptions(),
    lm: LSTMLanguageModel | None = None,
) -> list[Hypothesis]:
    """Encode and search; the best hypothesis per utterance.

    Parameters
    ----------
    model : LAS, in eval mode
    waves : torch.Tensor, shape = (batch, samples)
        at the model's sample rate, zero-padded.
    wave_lens : torch.Tensor, shape = (batch,)
    options : DecodingOptions
    lm : LSTMLanguageModel, optional
        fused with weight `options.lm_weight`.
    """
    with torch.inference_mode():
        return [nbest[0] for nbest in search(model, model.encode(waves, wave_lens), options, lm)]


def hypothesis_text(hypothesis: Hypothesis, tokenizer) -> str:
    """The text of a search result: the LM's words where it spells them (phones), else the tokenizer's."""
    return hypothesis.text if hypothesis.text is not None else tokenizer.decode(hypothesis.tokens)


def acoustic_log_probability(hypothesis: Hypothesis, ctc_weight: float) -> tuple[float, int]:
    """(1 - w) log p_att(y | x) + w log p_ctc(y | x) of a search result, and its steps (tokens + eos).

    The search's own score without the LM, the length bonus and coverage: how sure the acoustic
    model is of the words. Divided by the steps it is Whisper's `avg_logprob`, which ranks
    utterances by their chance of holding errors (on the digits sets measured, an utterance with
    errors scored below one without in 79-98 % of pairs: recipes/digits/README.md, "Confidence").
    It is not a calibrated probability of being right.
    """
    score = hypothesis.attention_score
    if hypothesis.ctc_score is not None:
        score = (1 - ctc_weight) * score + ctc_weight * hypothesis.ctc_score
    return score, len(hypothesis.tokens) + 1


def per_step(scores: list[tuple[float, int]]) -> float | None:
    """(log-probability, steps) pairs of a recording's segments -> its log-probability per step,
    segments weighted by their steps; None without a step (nothing decoded)."""
    steps = sum(count for _, count in scores)
    return sum(score for score, _ in scores) / steps if steps else None


def search(
    model: LAS,
    encoder_output: EncoderOutput,
    options: DecodingOptions = DecodingOptions(),
    lm: LSTMLanguageModel | None = None,
) -> list[list[Hypothesis]]:
    """Beam search over a batch of encoded utterances.

    Returns, per utterance, up to `beam_size` finished hypotheses, best first. The first is the
    search result; the rest are those that ended before the search stopped.
    """
    if model.training or (lm is not None and lm.training):
        raise ValueError("search needs eval mode: dropout and SpecAugment would make it random")
    use_lm = lm is not None and options.lm_weight > 0
    if use_lm and lm.config.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"LM vocabulary ({lm.config.vocab_size}) differs from the model's ({model.config.vocab_size})"
        )
    with torch.inference_mode():
        return BatchBeamSearch(model, encoder_output, options, lm if use_lm else None).run()
