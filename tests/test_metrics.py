import doctest
import random

import jiwer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asr.metrics
from asr.metrics import (
    ErrorCounts,
    char_errors,
    kaldi_sentence_summary,
    kaldi_summary,
    read_transcripts,
    utterance_alignment,
    utterance_word_errors,
    word_errors,
    write_transcripts,
)
from asr.text import normalize_text


def _counts(counts: ErrorCounts) -> tuple[int, int, int, int, int]:
    return (counts.substitutions, counts.deletions, counts.insertions, counts.hits, counts.num_reference)


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),  # expected: (S, D, I, hits, N)
    [
        ("the cat sat", "the cat sat", (0, 0, 0, 3, 3)),
        ("The cat, sat!", "the CAT sat", (0, 0, 0, 3, 3)),  # normalised before scoring
        ("the cat sat", "the bat sat", (1, 0, 0, 2, 3)),
        ("the cat sat", "the sat", (0, 1, 0, 2, 3)),
        ("the cat sat", "the cat sat down", (0, 0, 1, 3, 3)),
        ("the cat sat", "", (0, 3, 0, 0, 3)),
        ("", "hello there", (0, 0, 2, 0, 0)),  # jiwer 3 refuses this; all insertions
        ("...", "hello", (0, 0, 1, 0, 0)),  # reference empty only after normalisation
        ("", "", (0, 0, 0, 0, 0)),
    ],
)
def test_word_errors_hand_computed(reference, hypothesis, expected):
    counts = word_errors([reference], [hypothesis])
    assert _counts(counts) == expected
    assert counts.num_utterances == 1
    assert counts.num_utterance_errors == int(sum(expected[:3]) > 0)


def test_word_errors_sums_over_utterances_instead_of_averaging_rates():
    references = ["a", "a b c d e f g h i j", "", "x y"]
    hypotheses = ["b", "a b c d e f g h i j", "extra", ""]
    counts = word_errors(references, hypotheses)
    # 1 substitution + 1 insertion + 2 deletions over 1 + 10 + 0 + 2 reference words.
    assert _counts(counts) == (1, 2, 1, 10, 13)
    assert counts.error_rate == pytest.approx(4 / 13)
    assert (counts.num_utterances, counts.num_utterance_errors) == (4, 3)
    assert counts.sentence_error_rate == pytest.approx(3 / 4)
    assert sum(utterance_word_errors(references, hypotheses), ErrorCounts()) == counts


def test_error_rate_without_reference_words_counts_insertions():
    assert word_errors([""], ["a b"]).error_rate == 2.0
    assert word_errors([], []).error_rate == 0.0


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_errors(["a", "b"], ["a"])


def test_char_errors_count_spaces_of_normalised_text():
    assert _counts(char_errors(["ab c"], ["abc"])) == (0, 1, 0, 3, 4)  # a lost space is an error
    assert _counts(char_errors(["Ab, C!"], ["ab c"])) == (0, 0, 0, 4, 4)
    assert _counts(char_errors(["ab"], [""])) == (0, 2, 0, 0, 2)
    assert _counts(char_errors([""], ["a b"])) == (0, 0, 3, 0, 0)


_VOCABULARY = ["a", "b", "c", "d", "the", "don't"]
_sentences = st.lists(st.sampled_from(_VOCABULARY), max_size=8).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_sentences.filter(bool), _sentences), min_size=1, max_size=6))
def test_word_and_char_errors_agree_with_jiwer(pairs):
    references = [normalize_text(reference) for reference, _ in pairs]
    hypotheses = [normalize_text(hypothesis) for _, hypothesis in pairs]
    assert word_errors(references, hypotheses).error_rate == pytest.approx(jiwer.wer(references, hypotheses))
    assert char_errors(references, hypotheses).error_rate == pytest.approx(jiwer.cer(references, hypotheses))


