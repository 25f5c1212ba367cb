"""`asr-transcribe`: transcribe audio files, folders and lhotse manifests with a LAS checkpoint.

Writes "utt_id<TAB>text" lines in input order to --output or stdout; everything else (errors,
warnings, the progress bar and the closing summary with the real-time factor) goes to stderr.
Exit status: 0 when every recording was transcribed, 1 when some failed (each one is named on
stderr and the others are still written) or the output could not be written, 2 for a problem with
the arguments, the model or the language model, 130 when interrupted (Ctrl-C: the transcripts
finished so far go to OUTPUT.partial, or to stdout without --output). The checkpoint is all it
needs: no config files, from any folder.

--output, --segments and --scores files appear whole or not at all (`asr.files.atomic_write`): a full disk or
an interrupted run leaves an existing file as it was. When --output cannot be written, the
transcripts go to stdout instead, so that a long decoding is not lost.
"""

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from asr.alignment import supports_word_times
from asr.allocator import keep_freed_memory
from asr.checkpoint import CheckpointError, load_checkpoint, load_model
from asr.decoding import DecodingOptions
from asr.dehum import HumConfig
from asr.distributed import DeviceError, resolve_device
from asr.files import atomic_write, check_can_write, write_stdout
from asr.segmentation import SegmentationConfig
from asr.transcription import (
    DecodeFunction,
    Utterance,
    collect_utterances,
    model_decoder,
    transcribe,
    unique_ids,
)

PROGRAM = "asr-transcribe"
# Used when the checkpoint does not record its longest training utterance ("max_utterance_seconds").
DEFAULT_MAX_SEGMENT_SECONDS = 20.0
# Shallow-fusion weight when --lm comes without --lm-weight: DecodingOptions' own default (0) would
# silently switch the LM off. A common starting point; tune it on a development set.
DEFAULT_LM_WEIGHT = 0.3

_EPILOG = """\
inputs: audio files (wav, flac, ogg, mp3, ...; any sample rate; channels are averaged), folders
(searched recursively) and lhotse manifests (*.jsonl, *.jsonl.gz, *.json: a CutSet or a RecordingSet).
ids: the file name without its extension, or the cut id. When inputs share an id, each of them is
named by its path relative to the folder they share (without, then with, the extension; for cuts,
the manifest's path without suffix, "/", then the cut id), and an input given twice gets "#2", ...
Whitespace in ids becomes "_". Recordings longer than --max-segment-seconds are cut at pauses.
A recording without speech (no 10 ms frame above -80 dBFS, or shorter than 50 ms; for a long one,
no segment the pause detector finds) gets an empty text, with a note on stderr, and is not decoded.
A steady mains hum (50 or 60 Hz and its harmonics, louder than 40 dB below the recording) is
subtracted before decoding, with a note on stderr; --keep-hum decodes the audio as it is."""


class _UsageError(Exception):
    """A problem with the arguments, the model or the language model: one line, exit status 2."""


@dataclass(frozen=True)
class _Setup:
    """Everything `main` needs once the arguments have been checked."""

    decode_texts: DecodeFunction
    sample_rate: int
    segmentation: SegmentationConfig
    output: str | None  # None: stdout
    segments: str | None
    scores: str | None
    words: str | None


