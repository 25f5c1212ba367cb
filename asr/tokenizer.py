"""Text -> token ids and back.

Id layout (shared by every tokenizer, ESPnet's convention):

    0          <blank>   CTC blank; also the padding value of token tensors
    1          <unk>     anything outside the vocabulary
    2 .. V-2             the units (characters, or sentencepiece pieces)
    V-1        <sos/eos> start and end of sentence share one id

A tokenizer serialises to a plain dict (`to_dict`) that the checkpoint carries, so a saved model
needs no vocabulary file beside it (nanoGPT keeps its vocabulary outside the checkpoint; we do not).
"""

from collections.abc import Iterable, Sequence

from asr.text import normalize_text

BLANK = "<blank>"
UNKNOWN = "<unk>"
SOS_EOS = "<sos/eos>"


class IdLayout:
    """The id layout above, for a tokenizer whose `symbols` list every id's symbol."""

    blank_id = 0
    unk_id = 1
    symbols: list[str]

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    @property
    def sos_id(self) -> int:
        return len(self.symbols) - 1

    @property
    def eos_id(self) -> int:
        return len(self.symbols) - 1


class CharTokenizer(IdLayout):
    """Characters of normalised text, the space included.

    >>> tokenizer = CharTokenizer.build(["one two", "three"])
    >>> tokenizer.decode(tokenizer.encode("Two, three!"))
    'two three'
    """

    def __init__(self, characters: Sequence[str]):
        if len(set(characters)) != len(characters) or any(len(c) != 1 for c in characters):
            raise ValueError(f"characters must be distinct single characters, got {characters!r}")
        self.characters = list(characters)
        self.symbols = [BLANK, UNKNOWN, *self.characters, SOS_EOS]
        self._ids = {c: i for i, c in enumerate(self.symbols) if i >= 2 and i < len(self.symbols) - 1}

    @classmethod
    def build(cls, texts: Iterable[str]) -> "CharTokenizer":
        """The sorted set of characters in the normalised `texts`, always with the space."""
        characters = {" "}
        for text in texts:
            characters.update(normalize_text(text))
        return cls(sorted(characters))

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(c, self.unk_id) for c in normalize_text(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; blank, <unk> and <sos/eos> are dropped."""
        units = [self.symbols[i] for i in ids if 2 <= i < self.vocab_size - 1]
        return " ".join("".join(units).split())

    def to_dict(self) -> dict:
        return {"type": "char", "characters": self.characters}


def tokenizer_from_dict(state: dict):
    """Rebuild the tokenizer that `to_dict` described."""
    kind = state.get("type")
    if kind == "char":
        return CharTokenizer(state["characters"])
    if kind == "sentencepiece":
        from asr.sentencepiece_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer.from_dict(state)
    if kind == "phones":
        from asr.phone_tokenizer import PhoneTokenizer

        return PhoneTokenizer.from_dict(state)
    raise ValueError(f"unknown tokenizer type {kind!r}")
