"""Sentencepiece subword units (BPE or unigram), trained from the training transcripts.

The trained sentencepiece model travels inside the checkpoint (as base64 text in `to_dict`), so
a BPE model transcribes exactly like a character model: no `.model` file beside it.

Ids follow asr.tokenizer's layout: 0 blank, 1 <unk> (sentencepiece's own unk), then the pieces,
and <sos/eos> last. Texts go through `normalize_text` before sentencepiece sees them, and
sentencepiece's own normalisation is switched off ("identity"), so `decode(encode(t))` gives back
`normalize_text(t)` for any text made of characters seen in training.
"""

import base64
import io
from collections.abc import Iterable

import sentencepiece as spm

from asr.text import normalize_text
from asr.tokenizer import BLANK, SOS_EOS, UNKNOWN, IdLayout


class SentencePieceTokenizer(IdLayout):
    """
    >>> texts = ["the cat sat on the mat", "the dog sat on the log"] * 20
    >>> tokenizer = SentencePieceTokenizer.train(texts, vocab_size=30)
    >>> tokenizer.decode(tokenizer.encode("The dog sat."))
    'the dog sat'
    """

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self._processor = spm.SentencePieceProcessor(model_proto=model_proto)
        if self._processor.unk_id() != 0 or self._processor.bos_id() >= 0 or self._processor.eos_id() >= 0:
            raise ValueError("sentencepiece model must have <unk> at id 0 and no <s>, </s> or <pad>")
        pieces = [self._processor.id_to_piece(i) for i in range(1, self._processor.get_piece_size())]
        self.symbols = [BLANK, UNKNOWN, *pieces, SOS_EOS]

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 500,
        model_type: str = "bpe",
        character_coverage: float = 1.0,
    ) -> "SentencePieceTokenizer":
        """Train on the normalised `texts`; `vocab_size` counts sentencepiece's pieces (<unk> included).

        A corpus too small for `vocab_size` gets as many pieces as it supports (never an error):
        the vocabulary actually built is `vocab_size` of the result, minus blank and <sos/eos>.
        """
        sentences = [s for s in (normalize_text(t) for t in texts) if s]
        if not sentences:
            raise ValueError("cannot train a sentencepiece model: no training text")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            normalization_rule_name="identity",
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            hard_vocab_limit=False,  # a small corpus gets fewer pieces instead of an error
            num_threads=1,  # the same pieces on every run and every rank
            minloglevel=2,
        )
        return cls(model.getvalue())

    def encode(self, text: str) -> list[int]:
        # sentencepiece id i (0 = <unk>) is our id i + 1 (0 = blank)
        return [i + 1 for i in self._processor.encode(normalize_text(text), out_type=int)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; blank, <unk> and <sos/eos> are dropped."""
        pieces = [i - 1 for i in ids if 2 <= i < self.vocab_size - 1]
        return " ".join(self._processor.decode(pieces).split())

    def to_dict(self) -> dict:
        return {"type": "sentencepiece", "model": base64.b64encode(self.model_proto).decode("ascii")}

    @classmethod
    def from_dict(cls, state: dict) -> "SentencePieceTokenizer":
        return cls(base64.b64decode(state["model"]))
