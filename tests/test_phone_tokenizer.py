"""Phone units (asr/phone_tokenizer.py) and the word lexicon LM over phones (asr/word_lm.py)."""

import math

import numpy as np
import pytest
import soundfile
import torch

from asr.checkpoint import load_model, model_state, save_checkpoint
from asr.cli.transcribe import main as transcribe_main
from asr.decoding import DecodingOptions, hypothesis_text, search
from asr.features import FeatureConfig, SpecAugmentConfig
from asr.model import LAS, AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
from asr.phone_tokenizer import PhoneTokenizer, read_cmudict
from asr.tokenizer import tokenizer_from_dict
from asr.word_lm import NGramScorer, WordLookaheadLM, write_lexicon
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

DICTIONARY = """\
;;; a few CMUdict entries, in its format
the DH AH0
the(2) DH IY0
to T UW1
two T UW1
too T UW1
cat K AE1 T
sat S AE1 T
night N AY1 T
glow G L OW1
bus B AH1 S
"""
# bigrams that prefer "two" after "the" and "to" elsewhere
ARPA = """\\data\\
ngram 1=6
ngram 2=2

\\1-grams:
-1.0\t<s>\t-0.5
-1.0\t</s>
-0.5\tthe\t-0.3
-0.6\tto\t-0.3
-1.5\ttwo\t-0.3
-0.9\tcat\t-0.3

\\2-grams:
-0.1\tthe two
-0.1\ttwo cat

\\end\\
"""


@pytest.fixture
def tokenizer(tmp_path) -> PhoneTokenizer:
    path = tmp_path / "tiny.dict"
    path.write_text(DICTIONARY)
    return PhoneTokenizer.build(["the nightglow sat"], dictionary=path)


def _phones(tokenizer, text: str) -> list[str]:
    return [tokenizer.symbols[i] for i in tokenizer.encode(text)]


def test_words_become_their_phones_without_stress_with_a_boundary_between_words(tokenizer):
    assert tokenizer.vocab_size == 2 + 39 + 1 + 1  # blank, unk, phones, space, sos/eos
    assert _phones(tokenizer, "The cat.") == ["DH", "AH", " ", "K", "AE", "T"]
    # possessives and compounds of dictionary words are pronounced from their parts
    assert _phones(tokenizer, "cat's bus's glow's") == [
        *["K", "AE", "T", "S"],
        " ",
        *["B", "AH", "S", "IH", "Z"],
        " ",
        *["G", "L", "OW", "Z"],
    ]
    assert _phones(tokenizer, "nightglow") == ["N", "AY", "T", "G", "L", "OW"]
    assert tokenizer.pronunciations("nightglow") == ["N AY T G L OW"]
    assert tokenizer.encode("cat zyzzyva")[-1] == tokenizer.unk_id  # nothing to build it from


def test_decoding_spells_each_word_as_the_most_frequent_word_that_sounds_so(tokenizer):
    assert tokenizer.decode(tokenizer.encode("the two cat sat")) == "the to cat sat"  # wordfreq: "to"
    assert tokenizer.decode(tokenizer.encode("the cat zyzzyva")) == "the cat"  # <unk> spells nothing
    assert (
        tokenizer.decode([*tokenizer.encode("the"), tokenizer.space_id, tokenizer.encode("cat")[0]]) == "the"
    )


def test_the_lexicon_travels_in_the_tokenizers_dict(tokenizer):
    again = tokenizer_from_dict(tokenizer.to_dict())
    assert isinstance(again, PhoneTokenizer) and again.lexicon == tokenizer.lexicon
    assert again.lexicon["the"] == ["DH AH", "DH IY"]
    assert list(again.lexicon)[:2] == ["the", "to"]  # most frequent first: decoding's order survives


def test_a_malformed_dictionary_is_refused_naming_the_file_and_line(tmp_path):
    path = tmp_path / "bad.dict"
    path.write_text("the DH AH0\ncat K AE1 QQ T\n")
    with pytest.raises(ValueError, match=r"bad.dict:2: expected 'word PHONE \.\.\.'"):
        read_cmudict(path)
    with pytest.raises(ValueError, match="missing.dict: cannot read"):
        read_cmudict(tmp_path / "missing.dict")


def _score(lm, tokenizer, text: str | list[int]) -> float:
    state = lm.initial_state(1, torch.device("cpu"))
    previous, total = tokenizer.sos_id, 0.0
    ids = tokenizer.encode(text) if isinstance(text, str) else text
    for token in [*ids, tokenizer.eos_id]:
        log_probs, state = lm.step(torch.tensor([previous]), state)
        total += float(log_probs[0, token])
        previous = token
    return total


