"""Phones as output units: each word's pronunciation from the CMU Pronouncing Dictionary.

With about a thousand training sentences, a character model must learn English spelling from the
words it happens to hear, and spells the rest from the sounds ("divergence" comes out "deversion";
`recipes/kathleen/README.md`). Phones take spelling out of the acoustic model: it learns 39 sounds,
each heard thousands of times, and the words come from a pronunciation lexicon at decoding time
(`asr.word_lm.WordLookaheadLM` searches phone sequences that spell lexicon words, with an n-gram
model choosing among them, as a classic recogniser does).

Units: the 39 ARPAbet phones of CMUdict without stress marks, and " " between words (the word
boundary the lexicon search needs). The pronunciations come from the copy of CMUdict (126,052
words) that the pocketsphinx package ships. A training word that CMUdict lacks is pronounced from
its parts where it can be: a possessive ("kerfoot's" = "kerfoot" + Z) or a compound of two
dictionary words ("nightglow"); anything else becomes <unk>.

`decode` turns phones back into words without a language model: each word's phones become the most
frequent English word (wordfreq) with that pronunciation ("T UW" -> "to"); a phone group that is no
word's pronunciation is dropped. Beam search with the word lexicon LM chooses among homophones by
context instead (`Hypothesis.text`).

The lexicon (every word and its pronunciations, most frequent word first) travels inside the
checkpoint (`to_dict`), so a phone model transcribes like any other: no dictionary file beside it.
"""

import functools
import os
from collections.abc import Iterable
from pathlib import Path

from asr.text import normalize_text
from asr.tokenizer import BLANK, SOS_EOS, UNKNOWN, IdLayout

# fmt: off
PHONES = [
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH",
    "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V",
    "W", "Y", "Z", "ZH",
]
# fmt: on
_SIBILANTS = {"S", "Z", "SH", "ZH", "CH", "JH"}
_VOICELESS = {"P", "T", "K", "F", "TH"}


