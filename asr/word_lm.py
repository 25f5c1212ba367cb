"""A word language model for shallow fusion with a character model: a lexicon with look-ahead.

A character model trained on a thousand sentences spells new words from the sounds alone
("divergence" comes out "deversion"), and a character LSTM LM trained on the same sentences knows
too little English to correct it (`recipes/kathleen/README.md`). A word lexicon with unigram
probabilities, built by `asr-lexicon` from any text and/or wordfreq's English word frequencies,
knows which spellings are words and how common each one is.

The search adds scores per character, so the word probabilities are spread over the characters
with a prefix tree and look-ahead (Hori, Cho & Watanabe 2018, "End-to-end speech recognition with
word-based RNN language models"). With S(n) = log sum of p(w) over the words below trie node n
(S(root) = 0) and p_oov the probability given to any one word outside the lexicon:

    letter c, node n -> child m          S(m) - S(n)
    letter c, node n without that child  log p_oov - S(n); the word is out of the lexicon until it ends
    word end (space or eos) at node n    log p(w_n) - S(n) if n ends a word, else log p_oov - S(n)
    letter out of lexicon                0
    word end out of lexicon              0
    every word end                       - word_penalty (0 by default)
    space right after a space or sos     -inf (normalised text never has one)

The scores of a word's characters and its end sum to log p(w), or log p_oov, so fusion adds
`lm_weight * log p(word)` per word, but a hypothesis already pays for a rare or impossible prefix
while it is being spelled, before the beam would otherwise drop the right word.

With a phone model (`asr/phone_tokenizer.py`) the tree is built over each word's pronunciations
instead of its letters; words that sound alike end at one node, and the n-gram model, given the
history, chooses which of them the hypothesis wrote (`text_of`).

All transitions and scores are two dense (nodes + 1) x V tables, so a search step is two gathers
for every hypothesis at once; the object has the interface of `asr.lm.LSTMLanguageModel`
(`initial_state`, `step`, `select_state`) and plugs into `asr.decoding.search` unchanged.
"""

import functools
import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from asr.files import atomic_write
from asr.phone_tokenizer import PhoneTokenizer
from asr.text import normalize_text
from asr.tokenizer import CharTokenizer

NEG_INF = float("-inf")
SENTENCE_START, UNKNOWN_WORD = -1, -2  # word ids of the history besides the lexicon's
# A phone model's price for a phone sequence that is no lexicon word: nearly a closed vocabulary
PHONE_OOV_LOG_PROB = -50.0
# A lexicon file is text: one "word<TAB>weight" per line (weights are counts or frequencies).
LEXICON_HEADER = "# las-asr lexicon: word<TAB>weight, normalised to probabilities when loaded"


@dataclass(frozen=True)
class WordLMConfig:
    vocab_size: int  # the character tokenizer's, as `LanguageModelConfig.vocab_size`
    words: int  # words in the lexicon that the tokenizer can spell
    oov_log_prob: float  # log p of one word outside the lexicon
    word_penalty: float = 0.0  # subtracted at every word end (a word insertion penalty, as in Kaldi)


