"""`asr-wer`: score a hypothesis transcript file against a reference file.

Prints Kaldi's three summary lines (%WER, %CER, %SER), computed on normalised text
(`asr.text.normalize_text`), and optionally writes per-utterance alignments worst first.
"""

import argparse
import sys
from collections.abc import Sequence

from asr.files import atomic_write, write_stdout
from asr.metrics import (
    ErrorCounts,
    char_errors,
    kaldi_sentence_summary,
    kaldi_summary,
    read_transcripts,
    utterance_alignment,
    utterance_word_errors,
)

# Ids listed in an error message before it says "and N more".
_MAX_IDS_SHOWN = 10


class _UsageError(Exception):
    """A problem with the inputs, reported as one line and exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr-wer",
        description=(
            "Score hypotheses against references. Both files hold one utterance a line, "
            "'utt_id<TAB>text' or 'utt_id text'; text is normalised before scoring."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--ref", required=True, metavar="FILE", help="reference transcript file")
    parser.add_argument("--hyp", required=True, metavar="FILE", help="hypothesis transcript file")
    parser.add_argument(
        "--details",
        default=None,
        metavar="FILE",
        help="write per-utterance alignments here, most errors first",
    )
    parser.add_argument(
        "--missing-as-deletions",
        action="store_true",
        help="score a reference id missing from --hyp as an empty hypothesis instead of failing",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `asr-wer`; returns the exit code (0 on success, 2 on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        references = _read(args.ref)
        hypotheses = _read(args.hyp)
        utterance_ids = _paired_ids(references, hypotheses, args)
    except _UsageError as error:
        print(f"asr-wer: error: {error}", file=sys.stderr)
        return 2

    reference_texts = [references[utterance_id] for utterance_id in utterance_ids]
    hypothesis_texts = [hypotheses.get(utterance_id, "") for utterance_id in utterance_ids]
    per_utterance = utterance_word_errors(reference_texts, hypothesis_texts)
    word_counts = sum(per_utterance, ErrorCounts())
    if word_counts.num_reference == 0:
        # a WER over no words is undefined; the usual cause is a file of plain lines without ids
        print(
            f"asr-wer: error: {args.ref}: the transcripts of its {len(utterance_ids)} utterances hold no "
            "words (a line is 'utt_id<TAB>text': its first word is the id), so there is no WER",
            file=sys.stderr,
        )
        return 2
    summary = [
        kaldi_summary(word_counts, "WER"),
        kaldi_summary(char_errors(reference_texts, hypothesis_texts), "CER"),
        kaldi_sentence_summary(word_counts),
    ]
    if not write_stdout([f"{line}\n" for line in summary], "asr-wer"):
        return 1

    if args.details is not None:
        try:
            _write_details(args.details, utterance_ids, reference_texts, hypothesis_texts, per_utterance)
        except OSError as error:
            print(f"asr-wer: error: {args.details}: {error.strerror}", file=sys.stderr)
            return 2
    return 0


def _read(path: str) -> dict[str, str]:
    try:
        transcripts = read_transcripts(path)
    except OSError as error:
        raise _UsageError(f"{path}: {error.strerror}") from None
    except ValueError as error:
        raise _UsageError(str(error)) from None
    return transcripts


def _paired_ids(
    references: dict[str, str], hypotheses: dict[str, str], args: argparse.Namespace
) -> list[str]:
    """Reference ids in reference order, after checking both files cover the same utterances."""
    if not references:
        raise _UsageError(f"{args.ref}: no utterances")
    only_in_hypotheses = [utterance_id for utterance_id in hypotheses if utterance_id not in references]
    if only_in_hypotheses:
        raise _UsageError(f"{_list_ids(only_in_hypotheses)} in {args.hyp} missing from --ref {args.ref}")
    missing_hypotheses = [utterance_id for utterance_id in references if utterance_id not in hypotheses]
    if missing_hypotheses and not args.missing_as_deletions:
        raise _UsageError(
            f"{_list_ids(missing_hypotheses)} in {args.ref} missing from --hyp {args.hyp} "
            "(--missing-as-deletions scores them as empty hypotheses)"
        )
    return list(references)


def _list_ids(utterance_ids: list[str]) -> str:
    shown = ", ".join(utterance_ids[:_MAX_IDS_SHOWN])
    more = len(utterance_ids) - _MAX_IDS_SHOWN
    noun = "id" if len(utterance_ids) == 1 else "ids"
    return f"{len(utterance_ids)} {noun} ({shown}{f', and {more} more' if more > 0 else ''})"


def _write_details(
    path: str,
    utterance_ids: list[str],
    reference_texts: list[str],
    hypothesis_texts: list[str],
    per_utterance: list[ErrorCounts],
) -> None:
    # Most errors first; `sorted` is stable, so ties keep reference-file order.
    order = sorted(range(len(utterance_ids)), key=lambda index: -per_utterance[index].num_errors)
    with atomic_write(path) as file:
        for index in order:
            counts = per_utterance[index]
            file.write(
                f"{utterance_ids[index]} errors={counts.num_errors} words={counts.num_reference} "
                f"sub={counts.substitutions} del={counts.deletions} ins={counts.insertions}\n"
            )
            file.write(utterance_alignment(reference_texts[index], hypothesis_texts[index]) + "\n\n")


if __name__ == "__main__":
    sys.exit(main())
