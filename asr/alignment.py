"""Word times from the CTC head: the search's tokens force-aligned to the CTC frames.

The attention weights say where the decoder looked, not when a word was said, and they blur over
neighbouring frames. The CTC head's frame posteriors are sharper: CTC forced alignment
(`torchaudio.functional.forced_align`, Viterbi over the blank-interleaved token sequence) gives each
token of the hypothesis the frames it spans, and a word spans from its first token's first frame to
its last token's last frame. Resolution: one CTC frame (the feature hop times 2 ** ctc_level: 40 ms
for the digits and Kathleen models). Separators (a space character, a lone sentencepiece "▁") are
aligned but belong to no word, so the pause after a word does not lengthen it.

Character and sentencepiece models only: a phone model's words are spelled from phone groups (or by
a word LM), which this does not map back to frames.
"""

from dataclasses import dataclass

import torch
import torchaudio.functional as F

from asr.phone_tokenizer import PhoneTokenizer


@dataclass(frozen=True)
class WordTime:
    word: str
    start: float  # seconds from the start of the decoded audio
    end: float


def ctc_frame_seconds(model) -> float:
    """Seconds per CTC frame: the feature hop times the time reduction below the CTC head."""
    return model.config.features.frame_shift_ms / 1000 * 2**model.config.encoder.ctc_level


def supports_word_times(tokenizer) -> bool:
    return not isinstance(tokenizer, PhoneTokenizer)


def word_times(
    log_probs: torch.Tensor, tokens: list[int], tokenizer, frame_seconds: float
) -> list[WordTime] | None:
    """The words of `tokens` with their times, from CTC log-probabilities (T, V) of one utterance
    (its own frames only; blank is id 0). None when the tokens cannot be aligned: more of them
    (with the blanks that repeated tokens need between them) than the utterance has frames."""
    if not tokens:
        return []
    targets = torch.tensor([tokens], dtype=torch.int32)
    try:
        alignment, scores = F.forced_align(log_probs[None].float().cpu(), targets, blank=0)
    except RuntimeError:  # torchaudio refuses targets longer than the frames allow
        return None
    spans = F.merge_tokens(alignment[0], scores[0].exp(), blank=0)
    if len(spans) != len(tokens):  # cannot happen for a valid alignment; no times beat wrong ones
        return None
    words = tokenizer.decode(tokens).split()
    frames: list[list[int]] = [[] for _ in words]  # the first and last frame of each word's tokens
    for position, span in enumerate(spans):
        if not tokenizer.decode([tokens[position]]).strip():
            continue  # a separator
        index = len(tokenizer.decode(tokens[: position + 1]).split()) - 1
        frames[index] += [span.start, span.end]
    return [
        WordTime(word, min(edges) * frame_seconds, max(edges) * frame_seconds)
        for word, edges in zip(words, frames, strict=True)
        if edges
    ]
