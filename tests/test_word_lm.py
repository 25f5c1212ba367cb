"""The look-ahead word LM (asr/word_lm.py), asr-lexicon, and lexicon fusion in asr-transcribe."""

import math

import pytest
import torch

from asr.cli.lexicon import main as lexicon_main
from asr.cli.transcribe import main as transcribe
from asr.decoding import DecodingOptions, search
from asr.sentencepiece_tokenizer import SentencePieceTokenizer
from asr.tokenizer import CharTokenizer
from asr.word_lm import NGramScorer, WordLookaheadLM, is_lexicon_file, read_lexicon, write_lexicon
from tests.test_decoding import VOCAB_SIZE, _batch, _encode, _trained_model
from tests.test_train_lm import WORDS, _speechlike, acoustic_checkpoint  # noqa: F401 -- a fixture

pytestmark = pytest.mark.usefixtures("one_thread")

# 9 characters: with blank, unk and eos the vocabulary of tests/test_decoding.py's model
TOKENIZER = CharTokenizer.build(["abc defgh"])
LEXICON = {"bad": 5.0, "cafe": 3.0, "head": 2.0, "a": 4.0, "bed": 1.0, "be": 1.0}
TOTAL = sum(LEXICON.values())


def _score(lm: WordLookaheadLM, text: str) -> list[float]:
    """The LM's score of every token of `text` and of eos, fed one at a time as the search does."""
    state = lm.initial_state(1, torch.device("cpu"))
    previous, scores = TOKENIZER.sos_id, []
    for token in [*TOKENIZER.encode(text), TOKENIZER.eos_id]:
        log_probs, state = lm.step(torch.tensor([previous]), state)
        scores.append(float(log_probs[0, token]))
        previous = token
    return scores


def test_the_tokens_of_a_sentence_add_up_to_its_word_log_probabilities():
    assert TOKENIZER.vocab_size == VOCAB_SIZE
    lm = WordLookaheadLM(LEXICON, TOKENIZER)
    expected = math.log(5 / TOTAL) + math.log(3 / TOTAL) + math.log(1 / TOTAL)
    assert sum(_score(lm, "bad cafe be")) == pytest.approx(expected, abs=1e-5)
    # out of the lexicon, wherever the spelling leaves it (a letter, or a prefix that is not a word)
    oov = lm.config.oov_log_prob
    assert oov == pytest.approx(math.log(1 / TOTAL))  # default: the rarest word's probability
    assert sum(_score(lm, "bag")) == pytest.approx(oov, abs=1e-5)
    assert sum(_score(lm, "ca")) == pytest.approx(oov, abs=1e-5)
    assert sum(_score(lm, "hh a")) == pytest.approx(oov + math.log(4 / TOTAL), abs=1e-5)
    penalised = WordLookaheadLM(LEXICON, TOKENIZER, word_penalty=2.5)  # per word, out of lexicon too
    assert sum(_score(penalised, "bad cafe be")) == pytest.approx(expected - 3 * 2.5, abs=1e-5)
    assert sum(_score(penalised, "hh a")) == pytest.approx(oov + math.log(4 / TOTAL) - 5.0, abs=1e-5)
    assert sum(_score(penalised, "")) == 0.0  # the empty hypothesis has no word
    # the look-ahead pays while spelling: after "b" only bad, bed and be remain
    assert _score(lm, "bad")[0] == pytest.approx(math.log(7 / TOTAL), abs=1e-5)


def test_after_a_prefix_the_next_letters_share_the_probability_of_the_words_below_it():
    lm = WordLookaheadLM(LEXICON, TOKENIZER, oov_log_prob=-1e4)
    state = lm.initial_state(1, torch.device("cpu"))
    _, state = lm.step(torch.tensor([TOKENIZER.sos_id]), state)
    log_probs, state = lm.step(torch.tensor(TOKENIZER.encode("b")), state)  # bad 5, bed 1, be 1
    probs = log_probs[0].double().exp()
    assert float(probs[TOKENIZER.encode("a")[0]]) == pytest.approx(5 / 7, abs=1e-6)
    assert float(probs[TOKENIZER.encode("e")[0]]) == pytest.approx(2 / 7, abs=1e-6)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-6)  # "b" alone is no word: no eos, no space
    assert float(log_probs[0, TOKENIZER.blank_id]) == -math.inf