def test_word_errors_agree_with_jiwer_per_utterance_on_seeded_pairs():
    generator = random.Random(0)
    for _ in range(200):
        reference = " ".join(generator.choices(_VOCABULARY, k=generator.randint(1, 10)))
        hypothesis = " ".join(generator.choices(_VOCABULARY, k=generator.randint(0, 10)))
        counts = word_errors([reference], [hypothesis])
        assert counts.error_rate == pytest.approx(jiwer.wer(reference, hypothesis))
        assert counts.hits + counts.substitutions + counts.deletions == len(reference.split())
        assert counts.hits + counts.substitutions + counts.insertions == len(hypothesis.split())


def test_kaldi_summary_format():
    counts = ErrorCounts(substitutions=5, deletions=4, insertions=3, hits=966, num_reference=975)
    assert kaldi_summary(counts) == "%WER 1.23 [ 12 / 975, 3 ins, 4 del, 5 sub ]"
    assert kaldi_summary(counts, "CER").startswith("%CER 1.23 [ 12 / 975,")
    assert kaldi_summary(ErrorCounts()) == "%WER 0.00 [ 0 / 0, 0 ins, 0 del, 0 sub ]"
    sentences = ErrorCounts(num_utterances=30, num_utterance_errors=3)
    assert kaldi_sentence_summary(sentences) == "%SER 10.00 [ 3 / 30 ]"


def test_utterance_alignment_columns():
    assert utterance_alignment("The cat sat down.", "the bat sat on down") == (
        "REF:  the cat sat *** down\nHYP:  the bat sat on  down\nEVAL:     S       I"
    )
    assert utterance_alignment("a b", "") == "REF:  a   b\nHYP:  *** ***\nEVAL: D   D"
    assert utterance_alignment("", "hi") == "REF:  ***\nHYP:  hi\nEVAL: I"
    assert utterance_alignment("", "") == "REF:\nHYP:\nEVAL:"


def test_read_transcripts_both_formats(tmp_path):
    path = tmp_path / "text"
    path.write_bytes(
        "\ufeffutt1\tHello, world  again\n"  # byte-order mark, tab form, spaces inside the text
        "utt2 kaldi   style text\r\n"  # Kaldi form, Windows line ending
        "\n   \n"  # blank lines are skipped
        "utt3\n"  # empty text
        "utt4\t\n"
        "utt5 café\n"
        "utt6\ttab form\twith a tab\n"
        "utt7 Kaldi form\twith a tab\n".encode()
    )
    assert read_transcripts(path) == {
        "utt1": "Hello, world  again",
        "utt2": "kaldi   style text",
        "utt3": "",
        "utt4": "",
        "utt5": "café",
        "utt6": "tab form\twith a tab",
        "utt7": "Kaldi form\twith a tab",
    }


def test_read_transcripts_duplicate_id_names_file_line_and_id(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("a one\nb two\n\na again\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dup\.txt:4: duplicate utterance id 'a'"):
        read_transcripts(path)


def test_read_transcripts_rejects_invalid_utf8_naming_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("a fine\nb caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt:2: not valid UTF-8"):
        read_transcripts(path)


def test_write_transcripts_round_trips(tmp_path):
    items = [("u2", "Hello, World!"), ("u1", ""), ("u3", "tab\tinside")]
    path = tmp_path / "out.txt"
    write_transcripts(path, items)
    assert path.read_text(encoding="utf-8") == "u2\tHello, World!\nu1\t\nu3\ttab\tinside\n"
    assert list(read_transcripts(path).items()) == items


@pytest.mark.parametrize(("utterance_id", "text"), [("has space", "x"), ("", "x"), ("u1", "two\nlines")])
def test_write_transcripts_rejects_what_cannot_be_read_back(tmp_path, utterance_id, text):
    with pytest.raises(ValueError):
        write_transcripts(tmp_path / "out.txt", [(utterance_id, text)])


def test_docstring_examples_hold():
    assert doctest.testmod(asr.metrics).failed == 0
