"""Word times from CTC forced alignment (`asr.alignment`)."""

import pytest
import torch

from asr.alignment import WordTime, supports_word_times, word_times
from asr.phone_tokenizer import PhoneTokenizer
from asr.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer.build(["abc def"])  # blank 0, unk 1, space 2, a-f 3-8, sos/eos 9
FRAME = 0.04


def _posteriors(frames: int, spoken: dict[int, int]) -> torch.Tensor:
    """(frames, V) log-probabilities: blank everywhere except `spoken` {frame: token}."""
    logits = torch.full((frames, TOKENIZER.vocab_size), -8.0)
    logits[:, 0] = 8.0
    for frame, token in spoken.items():
        logits[frame, token], logits[frame, 0] = 8.0, -8.0
    return logits.log_softmax(-1)


def test_words_span_their_tokens_frames_and_separators_belong_to_none():
    tokens = TOKENIZER.encode("ab ee")  # a repeated letter needs a blank between its two frames
    # a b at frames 3-5 (b twice: one span), the space at 9, e at 14 and 16
    log_probs = _posteriors(20, {3: 3, 4: 4, 5: 4, 9: 2, 14: 7, 16: 7})
    words = word_times(log_probs, tokens, TOKENIZER, FRAME)
    assert [w.word for w in words] == ["ab", "ee"]
    assert words[0].start == pytest.approx(3 * FRAME) and words[0].end == pytest.approx(6 * FRAME)
    assert words[1].start == pytest.approx(14 * FRAME) and words[1].end == pytest.approx(17 * FRAME)


def test_too_many_tokens_for_the_frames_give_no_times_and_none_give_no_words():
    tokens = TOKENIZER.encode("aaaa")  # four frames of a and three blanks between them: 7 frames
    assert word_times(_posteriors(6, {}), tokens, TOKENIZER, FRAME) is None
    assert word_times(_posteriors(7, {0: 3, 2: 3, 4: 3, 6: 3}), tokens, TOKENIZER, FRAME) == [
        WordTime("aaaa", 0.0, pytest.approx(7 * FRAME))
    ]
    assert word_times(_posteriors(5, {}), [], TOKENIZER, FRAME) == []


def test_phone_models_are_not_supported():
    assert supports_word_times(TOKENIZER)
    assert not supports_word_times(object.__new__(PhoneTokenizer))