def test_a_heavy_lexicon_fusion_spells_only_lexicon_words():
    model = _trained_model()
    waves, lengths = _batch()
    encoded = _encode(model, waves, lengths)
    lm = WordLookaheadLM(LEXICON, TOKENIZER, oov_log_prob=-50.0)
    plain = search(model, encoded, DecodingOptions(beam_size=4, ctc_weight=0.3))

    def words(results):
        return [w for nbest in results for w in TOKENIZER.decode(nbest[0].tokens).split()]

    assert not set(words(plain)) <= set(LEXICON)  # the random model spells nonsense on its own
    fused = search(model, encoded, DecodingOptions(beam_size=4, ctc_weight=0.3, lm_weight=3.0), lm=lm)
    assert words(fused) and set(words(fused)) <= set(LEXICON)
    for nbest in fused:
        text = TOKENIZER.decode(nbest[0].tokens)
        assert nbest[0].lm_score == pytest.approx(
            sum(math.log(LEXICON[w] / TOTAL) for w in text.split()), abs=1e-4
        )


def test_a_word_piece_model_or_an_empty_lexicon_is_refused_with_the_reason():
    pieces = SentencePieceTokenizer.train(["bad cafe head a bed be"] * 20, vocab_size=20)
    with pytest.raises(ValueError, match="character tokenizer or phones"):
        WordLookaheadLM(LEXICON, pieces)
    with pytest.raises(ValueError, match="no word"):
        WordLookaheadLM({"xyz": 1.0}, TOKENIZER)


def test_asr_lexicon_mixes_text_counts_with_wordfreq_and_round_trips(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("The zyzzyva, the ZYZZYVA!\nthe end\n")
    out = tmp_path / "lexicon.tsv.gz"
    status = lexicon_main(
        ["--wordfreq", "2000", "--text", str(text), "--text-weight", "0.5", "--out", str(out)]
    )
    assert status == 0, capsys.readouterr().err
    weights = read_lexicon(out)
    assert is_lexicon_file(out) and len(weights) > 1500
    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-3)
    assert weights["zyzzyva"] == pytest.approx(0.5 * 2 / 6, rel=1e-4)  # only in the text: 2 of its 6 words
    assert weights["the"] > 0.5 * 3 / 6 + 0.01  # in both: the text's share plus wordfreq's
    assert list(weights)[0] == "the"  # most frequent first
    with pytest.raises(SystemExit):
        lexicon_main(["--out", str(out)])  # no source


def test_a_malformed_lexicon_names_the_file_and_line(tmp_path):
    good = tmp_path / "good.tsv"
    write_lexicon({"bad": 2.0, "a": 1.0}, good)
    assert read_lexicon(good) == {"bad": 2.0, "a": 1.0}
    bad = tmp_path / "bad.tsv"
    bad.write_text(good.read_text() + "cafe\tmany\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:4: expected 'word<TAB>positive weight'"):
        read_lexicon(bad)
    bad.write_text(good.read_text() + "Cafe\t1\n")  # not normalised: would never match the model's output
    with pytest.raises(ValueError, match=r"bad\.tsv:4"):
        read_lexicon(bad)
    assert not is_lexicon_file(tmp_path / "missing.tsv")
    counts = tmp_path / "counts.tsv"  # word counts from another tool: no header, still a lexicon
    counts.write_text("the\t120\nof\t57\n")
    assert is_lexicon_file(counts) and read_lexicon(counts) == {"the": 120.0, "of": 57.0}
    checkpoint = tmp_path / "model.pt"
    torch.save({"format": "x"}, checkpoint)
    assert not is_lexicon_file(checkpoint)