class PhoneTokenizer(IdLayout):
    """
    >>> tokenizer = PhoneTokenizer({"the": ["DH AH", "DH IY"], "cat": ["K AE T"], "sat": ["S AE T"]})
    >>> [tokenizer.symbols[i] for i in tokenizer.encode("The cat's")]
    ['DH', 'AH', ' ', 'K', 'AE', 'T', 'S']
    >>> tokenizer.decode(tokenizer.encode("the sat cat"))
    'the sat cat'
    """

    def __init__(self, lexicon: dict[str, list[str]]):
        """`lexicon`: word -> its pronunciations (phones separated by spaces), most frequent word first."""
        self.symbols = [BLANK, UNKNOWN, *PHONES, " ", SOS_EOS]
        self._ids = {p: i for i, p in enumerate(self.symbols) if 2 <= i < len(self.symbols) - 1}
        self.space_id = self._ids[" "]
        self.lexicon = {}
        for word, pronunciations in lexicon.items():
            checked = [p for p in (" ".join(p.split()) for p in pronunciations) if p]
            bad = {phone for p in checked for phone in p.split()} - set(PHONES)
            if bad or not checked:
                raise ValueError(f"lexicon word {word!r}: unknown phones {sorted(bad)} or no pronunciation")
            self.lexicon[word] = checked
        self._spelling: dict[str, str] = {}
        for word, pronunciations in self.lexicon.items():  # the first (most frequent) word wins
            for pronunciation in pronunciations:
                self._spelling.setdefault(pronunciation, word)
        self._pronounce = functools.lru_cache(maxsize=1 << 16)(self._pronunciation)

    @classmethod
    def build(cls, texts: Iterable[str] = (), dictionary: str | os.PathLike | None = None):
        """CMUdict (pocketsphinx's copy, or `dictionary` in its format), plus the words of `texts`
        that it lacks but can pronounce from their parts; ordered by wordfreq's English frequency."""
        lexicon = read_cmudict(dictionary)
        base = cls(lexicon)
        for text in texts:
            for word in normalize_text(text).split():
                if word not in lexicon and (pronunciation := base._pronounce(word)) is not None:
                    lexicon[word] = [pronunciation]
        from wordfreq import word_frequency

        frequency = {word: word_frequency(word, "en") for word in lexicon}
        ordered = sorted(lexicon, key=lambda word: (-frequency[word], word))
        return cls({word: lexicon[word] for word in ordered})

    def pronunciations(self, word: str) -> list[str]:
        """Every pronunciation of `word` (the derived one for a possessive or compound; [] if none)."""
        if word in self.lexicon:
            return self.lexicon[word]
        derived = self._pronounce(word)
        return [derived] if derived is not None else []

    def phone_ids(self, pronunciation: str) -> list[int]:
        """Ids of a pronunciation's phones ("DH AH" -> two ids)."""
        return [self._ids[phone] for phone in pronunciation.split()]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in normalize_text(text).split():
            if ids:
                ids.append(self.space_id)
            pronunciation = self._pronounce(word)
            if pronunciation is None:
                ids.append(self.unk_id)
            else:
                ids.extend(self.phone_ids(pronunciation))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Words of `ids`, each phone group spelled as the most frequent word that sounds so."""
        words, phones = [], []
        for i in [*ids, self.space_id]:
            if i == self.space_id:
                if phones and (word := self._spelling.get(" ".join(phones))) is not None:
                    words.append(word)
                phones = []
            elif 2 <= i < self.vocab_size - 1:
                phones.append(self.symbols[i])
        return " ".join(words)

    def to_dict(self) -> dict:
        lines = "\n".join(f"{word}\t{'|'.join(p)}" for word, p in self.lexicon.items())
        return {"type": "phones", "lexicon": lines}

    @classmethod
    def from_dict(cls, state: dict) -> "PhoneTokenizer":
        lexicon = {}
        for line in state["lexicon"].split("\n"):
            word, pronunciations = line.split("\t")
            lexicon[word] = pronunciations.split("|")
        return cls(lexicon)

    def _pronunciation(self, word: str) -> str | None:
        """The first pronunciation of `word`, or one made from its parts (module docstring)."""
        if word in self.lexicon:
            return self.lexicon[word][0]
        if word.endswith("'s") and word[:-2] in self.lexicon:
            stem = self.lexicon[word[:-2]][0]
            last = stem.split()[-1]
            suffix = "IH Z" if last in _SIBILANTS else "S" if last in _VOICELESS else "Z"
            return f"{stem} {suffix}"
        # a compound of two dictionary words, the most even split first ("night" + "glow")
        for cut in sorted(range(2, len(word) - 1), key=lambda cut: abs(len(word) - 2 * cut)):
            head, tail = word[:cut], word[cut:]
            if head in self.lexicon and tail in self.lexicon:
                return f"{self.lexicon[head][0]} {self.lexicon[tail][0]}"
        return None


def read_cmudict(path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """word -> pronunciations without stress marks, from a CMUdict-format file ("word(2) P1 P2 ...";
    ";;;" comments); pocketsphinx's `cmudict-en-us.dict` when `path` is None."""
    if path is None:
        try:
            import pocketsphinx
        except ImportError:
            raise ValueError("phone units need pocketsphinx's CMUdict: pip install pocketsphinx") from None
        path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    path = Path(path)
    lexicon: dict[str, list[str]] = {}
    try:
        with open(path, encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                fields = line.split()
                if not fields or fields[0].startswith(";;;"):
                    continue
                word = normalize_text(fields[0].split("(")[0])
                if not word or " " in word:  # "a.'s": our text normalisation never makes such a word
                    continue
                phones = [p.rstrip("012") for p in fields[1:]]
                if not phones or not set(phones) <= set(PHONES):
                    raise ValueError(f"{path}:{number}: expected 'word PHONE ...' in ARPAbet: {line[:60]!r}")
                pronunciation = " ".join(phones)
                if pronunciation not in lexicon.setdefault(word, []):
                    lexicon[word].append(pronunciation)
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read pronunciation dictionary: {error}") from None
    if not lexicon:
        raise ValueError(f"{path}: the pronunciation dictionary has no words")
    return lexicon