class WordLookaheadLM(nn.Module):
    """Look-ahead word unigram LM over a character tokenizer's ids (module docstring).

    >>> tokenizer = CharTokenizer.build(["a ab"])
    >>> lm = WordLookaheadLM({"a": 3.0, "ab": 1.0}, tokenizer)
    >>> sos = torch.tensor([tokenizer.sos_id])
    >>> log_probs, state = lm.step(sos, lm.initial_state(1, torch.device("cpu")))
    >>> log_probs, state = lm.step(torch.tensor(tokenizer.encode("a")), state)
    >>> [round(float(log_probs[0, i].exp()), 2) for i in (tokenizer.eos_id, *tokenizer.encode("b"))]
    [0.75, 0.25]
    """

    def __init__(
        self,
        weights: dict[str, float],
        tokenizer: "CharTokenizer | PhoneTokenizer",
        oov_log_prob: float | None = None,
        word_penalty: float = 0.0,
        ngram: "NGramScorer | None" = None,
    ):
        super().__init__()
        spellings = _spellings(weights, tokenizer)
        words = {w: float(weights[w]) for w in spellings}
        if not words:
            raise ValueError("the lexicon has no word that the model's units can spell")
        total = math.fsum(words.values())
        log_probs = {w: math.log(c / total) for w, c in words.items()}
        # Phones: a closed vocabulary, as in a classic recogniser (a phone sequence that is no word
        # cannot be written down); characters can spell any word, at the rarest word's price.
        self.owns_spelling = isinstance(tokenizer, PhoneTokenizer)
        if oov_log_prob is None:
            oov_log_prob = PHONE_OOV_LOG_PROB if self.owns_spelling else min(log_probs.values())
        if oov_log_prob > 0:
            raise ValueError(f"oov_log_prob must be a log-probability (<= 0), got {oov_log_prob}")
        self.config = WordLMConfig(tokenizer.vocab_size, len(words), oov_log_prob, word_penalty)
        self.eval()
        self.space_id = tokenizer.symbols.index(" ") if " " in tokenizer.symbols else None
        self.words, self.word_log_probs = list(log_probs), list(log_probs.values())
        entries = [(index, spelling) for index, word in enumerate(log_probs) for spelling in spellings[word]]
        tables = _tables(entries, self.word_log_probs, tokenizer, self.space_id, oov_log_prob, word_penalty)
        self.register_buffer("scores", tables.scores, persistent=False)  # (nodes + 1, V) float32
        self.register_buffer("transitions", tables.transitions, persistent=False)  # (nodes + 1, V) int32
        # (nodes + 1,): the most probable word ending at each node, or -1
        self.register_buffer("node_word", tables.node_word, persistent=False)
        self.node_words, self.node_log_probs = tables.node_words, tables.node_log_probs
        homophone = torch.zeros_like(tables.node_word, dtype=torch.bool)
        homophone[list(tables.node_words)] = True
        self.register_buffer("homophone", homophone, persistent=False)  # several words end there
        self.ngram = ngram
        boundary = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
        boundary[[i for i in (self.space_id, tokenizer.eos_id) if i is not None]] = True
        self.register_buffer("boundary", boundary, persistent=False)
        self._corrections = functools.lru_cache(maxsize=1 << 17)(self._word_end_corrections)

    @property
    def sos_eos_id(self) -> int:
        return self.config.vocab_size - 1

    def initial_state(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """(B, 3): every row's trie node (the root) and its last two words (sentence start)."""
        state = torch.full((batch_size, 3), SENTENCE_START, dtype=torch.long, device=device)
        state[:, 0] = 0
        return state

    def step(self, tokens: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Consume each row's previous token (sos at the start); log-scores (B, V) of the next one."""
        previous, last, before_last = state.unbind(1)
        node = self.transitions.view(-1)[previous * self.config.vocab_size + tokens].long()
        scores = self.scores.index_select(0, node)
        if self.ngram is not None:
            ended = self.boundary[tokens] & (previous != 0)  # a word ended: shift the history
            word = self.node_word[previous]
            homophones = (ended & self.homophone[previous]).nonzero().squeeze(1)
            if len(homophones):  # the one of the words sounding alike that the n-gram preferred
                keys = (x.index_select(0, homophones).tolist() for x in (previous, last, before_last))
                chosen = [self._corrections(*key)[2] for key in zip(*keys, strict=True)]
                word = word.index_copy(0, homophones, torch.tensor(chosen, device=word.device))
            word = torch.where(word >= 0, word, torch.full_like(word, UNKNOWN_WORD))
            before_last = torch.where(ended, last, before_last)
            last = torch.where(ended, word, last)
            self._apply_ngram(scores, node, last, before_last)
        return scores, torch.stack([node, last, before_last], dim=1)

    def select_state(self, state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return state.index_select(0, index)

    def _apply_ngram(self, scores, node, last, before_last) -> None:
        """At rows whose prefix is a lexicon word, the word end scores p_ngram(w | history) instead of
        the unigram p(w) (and eos adds p_ngram(</s> | w, history))."""
        rows = (self.node_word.index_select(0, node) >= 0).nonzero().squeeze(1)
        if not len(rows):
            return
        keys = zip(*(x.index_select(0, rows).tolist() for x in (node, last, before_last)), strict=True)
        fixes = torch.tensor(
            [self._corrections(*key)[:2] for key in keys], dtype=scores.dtype, device=scores.device
        )
        if self.space_id is not None:
            scores[rows, self.space_id] += fixes[:, 0]
        scores[rows, self.sos_eos_id] += fixes[:, 1]

    def _word_end_corrections(self, node: int, last: int, before_last: int) -> tuple[float, float, int]:
        """(space, eos) corrections at a word-ending node, and the word it ends: log p_ngram(w | h) -
        log p_lexicon(node), and + log p(</s> | w, h). Where words sound alike (phones), w is the one
        the n-gram prefers; a lexicon word the n-gram model does not know keeps its unigram."""
        words = self.node_words.get(node) or [int(self.node_word[node])]
        if self.ngram is None:
            return 0.0, 0.0, words[0]
        history = (self._name(last), self._name(before_last))
        best, chosen = NEG_INF, words[0]
        for word in words:
            log_prob = self.ngram.log_prob(self.words[word], history)
            if log_prob is None:
                log_prob = self.word_log_probs[word]
            if log_prob > best:
                best, chosen = log_prob, word
        fix = best - self.node_log_probs[node]
        end = self.ngram.log_prob("</s>", (self.words[chosen], history[0]))
        return fix, fix + (end if end is not None else 0.0), chosen

    def text_of(self, tokens: list[int]) -> str:
        """The words that a hypothesis's tokens (without sos and eos) spell through the lexicon, the
        n-gram's choice among words that sound alike included (phones: the tokens are no text)."""
        node, last, before_last, words = 0, SENTENCE_START, SENTENCE_START, []
        oov = len(self.transitions) - 1
        for token in [*tokens, self.sos_eos_id]:
            if self.boundary[token]:
                if node not in (0, oov) and self.node_word[node] >= 0:
                    word = self._corrections(node, last, before_last)[2]
                    words.append(self.words[word])
                    last, before_last = word, last
                elif node != 0:
                    last, before_last = UNKNOWN_WORD, last
                node = 0
            else:
                node = int(self.transitions[node, token])
        return " ".join(words)

    def _name(self, word: int) -> str:
        return "<s>" if word == SENTENCE_START else "<unk>" if word == UNKNOWN_WORD else self.words[word]


class NGramScorer:
    """Word n-gram log-probabilities from an ARPA or Sphinx binary model, through pocketsphinx's
    n-gram engine (backoff handled there). `en-us` names the US English trigram model (72,547
    words, 2.1 M bigrams, 1.7 M trigrams) that the pocketsphinx package ships."""

    BUNDLED = "en-us"
    # pocketsphinx returns log-probabilities in its log base 1.0001; a word it does not know gets
    # about -5.4e8
    LOG_BASE = math.log(1.0001)
    UNKNOWN_BELOW = -1.0e8

    def __init__(self, path: str | os.PathLike):
        try:
            import pocketsphinx
        except ImportError:
            raise ValueError("n-gram models need pocketsphinx: pip install pocketsphinx") from None
        if str(path) == self.BUNDLED:
            path = Path(pocketsphinx.get_model_path()) / "en-us" / "en-us.lm.bin"
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: n-gram model not found")
        try:
            self.model = pocketsphinx.NGramModel.readfile(str(path))
        except Exception as error:  # noqa: BLE001 -- pocketsphinx raises RuntimeError or ValueError
            raise ValueError(f"{path}: not an ARPA or Sphinx binary n-gram model: {error}") from None
        self.path, self.order = path, self.model.size()

    def log_prob(self, word: str, history: tuple[str, ...]) -> float | None:
        """ln p(word | history), history most recent first; None when the model lacks the word."""
        value = self.model.prob([word, *history[: self.order - 1]])
        return None if value < self.UNKNOWN_BELOW else value * self.LOG_BASE


def _spellings(weights: dict[str, float], tokenizer) -> dict[str, list[tuple[int, ...]]]:
    """word -> the token sequences that spell it: its characters, or its pronunciations (phones)."""
    spellings = {}
    if isinstance(tokenizer, PhoneTokenizer):
        for word, weight in weights.items():
            ids = [tuple(tokenizer.phone_ids(p)) for p in (tokenizer.pronunciations(word) if word else [])]
            if weight > 0 and ids:
                spellings[word] = ids
        return spellings
    if not isinstance(tokenizer, CharTokenizer):
        raise ValueError("a word lexicon LM needs a character tokenizer or phones, not word pieces")
    ids = {c: tokenizer.symbols.index(c) for c in tokenizer.characters if c != " "}
    for word, weight in weights.items():
        if word and weight > 0 and set(word) <= ids.keys():
            spellings[word] = [tuple(ids[c] for c in word)]
    return spellings


class _Tables(NamedTuple):
    scores: torch.Tensor  # (nodes + 1, V) float32
    transitions: torch.Tensor  # (nodes + 1, V) int32
    node_word: torch.Tensor  # (nodes + 1,) the most probable word ending at each node, or -1
    node_words: dict[int, list[int]]  # nodes where several words end (homophones), most probable first
    node_log_probs: list[float]  # log p of the words ending at each node, as the tables score them


def _tables(entries, word_log_probs, tokenizer, space, oov_log_prob: float, word_penalty: float) -> _Tables:
    """Score and transition tables of the prefix tree of `entries` (word index, token ids), most
    probable word first; row `nodes` is the out-of-lexicon state."""
    children: list[dict[int, int]] = [{}]
    end = [0.0]  # probability of the words ending at each node (0: none)
    ending: dict[int, list[int]] = {}  # node -> indices of the words that end there
    for index, spelling in entries:
        node = 0
        for token in spelling:
            child = children[node].get(token)
            if child is None:
                child = len(children)
                children[node][token] = child
                children.append({})
                end.append(0.0)
            node = child
        if index not in ending.setdefault(node, []):
            end[node] += math.exp(word_log_probs[index])
            ending[node].append(index)
    nodes = len(children)
    below = list(end)  # probability mass of the words below each node; children come after parents
    for node in range(nodes - 1, 0, -1):
        for child in children[node].values():
            below[node] += below[child]
    below[0] = math.fsum(below[child] for child in children[0].values())
    below_log = torch.tensor(below, dtype=torch.float64).log()
    end_log = torch.tensor(end, dtype=torch.float64).log()  # -inf where no word ends

    vocab, oov, eos = tokenizer.vocab_size, nodes, tokenizer.eos_id
    scores = torch.empty(nodes + 1, vocab, dtype=torch.float64)
    transitions = torch.full((nodes + 1, vocab), oov, dtype=torch.int32)
    scores[:nodes] = (oov_log_prob - below_log)[:, None]  # every unit leaves the lexicon ...
    parents, units, targets = [], [], []
    for node, edges in enumerate(children):
        for token, child in edges.items():
            parents.append(node)
            units.append(token)
            targets.append(child)
    parents, units, targets = (torch.tensor(x, dtype=torch.long) for x in (parents, units, targets))
    scores[parents, units] = below_log[targets] - below_log[parents]  # ... unless it has the child
    transitions[parents, units] = targets.int()
    scores[oov] = 0.0  # the out-of-lexicon word was paid for when it left the lexicon
    known = torch.isfinite(end_log)
    word_end = torch.where(known, end_log, torch.full_like(end_log, oov_log_prob)) - below_log - word_penalty
    for boundary in (space, eos):
        if boundary is None:
            continue
        scores[:nodes, boundary] = word_end
        scores[oov, boundary] = -word_penalty
        transitions[:, boundary] = 0  # back to the root
    scores[0, eos] = 0.0  # the empty hypothesis, or eos right after a space
    if space is not None:
        scores[0, space] = NEG_INF
    scores[:, tokenizer.blank_id] = NEG_INF  # never a text token
    transitions[:, tokenizer.blank_id] = 0
    node_word = torch.full((nodes + 1,), -1, dtype=torch.long)
    for node, words in ending.items():
        words.sort(key=lambda index: -word_log_probs[index])
        node_word[node] = words[0]
    # the unigram log p the tables give a word end: relative to the whole tree's mass (for phones,
    # a word with two pronunciations is two entries)
    node_log_probs = (end_log - below_log[0]).tolist()
    homophones = {node: words for node, words in ending.items() if len(words) > 1}
    return _Tables(scores.float(), transitions, node_word, homophones, node_log_probs)


def read_lexicon(path: str | os.PathLike) -> dict[str, float]:
    """word -> weight from a lexicon file (`write_lexicon`; gzip when the name ends in .gz).

    Raises ValueError naming the file and line for anything that is not "word<TAB>weight".
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    weights: dict[str, float] = {}
    try:
        with opener(path, "rt", encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                line = line.rstrip("\n")
                if not line or line.startswith("#"):
                    continue
                fields = line.split("\t")
                try:
                    weight = float(fields[1]) if len(fields) == 2 else math.nan
                except ValueError:
                    weight = math.nan
                word = fields[0]
                if not (weight > 0 and math.isfinite(weight)) or " " in word or normalize_text(word) != word:
                    raise ValueError(
                        f"{path}:{number}: expected 'word<TAB>positive weight' with one normalised word, "
                        f"got {line[:80]!r}"
                    )
                weights[word] = weights.get(word, 0.0) + weight
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text: {error}") from None
    except (OSError, EOFError) as error:  # gzip raises EOFError on a truncated file
        raise ValueError(f"{path}: cannot read lexicon: {error}") from None
    if not weights:
        raise ValueError(f"{path}: the lexicon has no words")
    return weights


def write_lexicon(weights: dict[str, float], path: str | os.PathLike) -> None:
    """Most frequent first, gzip when the name ends in .gz; whole or not at all (`atomic_write`)."""
    path = Path(path)
    lines = [LEXICON_HEADER + "\n"]
    lines += [
        f"{word}\t{weight:.6g}\n"
        for word, weight in sorted(weights.items(), key=lambda item: (-item[1], item[0]))
    ]
    data = "".join(lines).encode("utf-8")
    with atomic_write(path, binary=True) as file:
        file.write(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def is_lexicon_file(path: str | os.PathLike) -> bool:
    """True when `path` starts like a lexicon: our header, or a first line "word<TAB>number" (a
    word-count file from elsewhere). A torch checkpoint (a zip archive) never does."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            first = file.readline(1000).decode("utf-8").rstrip("\n")
    except (OSError, EOFError, UnicodeDecodeError):
        return False
    if first == LEXICON_HEADER:
        return True
    fields = first.split("\t")
    return len(fields) == 2 and bool(fields[0]) and _is_number(fields[1])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