def build_parser() -> argparse.ArgumentParser:
    defaults = DecodingOptions()
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Transcribe speech with a Listen-Attend-Spell checkpoint.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders or lhotse manifests")
    parser.add_argument("--model", required=True, metavar="CKPT", help="model checkpoint (required)")
    parser.add_argument(
        "--beam-size",
        type=int,
        default=defaults.beam_size,
        metavar="N",
        help="beam width; 1 is greedy search (default: %(default)s)",
    )
    parser.add_argument(
        "--ctc-weight",
        type=float,
        default=defaults.ctc_weight,
        metavar="W",
        help="weight of CTC prefix scores in the search, 0 to 1 (default: %(default)s)",
    )
    parser.add_argument(
        "--length-bonus",
        type=float,
        default=defaults.length_bonus,
        metavar="B",
        help="added per output token, against too short outputs (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="recordings or segments decoded together (default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch-seconds",
        type=float,
        default=400.0,
        metavar="S",
        help="cap on a batch's padded audio: size x longest (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        metavar="D",
        help="auto (cuda when available), cpu, cuda or cuda:N (default: %(default)s)",
    )
    parser.add_argument(
        "--output", default=None, metavar="FILE", help="write 'utt_id<TAB>text' lines here (default: stdout)"
    )
    parser.add_argument(
        "--segments",
        default=None,
        metavar="FILE",
        help="also write 'utt_id<TAB>start<TAB>end<TAB>text' per decoded segment, in seconds (default: none)",
    )
    parser.add_argument(
        "--scores",
        default=None,
        metavar="FILE",
        help="also write 'utt_id<TAB>avg_logprob' per recording: the acoustic model's log-probability "
        "per output token ((1 - w) attention + w CTC, eos counted; no LM), empty without speech; the "
        "lowest are the likeliest to hold errors (default: none)",
    )
    parser.add_argument(
        "--words",
        default=None,
        metavar="FILE",
        help="also write 'utt_id<TAB>start<TAB>end<TAB>word' per word, in seconds: the words "
        "force-aligned to the CTC head's frames (40 ms for the recipes' models; character and "
        "sentencepiece models) (default: none)",
    )
    parser.add_argument(
        "--min-avg-logprob",
        type=float,
        default=None,
        metavar="X",
        help="leave a recording's (or segment's) text empty, with a note, when its avg_logprob (see "
        "--scores) is below X: drops what the model makes of noise or a tone, and some real speech "
        "with it; choose X from --scores on your own recordings (default: keep every text)",
    )
    parser.add_argument(
        "--keep-hum",
        action="store_true",
        help="decode the audio as it is; by default a steady 50 or 60 Hz mains hum and its harmonics "
        "are found and subtracted first, with a note on stderr",
    )
    parser.add_argument(
        "--max-segment-seconds",
        type=float,
        default=None,
        metavar="S",
        help="longer recordings are cut at pauses into segments no longer than this "
        "(default: the checkpoint's max_utterance_seconds, else "
        f"{DEFAULT_MAX_SEGMENT_SECONDS:g})",
    )
    parser.add_argument(
        "--lm",
        default=None,
        metavar="FILE",
        help="shallow fusion with an LM checkpoint (asr-train-lm) or a word lexicon (asr-lexicon; "
        "character models) (default: none)",
    )
    parser.add_argument(
        "--lm-weight",
        type=float,
        default=None,
        metavar="W",
        help=f"shallow-fusion weight of the --lm scores (default: {DEFAULT_LM_WEIGHT} with --lm)",
    )
    parser.add_argument(
        "--word-penalty",
        type=float,
        default=0.0,
        metavar="P",
        help="with a word lexicon as --lm: subtracted from its score at every word end, against "
        "splitting words into short common ones (default: 0)",
    )
    parser.add_argument(
        "--ngram",
        default=None,
        metavar="FILE",
        help="with a word lexicon as --lm: a word n-gram model (ARPA or Sphinx binary, read by "
        "pocketsphinx; 'en-us' for the one pocketsphinx ships) scores each word given the two before it",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `asr-transcribe`; returns the exit status (0 all transcribed, 1 some failed, 2 bad usage,
    130 interrupted)."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # batches reuse their memory instead of faulting it in again (asr/allocator.py)
    utterances: list[Utterance] = []  # filled in place, so that Ctrl-C can keep the finished ones
    setup = None
    try:
        setup = _set_up(args)
        return _transcribe_all(args, setup, utterances)
    except _UsageError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(utterances, setup)


def _transcribe_all(args: argparse.Namespace, setup: _Setup, utterances: list[Utterance]) -> int:
    """Find, decode and write every recording; `utterances` receives them as they are found."""
    failures: list[str] = []

    def report_error(message: str) -> None:
        failures.append(message)
        tqdm.write(f"{PROGRAM}: error: {message}", file=sys.stderr)  # keeps a progress bar intact

    utterances.extend(collect_utterances(args.inputs, report_error))
    if not utterances and not failures:
        raise _UsageError(f"no audio files found in {' '.join(args.inputs)}")
    _rename_duplicates(utterances)
    report = transcribe(
        utterances,
        setup.decode_texts,
        setup.sample_rate,
        segmentation=setup.segmentation,
        batch_size=args.batch_size,
        max_batch_seconds=args.max_batch_seconds,
        on_error=report_error,
        hum=None if args.keep_hum else HumConfig(),
    )
    if args.min_avg_logprob is not None:
        _empty_unsure_texts(utterances, args.min_avg_logprob)
    for utterance in utterances:
        if utterance.hum is not None:  # the audio decoded is not the file's: say so
            tqdm.write(f"{PROGRAM}: note: {utterance.id}: {utterance.hum.describe()}", file=sys.stderr)
    for utterance in utterances:
        if args.words and any(words is None for words in utterance.words):
            tqdm.write(
                f"{PROGRAM}: note: {utterance.id}: words without times (could not be aligned)",
                file=sys.stderr,
            )
    for utterance in utterances:  # said, not silently left empty
        if utterance.error is None and not utterance.segments:
            # a short recording without a frame above silence_db (or shorter than
            # min_speech_seconds), or a long one without speech
            tqdm.write(f"{PROGRAM}: note: {utterance.id}: no speech found; empty text", file=sys.stderr)
    written = _write_results(utterances, setup)
    # Inputs that never became utterances (a missing path, a bad manifest) count as failed too.
    report = dataclasses.replace(report, num_failed=len(failures))
    print(f"{PROGRAM}: {report.summary()}", file=sys.stderr)
    return 1 if failures or not written else 0


def _set_up(args: argparse.Namespace) -> _Setup:
    """Check the arguments, load the model (and LM), open the outputs; raises _UsageError."""
    options = decoding_options(args)
    device = _resolve_device(args.device)
    try:
        # The raw dict is read for the training metadata that load_model does not return.
        max_utterance_seconds = load_checkpoint(args.model).get("max_utterance_seconds")
        model, tokenizer = load_model(args.model, device)
    except CheckpointError as error:
        raise _UsageError(str(error)) from None
    language_model = _load_language_model(args, model, tokenizer, device)
    if args.words and not supports_word_times(tokenizer):
        raise _UsageError(
            "--words needs a character or sentencepiece model; this one spells words from phones"
        )
    decode_texts = model_decoder(model, tokenizer, options, language_model, device, bool(args.words))
    max_segment_seconds = args.max_segment_seconds
    if max_segment_seconds is None:
        valid = isinstance(max_utterance_seconds, (int, float)) and max_utterance_seconds > 0
        max_segment_seconds = float(max_utterance_seconds) if valid else DEFAULT_MAX_SEGMENT_SECONDS
    # Checked now, so that an unwritable path fails before the decoding, not after it.
    for path in (args.output, args.segments, args.scores, args.words):
        if path:
            _check_can_write(path)
    return _Setup(
        decode_texts=decode_texts,
        sample_rate=model.config.features.sample_rate,
        segmentation=SegmentationConfig(max_segment_seconds=max_segment_seconds),
        output=args.output,
        segments=args.segments,
        scores=args.scores,
        words=args.words,
    )


def decoding_options(args: argparse.Namespace) -> DecodingOptions:
    """The search options from the arguments asr-transcribe and asr-evaluate share, after checking
    them and the batching arguments; raises _UsageError."""
    if args.beam_size < 1:
        raise _UsageError(f"--beam-size must be at least 1, got {args.beam_size}")
    if args.batch_size < 1:
        raise _UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_batch_seconds <= 0:
        raise _UsageError(f"--max-batch-seconds must be positive, got {args.max_batch_seconds}")
    if not 0 <= args.ctc_weight <= 1:
        raise _UsageError(f"--ctc-weight must be between 0 and 1, got {args.ctc_weight}")
    # 0.04 s is four 10 ms energy frames: the least the segmenter can cut at a pause.
    if args.max_segment_seconds is not None and args.max_segment_seconds < 0.04:
        raise _UsageError(f"--max-segment-seconds must be at least 0.04, got {args.max_segment_seconds}")
    if args.lm_weight is not None and args.lm is None:
        raise _UsageError("--lm-weight needs --lm")
    if (args.word_penalty or args.ngram) and args.lm is None:
        raise _UsageError("--word-penalty and --ngram need --lm (a word lexicon)")
    lm_weight = 0.0 if args.lm is None else DEFAULT_LM_WEIGHT if args.lm_weight is None else args.lm_weight
    try:
        return DecodingOptions(
            beam_size=args.beam_size,
            ctc_weight=args.ctc_weight,
            lm_weight=lm_weight,
            length_bonus=args.length_bonus,
        )
    except ValueError as error:  # DecodingOptions checks its own ranges
        raise _UsageError(str(error)) from None


def _resolve_device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except DeviceError as error:
        raise _UsageError(f"--device {error}") from None


def _load_language_model(args: argparse.Namespace, model, tokenizer, device: torch.device):
    """The LM for shallow fusion, or None without --lm; raises _UsageError when it cannot be used."""
    if args.lm is None:
        return None
    from asr.lm import load_language_model
    from asr.word_lm import NGramScorer, WordLookaheadLM, is_lexicon_file, read_lexicon

    if is_lexicon_file(args.lm):  # a word lexicon from asr-lexicon: look-ahead word LM over characters
        try:
            lexicon = read_lexicon(args.lm)
            ngram = NGramScorer(args.ngram) if args.ngram else None
            return WordLookaheadLM(lexicon, tokenizer, word_penalty=args.word_penalty, ngram=ngram).to(device)
        except ValueError as error:
            raise _UsageError(f"{args.lm}: cannot use word lexicon: {error}") from None
    if args.ngram:
        raise _UsageError("--ngram needs a word lexicon as --lm (asr-lexicon), not an LM checkpoint")
    try:
        language_model, lm_tokenizer = load_language_model(args.lm, device)
    except (CheckpointError, OSError, ValueError, KeyError, RuntimeError) as error:
        raise _UsageError(f"{args.lm}: cannot load language model: {error}") from None
    # same size is not enough: two character sets of one size would fuse silently wrong
    if lm_tokenizer.to_dict() != tokenizer.to_dict():
        raise _UsageError(
            f"{args.lm}: the language model's tokenizer differs from the acoustic model's; train it with "
            "asr-train-lm tokenizer_from=<this model's checkpoint>"
        )
    return language_model.to(device).eval()


def _empty_unsure_texts(utterances: list[Utterance], threshold: float) -> None:
    """Empty every segment's text whose avg_logprob is below `threshold`, with a note per recording."""
    for utterance in utterances:
        unsure = [
            index
            for index, (score, steps) in enumerate(utterance.scores)
            if steps and score / steps < threshold and utterance.texts[index]
        ]
        for index in unsure:
            utterance.texts[index] = ""
        if not unsure:
            continue
        lowest = min(utterance.scores[index][0] / utterance.scores[index][1] for index in unsure)
        if len(utterance.texts) > 1:
            what = f"{len(unsure)} of its {len(utterance.texts)} segments scored below"
            outcome = f"(lowest {lowest:.3f}); their text left out"
        else:
            what, outcome = f"avg_logprob {lowest:.3f} below", "(empty text)"
        tqdm.write(
            f"{PROGRAM}: note: {utterance.id}: {what} --min-avg-logprob {threshold:g} {outcome}",
            file=sys.stderr,
        )


def _check_can_write(path: str) -> None:
    try:
        check_can_write(path)
    except OSError as error:
        raise _UsageError(f"{path}: cannot write ({error.strerror})") from None


def _rename_duplicates(utterances: list[Utterance]) -> None:
    for utterance, new_id in zip(utterances, unique_ids(utterances), strict=True):
        if new_id != utterance.id:
            print(
                f"{PROGRAM}: warning: {utterance.audio.name} is written as {new_id!r} "
                f"(its id {utterance.id!r} is shared or holds whitespace)",
                file=sys.stderr,
            )
            utterance.id = new_id


def _write_results(utterances: list[Utterance], setup: _Setup) -> bool:
    """Transcripts in input order, failed recordings left out; segment lines in time order.

    Returns False, after saying why on stderr, when an output could not be written (a full disk):
    the file is then left as it was, and the transcripts go to stdout instead of a failed --output.
    """
    done = [utterance for utterance in utterances if utterance.error is None]
    lines = _transcript_lines(done)
    written = True
    if setup.segments is not None:
        segment_lines = [
            f"{utterance.id}\t{segment.start:.2f}\t{segment.end:.2f}\t{text}\n"
            for utterance in done
            for segment, text in zip(utterance.segments, utterance.texts, strict=True)
        ]
        written = _write_file(setup.segments, segment_lines, "segment times")
    if setup.words is not None:
        word_lines = [
            f"{utterance.id}\t{word.start:.2f}\t{word.end:.2f}\t{word.word}\n"
            for utterance in done
            for index, words in enumerate(utterance.words)
            if utterance.texts[index]  # not a text --min-avg-logprob emptied
            for word in words or []
        ]
        written = _write_file(setup.words, word_lines, "word times") and written
    if setup.scores is not None:
        score_lines = [f"{utterance.id}\t{_format_score(utterance.avg_logprob)}\n" for utterance in done]
        written = _write_file(setup.scores, score_lines, "scores") and written
    if setup.output is not None:
        if _write_file(setup.output, lines, "transcripts", "on stdout"):
            return written
        written = False
    return write_stdout(lines, PROGRAM) and written


def _format_score(avg_logprob: float | None) -> str:
    return "" if avg_logprob is None else f"{avg_logprob:.4f}"


def _interrupted(utterances: list[Utterance], setup: _Setup | None) -> int:
    """Ctrl-C while decoding: keep what is finished, where it cannot pass for a complete run.

    The transcripts of the recordings finished so far (duration-sorted batches: not a prefix of the
    inputs) go to OUTPUT.partial, or to stdout without --output; --output itself is left as it was.
    Exit status 130, as for any program stopped by SIGINT.
    """
    done = [utterance for utterance in utterances if utterance.finished and utterance.error is None]
    if setup is None or not done:
        print(
            f"{PROGRAM}: interrupted before any recording was transcribed; nothing written", file=sys.stderr
        )
        return 130
    lines = _transcript_lines(done)
    count = f"the {len(done)} of {len(utterances)} recordings transcribed so far"
    if setup.output is None:
        if write_stdout(lines, PROGRAM):
            print(f"{PROGRAM}: interrupted; {count} are written above", file=sys.stderr)
    elif _write_file(f"{setup.output}.partial", lines, "transcripts so far"):
        print(
            f"{PROGRAM}: interrupted; {count} are in {setup.output}.partial ({setup.output} is as it was)",
            file=sys.stderr,
        )
    return 130


def _transcript_lines(utterances: list[Utterance]) -> list[str]:
    return [f"{utterance.id}\t{utterance.text}\n" for utterance in utterances]


def _write_file(path: str, lines: list[str], what: str, instead: str = "") -> bool:
    try:
        with atomic_write(path) as file:
            file.writelines(lines)
    except OSError as error:
        where = f"; the {what} follow {instead}" if instead else ""
        tqdm.write(
            f"{PROGRAM}: error: {path}: cannot write the {what} ({error.strerror or error}); "
            f"the file is as it was{where}",
            file=sys.stderr,
        )
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
