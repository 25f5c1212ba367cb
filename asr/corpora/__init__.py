"""Corpora: where training and dev cuts come from.

Each corpus object offers the same four things to the training loop:

    corpus.train_cuts(epoch) -> CutSet     # this epoch's training utterances
    corpus.dev_cuts() -> CutSet            # fixed validation utterances
    corpus.texts() -> list[str]            # training transcripts (to build the tokenizer)
    corpus.speakers() -> list[str]         # the training speakers' names, sorted (speaker adversary)
    corpus.cache -> AudioCache | None      # decoded audio kept in memory, for small corpora
"""

from asr.corpora.fsdd import DigitStrings
from asr.corpora.manifest import ManifestCorpus


def build_corpus(type: str, seed: int = 0, **options):
    """`type` "digit_strings" (FSDD strings made on the fly) or "manifests" (lhotse cut manifests)."""
    if type == "digit_strings":
        return DigitStrings.from_options(seed=seed, **options)
    if type == "manifests":
        return ManifestCorpus(seed=seed, **options)
    raise ValueError(f"unknown data type {type!r}; expected 'digit_strings' or 'manifests'")