def test_asr_transcribe_fuses_a_lexicon(tmp_path, capsys, acoustic_checkpoint):  # noqa: F811
    lexicon = tmp_path / "digits.tsv"
    # the rarest word sets the default price of a word outside the lexicon: about e^-16
    write_lexicon({**{word: 1.0 for word in WORDS}, "zoo": 1e-6}, lexicon)
    audio = [str(_speechlike(tmp_path / f"utterance{i}.wav", 0.8 + 0.4 * i, seed=i)) for i in range(3)]
    common = ["--model", str(acoustic_checkpoint), "--beam-size", "4", "--ctc-weight", "0.3", *audio]
    assert transcribe(common) == 0
    plain = capsys.readouterr().out
    assert transcribe(["--lm", str(lexicon), "--lm-weight", "3", *common]) == 0
    fused = capsys.readouterr().out
    assert fused != plain
    assert transcribe(["--lm", str(lexicon), "--lm-weight", "3", "--word-penalty", "30", *common]) == 0
    fewer = capsys.readouterr().out  # a huge price per word: one word per recording at most
    assert all(len(line.split("\t")[1].split()) <= 1 for line in fewer.splitlines())
    assert transcribe(["--word-penalty", "1", *common]) == 2
    assert "--word-penalty and --ngram need --lm" in capsys.readouterr().err
    for line in fused.splitlines():
        assert set(line.split("\t")[1].split()) <= {*WORDS, "zoo"}  # digit words only, or nothing
    broken = tmp_path / "broken.tsv"
    broken.write_text(lexicon.read_text() + "two words\t1\n")
    assert transcribe(["--lm", str(broken), *common]) == 2
    assert "broken.tsv:13" in capsys.readouterr().err


ARPA = """\\data\\
ngram 1=5
ngram 2=2

\\1-grams:
-1.0\t<s>\t-0.5
-1.0\t</s>
-0.5\tbad\t-0.3
-0.7\tcafe\t-0.2
-1.2\ta

\\2-grams:
-0.1\t<s> bad
-0.2\tbad cafe

\\end\\
"""


@pytest.mark.parametrize(
    "text, log10_prob",
    [
        ("bad cafe", -0.1 - 0.2 + (-0.2 - 1.0)),  # p(bad|<s>) p(cafe|bad) bo(cafe) p(</s>)
        ("a bad", (-0.5 - 1.2) + -0.5 + (-0.3 - 1.0)),  # bo(<s>) p(a), p(bad), bo(bad) p(</s>)
    ],
)
def test_an_ngram_model_scores_each_word_given_the_words_before_it(tmp_path, text, log10_prob):
    path = tmp_path / "tiny.arpa"
    path.write_text(ARPA)
    lm = WordLookaheadLM(LEXICON, TOKENIZER, ngram=NGramScorer(path))
    # pocketsphinx keeps log-probabilities as integers in base 1.0001: 1e-4 per value
    assert sum(_score(lm, text)) == pytest.approx(log10_prob * math.log(10), abs=2e-3)
    # a lexicon word the n-gram model lacks keeps its unigram; its history is still used after it
    expected = math.log(1 / TOTAL) + (-1.2 - 1.0) * math.log(10)  # "bed"; p(a | bed) = p(a); p(</s> | a)
    assert sum(_score(lm, "bed a")) == pytest.approx(expected, abs=2e-3)


def test_an_unreadable_ngram_model_is_refused_naming_the_file(tmp_path, capsys, acoustic_checkpoint):  # noqa: F811
    with pytest.raises(ValueError, match="missing.arpa: n-gram model not found"):
        NGramScorer(tmp_path / "missing.arpa")
    lexicon = tmp_path / "lexicon.tsv"
    write_lexicon({word: 1.0 for word in WORDS}, lexicon)
    wave = str(_speechlike(tmp_path / "a.wav", 0.8, seed=0))
    status = transcribe(
        ["--model", str(acoustic_checkpoint), "--lm", str(lexicon), "--ngram", str(lexicon), wave]
    )
    assert status == 2 and "lexicon.tsv: not an ARPA or Sphinx binary n-gram model" in capsys.readouterr().err
