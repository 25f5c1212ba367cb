"""Word and character error rates, counted by jiwer and reported the way Kaldi reports them.

Both sides of every comparison go through `asr.text.normalize_text` first, so a score never
depends on case or punctuation the model was not trained to produce. Rates are corpus-level:
errors summed over utterances divided by reference words summed over utterances (Kaldi's
`compute-wer`), not a mean of per-utterance rates, which would over-weight short utterances.
"""

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jiwer

from asr.files import atomic_write
from asr.text import normalize_text


@dataclass(frozen=True)
class ErrorCounts:
    """Alignment counts of hypotheses against references, summable with `+`."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0
    num_reference: int = 0  # reference words (characters for `char_errors`): hits + subs + dels
    num_utterances: int = 0
    num_utterance_errors: int = 0  # utterances with at least one error, for the sentence error rate

    @property
    def num_errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def error_rate(self) -> float:
        """(S + D + I) / N as a fraction; N = 0 counts as 1 so insertions still show."""
        return self.num_errors / max(self.num_reference, 1)

    @property
    def sentence_error_rate(self) -> float:
        """Fraction of utterances with at least one error."""
        return self.num_utterance_errors / max(self.num_utterances, 1)

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(
            substitutions=self.substitutions + other.substitutions,
            deletions=self.deletions + other.deletions,
            insertions=self.insertions + other.insertions,
            hits=self.hits + other.hits,
            num_reference=self.num_reference + other.num_reference,
            num_utterances=self.num_utterances + other.num_utterances,
            num_utterance_errors=self.num_utterance_errors + other.num_utterance_errors,
        )


def word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    """Word error counts summed over utterances.

    Parameters
    ----------
    references, hypotheses : sequence of str, length = num_utterances
        Raw transcripts, paired by position; both are normalised here.

    Returns
    -------
    ErrorCounts
        `error_rate` is the corpus word error rate.
    """
    return sum(utterance_word_errors(references, hypotheses), ErrorCounts())


def char_errors(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    """Character error counts summed over utterances.

    Characters are those of the normalised text, the single spaces between words included,
    so a wrongly split or joined word costs one error.

    Parameters
    ----------
    references, hypotheses : sequence of str, length = num_utterances

    Returns
    -------
    ErrorCounts
        `num_reference` counts characters; `error_rate` is the corpus character error rate.
    """
    normalized = _normalize_pairs(references, hypotheses)
    counts = _count_utterances(normalized, jiwer.process_characters, _characters)
    return sum(counts, ErrorCounts())


def utterance_word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> list[ErrorCounts]:
    """Word error counts of each utterance (`num_utterances` = 1 in each).

    Parameters
    ----------
    references, hypotheses : sequence of str, length = num_utterances

    Returns
    -------
    list of ErrorCounts, length = num_utterances
    """
    return _count_utterances(_normalize_pairs(references, hypotheses), jiwer.process_words, str.split)


def kaldi_summary(counts: ErrorCounts, name: str = "WER") -> str:
    """Format counts like Kaldi's `compute-wer`.

    >>> kaldi_summary(ErrorCounts(substitutions=5, deletions=4, insertions=3, hits=966, num_reference=975))
    '%WER 1.23 [ 12 / 975, 3 ins, 4 del, 5 sub ]'
    """
    return (
        f"%{name} {100 * counts.error_rate:.2f} [ {counts.num_errors} / {counts.num_reference}, "
        f"{counts.insertions} ins, {counts.deletions} del, {counts.substitutions} sub ]"
    )


def kaldi_sentence_summary(counts: ErrorCounts) -> str:
    """Format the sentence error rate like Kaldi's `compute-wer`.

    >>> kaldi_sentence_summary(ErrorCounts(num_utterances=30, num_utterance_errors=3))
    '%SER 10.00 [ 3 / 30 ]'
    """
    return (
        f"%SER {100 * counts.sentence_error_rate:.2f} "
        f"[ {counts.num_utterance_errors} / {counts.num_utterances} ]"
    )


def utterance_alignment(reference: str, hypothesis: str) -> str:
    """Word alignment of one utterance as REF/HYP/EVAL lines with aligned columns.

    Deleted and inserted words are shown as "***" on the side that lacks them; EVAL marks
    substitutions S, deletions D and insertions I.

    >>> print(utterance_alignment("the cat sat down", "the bat sat on down"))
    REF:  the cat sat *** down
    HYP:  the bat sat on  down
    EVAL:     S       I
    """
    reference_words = normalize_text(reference).split()
    hypothesis_words = normalize_text(hypothesis).split()
    if reference_words:
        chunks = jiwer.process_words(" ".join(reference_words), " ".join(hypothesis_words)).alignments[0]
    else:
        chunks = [_insertion_chunk(len(hypothesis_words))] if hypothesis_words else []

    rows: dict[str, list[str]] = {"REF:": [], "HYP:": [], "EVAL:": []}
    for chunk in chunks:
        reference_span = reference_words[chunk.ref_start_idx : chunk.ref_end_idx]
        hypothesis_span = hypothesis_words[chunk.hyp_start_idx : chunk.hyp_end_idx]
        mark = _ALIGNMENT_MARKS[chunk.type]
        for position in range(max(len(reference_span), len(hypothesis_span))):
            reference_word = reference_span[position] if position < len(reference_span) else "***"
            hypothesis_word = hypothesis_span[position] if position < len(hypothesis_span) else "***"
            width = max(len(reference_word), len(hypothesis_word))
            rows["REF:"].append(reference_word.ljust(width))
            rows["HYP:"].append(hypothesis_word.ljust(width))
            rows["EVAL:"].append(mark.ljust(width))
    return "\n".join(f"{label:<5} {' '.join(cells)}".rstrip() for label, cells in rows.items())


def read_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """Read a transcript file: one utterance a line, "utt_id<TAB>text" or Kaldi's "utt_id text".

    A line without text is an empty transcript; blank lines are skipped. Text is returned
    as written (not normalised).

    Parameters
    ----------
    path : str or os.PathLike
        UTF-8 text file (a leading byte-order mark is ignored).

    Returns
    -------
    dict of str to str
        Utterance id to text, in file order.

    Raises
    ------
    ValueError
        On a duplicate id or a line that is not UTF-8, naming the file and line number.
    OSError
        When the file cannot be read.
    """
    transcripts: dict[str, str] = {}
    raw_lines = Path(path).read_bytes().split(b"\n")
    for line_number, raw_line in enumerate(raw_lines, start=1):
        try:
            # utf-8-sig on the first line drops a byte-order mark some editors write.
            line = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}:{line_number}: not valid UTF-8 ({error.reason})") from None
        line = line.strip()
        if not line:
            continue
        # Ids never hold whitespace, so the first whitespace run (tab or spaces) ends the id in both forms.
        utterance_id, *text = line.split(maxsplit=1)
        if utterance_id in transcripts:
            raise ValueError(f"{path}:{line_number}: duplicate utterance id {utterance_id!r}")
        transcripts[utterance_id] = text[0].strip() if text else ""
    return transcripts


def write_transcripts(path: str | os.PathLike, items: Iterable[tuple[str, str]]) -> None:
    """Write "utt_id<TAB>text" lines that `read_transcripts` reads back unchanged.

    Raises
    ------
    ValueError
        When an id is empty or holds whitespace, or a text holds a line break.
    """
    lines = []
    for utterance_id, text in items:
        if not utterance_id or utterance_id != "".join(utterance_id.split()):
            raise ValueError(f"utterance id {utterance_id!r} is empty or contains whitespace")
        if "\n" in text or "\r" in text:
            raise ValueError(f"transcript of {utterance_id!r} contains a line break")
        lines.append(f"{utterance_id}\t{text}\n")
    with atomic_write(path) as file:  # whole or not at all: a cut-short file would score as deletions
        file.writelines(lines)


_ALIGNMENT_MARKS = {"equal": "", "substitute": "S", "delete": "D", "insert": "I"}


def _insertion_chunk(num_words: int) -> jiwer.AlignmentChunk:
    return jiwer.AlignmentChunk(
        type="insert", ref_start_idx=0, ref_end_idx=0, hyp_start_idx=0, hyp_end_idx=num_words
    )


def _characters(text: str) -> list[str]:
    return list(text)


def _normalize_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> list[tuple[str, str]]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    return [
        (normalize_text(reference), normalize_text(hypothesis))
        for reference, hypothesis in zip(references, hypotheses, strict=True)
    ]


def _count_utterances(
    normalized: list[tuple[str, str]],
    process: Callable[[list[str], list[str]], jiwer.WordOutput | jiwer.CharacterOutput],
    tokenize: Callable[[str], list[str]],
) -> list[ErrorCounts]:
    """Per-utterance counts from one batched jiwer call over the non-empty references.

    jiwer (3.x) refuses an empty reference, and the answer there is known anyway: every
    hypothesis token is an insertion.
    """
    scored = [index for index, (reference, _) in enumerate(normalized) if reference]
    counts = [_utterance_counts(insertions=len(tokenize(hypothesis))) for _, hypothesis in normalized]
    if scored:
        output = process([normalized[i][0] for i in scored], [normalized[i][1] for i in scored])
        for index, chunks in zip(scored, output.alignments, strict=True):
            counts[index] = _counts_from_chunks(chunks)
    return counts


def _counts_from_chunks(chunks: list[jiwer.AlignmentChunk]) -> ErrorCounts:
    totals = {"equal": 0, "substitute": 0, "delete": 0, "insert": 0}
    for chunk in chunks:
        # Insertions occupy only hypothesis positions; every other chunk spans reference positions.
        if chunk.type == "insert":
            totals["insert"] += chunk.hyp_end_idx - chunk.hyp_start_idx
        else:
            totals[chunk.type] += chunk.ref_end_idx - chunk.ref_start_idx
    return _utterance_counts(
        substitutions=totals["substitute"],
        deletions=totals["delete"],
        insertions=totals["insert"],
        hits=totals["equal"],
    )


def _utterance_counts(
    substitutions: int = 0, deletions: int = 0, insertions: int = 0, hits: int = 0
) -> ErrorCounts:
    return ErrorCounts(
        substitutions=substitutions,
        deletions=deletions,
        insertions=insertions,
        hits=hits,
        num_reference=hits + substitutions + deletions,
        num_utterances=1,
        num_utterance_errors=int(substitutions + deletions + insertions > 0),
    )