def test_the_phones_of_a_sentence_add_up_to_its_words_log_probabilities(tokenizer):
    weights = {"the": 3.0, "to": 5.0, "two": 1.0, "cat": 2.0, "zyzzyva": 9.0}  # no phones for the last
    lm = WordLookaheadLM(weights, tokenizer)
    # every (word, pronunciation) is one entry of the tree: "the" counts twice in the normaliser
    normaliser = 3.0 + 5.0 + 1.0 + 2.0 + 3.0
    expected = math.log(3 / normaliser) + math.log(2 / normaliser)
    assert _score(lm, tokenizer, "the cat") == pytest.approx(expected, abs=1e-5)
    assert _score(lm, tokenizer, "the") == pytest.approx(
        _score(lm, tokenizer, tokenizer.phone_ids("DH IY")), abs=1e-5
    )  # DH IY
    # words that sound alike share a node: "to" and "two" together
    assert _score(lm, tokenizer, "two") == pytest.approx(math.log(6 / normaliser), abs=1e-5)
    # a closed vocabulary: a phone sequence that is no word costs 50 nats
    assert _score(lm, tokenizer, "sat") < expected - 40


def test_the_ngram_model_chooses_among_words_that_sound_alike_by_context(tmp_path, tokenizer):
    path = tmp_path / "tiny.arpa"
    path.write_text(ARPA)
    weights = {"the": 3.0, "to": 5.0, "two": 1.0, "cat": 2.0}
    lm = WordLookaheadLM(weights, tokenizer, ngram=NGramScorer(path))
    tokens = tokenizer.encode("the to cat")
    assert lm.text_of(tokens) == "the two cat"
    assert lm.text_of(tokenizer.encode("to cat")) == "to cat"
    # the score is the n-gram's for the chosen word: p(the|<s>) p(two|the) p(cat|two) p(</s>|cat)
    log10 = (-0.5 - 0.5) + -0.1 + -0.1 + (-0.3 - 1.0)
    assert _score(lm, tokenizer, "the to cat") == pytest.approx(log10 * math.log(10), abs=2e-3)
    # without an n-gram model, the more probable one
    assert WordLookaheadLM(weights, tokenizer).text_of(tokens) == "the to cat"


def test_beam_search_with_the_lexicon_returns_words_of_the_lexicon(tokenizer):
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        features=FeatureConfig(sample_rate=8000, num_mel_bins=20),
        spec_augment=SpecAugmentConfig(num_freq_masks=0, num_time_masks=0),
        encoder=EncoderConfig(input_dim=20, hidden_dim=16, num_layers=0, num_pyramid_levels=2, ctc_level=2),
        attention=AttentionConfig(type="location", attention_dim=16, location_kernel_size=5),
        decoder=DecoderConfig(embedding_dim=8, hidden_dim=16),
        ctc_weight=0.5,
    )
    model = LAS(config).eval()
    waves = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        encoded = model.encode(waves, torch.tensor([8000, 6000]))
    lm = WordLookaheadLM({"the": 3.0, "to": 5.0, "two": 1.0, "cat": 2.0}, tokenizer)
    options = DecodingOptions(beam_size=4, ctc_weight=0.3, lm_weight=1.0, max_length_ratio=1.0)
    for nbest in search(model, encoded, options, lm):
        for hypothesis in nbest:
            assert hypothesis.text == lm.text_of(hypothesis.tokens) == hypothesis_text(hypothesis, tokenizer)
            assert set(hypothesis.text.split()) <= {"the", "to", "two", "cat"}
    plain = search(model, encoded, DecodingOptions(beam_size=4), None)
    assert all(h.text is None for nbest in plain for h in nbest)


def test_a_phone_model_transcribes_words_with_and_without_the_lexicon(tmp_path, capsys, tokenizer):
    torch.manual_seed(0)
    model = LAS(tiny_config(vocab_size=tokenizer.vocab_size))
    with torch.no_grad():
        model.decoder.output.bias[tokenizer.eos_id] += 3.0  # keep the random model's outputs short
    save_checkpoint(model_state(model, tokenizer), tmp_path / "phones.pt")
    _, loaded = load_model(tmp_path / "phones.pt")  # weights_only: the lexicon is plain text
    assert isinstance(loaded, PhoneTokenizer) and loaded.lexicon == tokenizer.lexicon
    wave = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)
    soundfile.write(tmp_path / "a.flac", wave, 8000)
    lexicon = tmp_path / "lexicon.tsv"
    write_lexicon({"the": 3.0, "to": 5.0, "cat": 2.0}, lexicon)
    for extra in ([], ["--lm", str(lexicon), "--lm-weight", "1.0", "--word-penalty", "1"]):
        common = ["--model", str(tmp_path / "phones.pt"), "--beam-size", "3", "--ctc-weight", "0.3"]
        assert transcribe_main([*common, *extra, str(tmp_path / "a.flac")]) == 0
        ((_, text),) = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
        words = set(tokenizer.lexicon) if not extra else {"the", "to", "cat"}
        assert set(text.split()) <= words  # words, never phones
