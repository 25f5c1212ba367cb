"""`asr-lexicon`: build a word lexicon with unigram weights, for look-ahead word-LM fusion.

    asr-lexicon --wordfreq 100000 --out exp/kathleen/lexicon.tsv
    asr-lexicon --wordfreq 100000 --text exp/kathleen/lm_train.txt --text-weight 0.3 --out lexicon.tsv
    asr-lexicon --text my_corpus.txt --out lexicon.tsv.gz

Sources: the N most frequent English words with their frequencies from wordfreq (Speer 2022:
Wikipedia, subtitles, news, books, web text; CC BY-SA 4.0 data), and/or word counts of text files
(one sentence per line, normalised like the training transcripts). With both, the word
probabilities are mixed: p(w) = (1 - text_weight) p_wordfreq(w) + text_weight p_text(w).

The lexicon is then passed as `--lm lexicon.tsv` to asr-transcribe or asr-evaluate with a character
model (`asr/word_lm.py`). Exit status: 0 when written; 2 with a message naming the file otherwise.
"""

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from asr.text import normalize_text
from asr.word_lm import write_lexicon

PROGRAM = "asr-lexicon"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="lexicon to write (.tsv or .tsv.gz)")
    parser.add_argument(
        "--wordfreq", type=int, default=0, metavar="N", help="the N most frequent English words (wordfreq)"
    )
    parser.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="FILE",
        help="count the words of a text file (repeatable)",
    )
    parser.add_argument(
        "--text-weight",
        type=float,
        default=0.3,
        metavar="W",
        help="share of the --text counts when mixed with --wordfreq (default: 0.3)",
    )
    return parser


def wordfreq_words(count: int, language: str = "en") -> dict[str, float]:
    """The `count` most frequent words of `language` with their frequencies, normalised like our text."""
    import wordfreq  # a dependency; imported here to keep the other commands' start-up fast

    weights: dict[str, float] = {}
    for word in wordfreq.top_n_list(language, count):
        normalised = normalize_text(word)
        if normalised and " " not in normalised:
            weights[normalised] = weights.get(normalised, 0.0) + wordfreq.word_frequency(word, language)
    return weights


def text_words(paths: Sequence[str]) -> dict[str, float]:
    """Word counts of text files, one sentence per line."""
    counts: Counter[str] = Counter()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as file:
                for line in file:
                    counts.update(normalize_text(line).split())
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text: {error}") from None
        except OSError as error:
            raise ValueError(f"{path}: cannot read: {error.strerror}") from None
    return {word: float(count) for word, count in counts.items()}


def mix(parts: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """sum_k share_k * weights_k(w) / sum(weights_k): probabilities when the shares sum to 1."""
    mixed: dict[str, float] = {}
    for weights, share in parts:
        total = sum(weights.values())
        for word, weight in weights.items():
            mixed[word] = mixed.get(word, 0.0) + share * weight / total
    return mixed


def main(argv: Sequence[str] | None = None) -> int:
    """Run `asr-lexicon`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.wordfreq < 0:
        parser.error(f"--wordfreq must not be negative, got {args.wordfreq}")
    if not args.wordfreq and not args.text:
        parser.error("give --wordfreq N, --text FILE, or both")
    if not 0.0 <= args.text_weight <= 1.0:
        parser.error(f"--text-weight must be in [0, 1], got {args.text_weight}")
    try:
        parts = []
        if args.text:
            texts = text_words(args.text)
            if not texts:
                raise ValueError(f"{', '.join(args.text)}: no words")
            parts.append((texts, args.text_weight if args.wordfreq else 1.0))
        if args.wordfreq:
            parts.append((wordfreq_words(args.wordfreq), 1.0 - args.text_weight if args.text else 1.0))
        weights = mix([part for part in parts if part[1] > 0])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_lexicon(weights, args.out)
    except (ValueError, OSError) as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    print(f"{PROGRAM}: {len(weights):,} words written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
