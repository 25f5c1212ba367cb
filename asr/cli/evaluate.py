"""`asr-evaluate`: decode a labelled set, score it, and write a report on accuracy by length and attention.

The report folder holds summary.json, report.md, errors.txt (alignments, worst first),
hypotheses.txt and references.txt, attention heatmaps of the worst, median and longest utterances
and a plot of WER against length. Kaldi's summary lines go to stdout; errors, warnings, the
progress bar and the timing line to stderr. Exit status: 0 when every recording was scored, 1 when
some could not be read (the others are still scored), 2 for a problem with the arguments, the
model or the references. The checkpoint is all it needs: no config files, from any folder.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from asr.allocator import keep_freed_memory
from asr.checkpoint import CheckpointError, load_model

# One device syntax for both commands: auto, cpu, cuda, cuda:N.
from asr.cli.transcribe import (
    DEFAULT_LM_WEIGHT,
    _load_language_model,
    _resolve_device,
    _UsageError,
    decoding_options,
)
from asr.decoding import DecodingOptions
from asr.dehum import HumConfig
from asr.diagnostics import DEFINITIONS, FLAGS, STUCK_STEPS
from asr.evaluation import (
    UtteranceResult,
    attention_frame_seconds,
    build_summary,
    decode_dataset,
    find_references,
    score_utterances,
    worst_first,
    write_plots,
)
from asr.files import atomic_write
from asr.metrics import (
    ErrorCounts,
    kaldi_sentence_summary,
    kaldi_summary,
    read_transcripts,
    utterance_alignment,
    write_transcripts,
)
from asr.model import LAS
from asr.segmentation import SegmentationConfig
from asr.transcription import Utterance, collect_utterances, unique_ids

PROGRAM = "asr-evaluate"
_MAX_IDS_SHOWN = 10

_EPILOG = """\
inputs: as for asr-transcribe: audio files, folders (searched recursively) and lhotse manifests.
references: --ref FILE ("utt_id<TAB>text" or Kaldi's "utt_id text"; it may list more utterances than
the inputs), else the supervisions of manifest cuts; every input needs one.
buckets: by duration and by reference words, about equally full unless edges are given; up to 8
distinct word counts get a bucket each. Recordings are decoded whole unless --max-segment-seconds
is given: long inputs are what the attention diagnostics are for."""


def build_parser() -> argparse.ArgumentParser:
    defaults = DecodingOptions()
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Evaluate a Listen-Attend-Spell checkpoint: WER/CER by length and attention diagnostics.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("inputs", nargs="+", metavar="INPUT", help="audio files, folders or lhotse manifests")
    add("--model", required=True, metavar="CKPT", help="model checkpoint (required)")
    add("--out", required=True, metavar="DIR", help="report folder, created if needed (required)")
    add("--ref", default=None, metavar="FILE", help="reference transcripts (default: cut supervisions)")
    add(
        "--beam-size",
        type=int,
        default=defaults.beam_size,
        metavar="N",
        help="beam width; 1 is greedy (default: %(default)s)",
    )
    add(
        "--ctc-weight",
        type=float,
        default=defaults.ctc_weight,
        metavar="W",
        help="weight of CTC prefix scores, 0 to 1 (default: %(default)s)",
    )
    add(
        "--lm",
        default=None,
        metavar="FILE",
        help="shallow fusion with an LM checkpoint (asr-train-lm) or a word lexicon (asr-lexicon; "
        "character models) (default: none)",
    )
    add(
        "--lm-weight",
        type=float,
        default=None,
        metavar="W",
        help=f"shallow-fusion weight of the --lm scores (default: {DEFAULT_LM_WEIGHT} with --lm)",
    )
    add(
        "--word-penalty",
        type=float,
        default=0.0,
        metavar="P",
        help="with a word lexicon as --lm: subtracted from its score at every word end (default: 0)",
    )
    add(
        "--ngram",
        default=None,
        metavar="FILE",
        help="with a word lexicon as --lm: a word n-gram model (ARPA or Sphinx binary; 'en-us': "
        "pocketsphinx's) for each word given the two before it",
    )
    add(
        "--length-bonus",
        type=float,
        default=defaults.length_bonus,
        metavar="B",
        help="added per output token, against too short outputs (default: %(default)s)",
    )
    add(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="recordings decoded together (default: %(default)s)",
    )
    add(
        "--max-batch-seconds",
        type=float,
        default=400.0,
        metavar="S",
        help="cap on a batch's padded audio: size x longest (default: %(default)s)",
    )
    add("--device", default="auto", metavar="D", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    add(
        "--max-segment-seconds",
        type=float,
        default=None,
        metavar="S",
        help="cut longer recordings at pauses, as asr-transcribe does (default: decode them whole)",
    )
    add(
        "--keep-hum",
        action="store_true",
        help="decode the audio as it is; by default a steady 50 or 60 Hz mains hum is subtracted first, "
        "as asr-transcribe does",
    )
    add(
        "--duration-edges",
        type=_edges,
        default=None,
        metavar="S,S,...",
        help="inner bucket edges in seconds, e.g. 2,5,10 (default: quantiles)",
    )
    add(
        "--word-edges",
        type=_edges,
        default=None,
        metavar="N,N,...",
        help="inner bucket edges in reference words, e.g. 5,10,20 (default: quantiles)",
    )
    add(
        "--stuck-steps",
        type=int,
        default=STUCK_STEPS,
        metavar="N",
        help="steps on one frame that flag the attention as stuck (default: %(default)s)",
    )
    return parser


@dataclass(frozen=True)
class _Setup:
    """Everything the evaluation needs once the arguments have been checked."""

    model: LAS
    tokenizer: object
    options: DecodingOptions
    device: torch.device
    language_model: object  # None without --lm
    utterances: list[Utterance]
    references: dict[str, str]  # utterance id -> reference text
    out_dir: Path


def main(argv: Sequence[str] | None = None) -> int:
    """Run `asr-evaluate`; returns the exit status (0 all scored, 1 some failed, 2 bad usage,
    130 interrupted)."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # batches reuse their memory instead of faulting it in again (asr/allocator.py)
    try:
        return _evaluate(args)
    except KeyboardInterrupt:  # every report file is whole (atomic_write): this run's or an earlier one's
        print(f"{PROGRAM}: interrupted; the report is not (completely) written", file=sys.stderr)
        return 130


def _evaluate(args: argparse.Namespace) -> int:
    failures: list[str] = []

    def report_error(message: str) -> None:
        failures.append(message)
        tqdm.write(f"{PROGRAM}: error: {message}", file=sys.stderr)  # keeps a progress bar intact

    try:
        setup = _set_up(args, report_error)
    except _UsageError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    hypotheses, report = decode_dataset(
        setup.utterances,
        setup.model,
        setup.options,
        segmentation=SegmentationConfig(max_segment_seconds=args.max_segment_seconds or math.inf),
        batch_size=args.batch_size,
        max_batch_seconds=args.max_batch_seconds,
        device=setup.device,
        on_error=report_error,
        language_model=setup.language_model,
        hum=None if args.keep_hum else HumConfig(),
    )
    hummed = sum(utterance.hum is not None for utterance in setup.utterances)
    if hummed:
        count = f"{hummed} of {len(setup.utterances)} recordings"
        print(f"{PROGRAM}: note: mains hum removed from {count} before decoding", file=sys.stderr)
    # Inputs that never became utterances (a missing path, a bad manifest) count as failed too.
    report = dataclasses.replace(report, num_failed=len(failures))
    print(f"{PROGRAM}: {report.summary()}", file=sys.stderr)
    results = score_utterances(
        setup.utterances,
        hypotheses,
        setup.references,
        setup.tokenizer,
        args.stuck_steps,
        setup.options.ctc_weight,
    )
    if not results:
        print(f"{PROGRAM}: error: no recording could be decoded; no report written", file=sys.stderr)
        return 1
    settings = _settings(args, setup)
    summary = build_summary(results, report, settings, args.duration_edges, args.word_edges)
    try:
        _write_report(setup.out_dir, results, summary, attention_frame_seconds(setup.model))
        written = True
    except OSError as error:  # a full disk: the figures below are still the evaluation's
        print(
            f"{PROGRAM}: error: {setup.out_dir}: cannot write the report ({error.strerror or error}); "
            "each file in it is whole, either this run's or as it was before",
            file=sys.stderr,
        )
        written = False
    word_counts = sum((result.word_errors for result in results), ErrorCounts())
    print(kaldi_summary(word_counts, "WER"))
    print(kaldi_summary(sum((result.char_errors for result in results), ErrorCounts()), "CER"))
    print(kaldi_sentence_summary(word_counts))
    if written:
        print(f"{PROGRAM}: report written to {setup.out_dir / 'report.md'}", file=sys.stderr)
    return 1 if failures or not written else 0


def _set_up(args: argparse.Namespace, report_error) -> _Setup:
    """Check the arguments, load the model, find the inputs and their references, create the report
    folder; raises _UsageError."""
    options, device = _check_arguments(args)
    try:
        model, tokenizer = load_model(args.model, device)
    except CheckpointError as error:
        raise _UsageError(str(error)) from None
    language_model = _load_language_model(args, model, tokenizer, device)
    utterances = collect_utterances(args.inputs, report_error)
    if not utterances:
        raise _UsageError(f"no audio found in {' '.join(args.inputs)}")
    _rename_duplicates(utterances)
    references = _references(utterances, args.ref)
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _UsageError(f"{out_dir}: cannot create the report folder ({error.strerror})") from None
    return _Setup(model, tokenizer, options, device, language_model, utterances, references, out_dir)


def _check_arguments(args: argparse.Namespace):
    """(DecodingOptions, torch.device) from the arguments; raises _UsageError."""
    if args.stuck_steps < 2:
        raise _UsageError(f"--stuck-steps must be at least 2, got {args.stuck_steps}")
    return decoding_options(args), _resolve_device(args.device)


def _edges(text: str) -> list[float]:
    """ "2,5,10" -> [2.0, 5.0, 10.0], strictly increasing."""
    try:
        edges = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not edges or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise argparse.ArgumentTypeError(f"expected increasing numbers separated by commas, got {text!r}")
    return edges


def _rename_duplicates(utterances: list[Utterance]) -> None:
    for utterance, new_id in zip(utterances, unique_ids(utterances), strict=True):
        if new_id != utterance.id:
            print(f"{PROGRAM}: warning: {utterance.audio.name} is scored as {new_id!r}", file=sys.stderr)
            utterance.id = new_id


def _references(utterances: list[Utterance], ref_path: str | None) -> dict[str, str]:
    """`find_references` with --ref; raises _UsageError when an utterance has no reference."""
    transcripts = {}
    if ref_path is not None:
        try:
            transcripts = read_transcripts(ref_path)
        except OSError as error:
            raise _UsageError(f"{ref_path}: {error.strerror}") from None
        except ValueError as error:
            raise _UsageError(str(error)) from None
    references = find_references(utterances, transcripts)
    missing = [utterance.id for utterance in utterances if utterance.id not in references]
    if missing:
        shown = ", ".join(missing[:_MAX_IDS_SHOWN]) + (", ..." if len(missing) > _MAX_IDS_SHOWN else "")
        where = f"in {ref_path}" if ref_path else "(give --ref FILE)"
        raise _UsageError(
            f"{len(missing)} of {len(utterances)} recordings have no reference {where}: {shown}"
        )
    return references


def _settings(args: argparse.Namespace, setup: _Setup) -> dict:
    """What produced the numbers: model file and hash, inputs, decoding settings."""
    digest = hashlib.sha256()
    with open(args.model, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {
        "model": args.model,
        "model_sha256": digest.hexdigest(),
        "attention": setup.model.config.attention.type,
        "inputs": list(args.inputs),
        "references": args.ref or "manifest supervisions",
        "decoding": {
            **dataclasses.asdict(setup.options),
            "max_segment_seconds": args.max_segment_seconds,
            "remove_mains_hum": not args.keep_hum,
            "batch_size": args.batch_size,
            "device": str(setup.device),
        },
        "stuck_steps": args.stuck_steps,
    }


def _write_report(
    out_dir: Path, results: Sequence[UtteranceResult], summary: dict, frame_seconds: float | None = None
) -> None:
    """Write summary.json, report.md, errors.txt, the plots and the transcripts into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "errors.txt") as file:
        for result in worst_first(results):
            counts, flags = result.word_errors, [f for f in FLAGS if result.diagnostics.get(f)]
            values = " ".join(f"{key}={value:.3g}" for key, value in result.diagnostics.items())
            file.write(
                f"{result.id} errors={counts.num_errors} words={counts.num_reference} "
                f"sub={counts.substitutions} del={counts.deletions} ins={counts.insertions} "
                f"seconds={result.duration:.2f} avg_logprob={result.avg_logprob:.4f} "
                f"ended_by={','.join(result.ended_by)} "
                f"flags={','.join(flags) or '-'}\nattention: {values}\n"
                f"{utterance_alignment(result.reference, result.hypothesis)}\n\n"
            )
    # The scored texts, for `asr-wer` (e.g. on one bucket's ids from summary.json).
    write_transcripts(out_dir / "hypotheses.txt", [(r.id, r.hypothesis) for r in results])
    write_transcripts(out_dir / "references.txt", [(r.id, r.reference) for r in results])
    summary["plots"] = write_plots(out_dir, results, summary, frame_seconds)
    with atomic_write(out_dir / "summary.json") as file:
        file.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    with atomic_write(out_dir / "report.md") as file:  # last: the report names the files above
        file.write(_render_markdown(summary))


def _render_markdown(summary: dict) -> str:
    """report.md: results, WER by length, attention diagnostics with their definitions, plots."""
    settings = summary["settings"]
    inputs = ", ".join(f"`{item}`" for item in settings["inputs"])
    lines = [
        "# Evaluation report",
        "",
        f"Model `{settings['model']}` (sha256 `{settings['model_sha256'][:16]}`, "
        f"{settings['attention']} attention) on {inputs}.",
        "",
        "Decoding: "
        + ", ".join(f"{key} {_none(value)}" for key, value in settings["decoding"].items())
        + ".",
        "",
        "## Results",
        "",
        _table(["set", *_RATE_COLUMNS], [["all", *_rate_row(summary)]]),
        "",
        f"Real-time factor {summary['real_time_factor']:.3f} ({summary['wall_seconds']:.1f} s to decode "
        f"{summary['audio_seconds']:.1f} s of audio, audio reading included).",
    ]
    if summary["num_failed"]:
        lines += ["", f"{summary['num_failed']} recordings could not be read and are not scored."]
    for name, title in (("duration", "duration"), ("words", "number of reference words")):
        rows = [[bucket["label"], *_rate_row(bucket)] for bucket in summary["buckets"][name]]
        lines += ["", f"## WER by {title}", "", _table(["bucket", *_RATE_COLUMNS], rows)]
    lines += ["", "![WER against length](wer_by_length.png)", *_confidence_section(summary["confidence"])]
    lines += ["", "## Attention diagnostics", ""]
    keys = list(summary["diagnostics"])
    rows = [["all", *summary["diagnostics"].values()]]
    for name in ("duration", "words"):
        rows += [
            [f"{name} {b['label']}", *(b["diagnostics"][k] for k in keys)] for b in summary["buckets"][name]
        ]
    means = "Means over utterances; flags are shares of utterances."
    segment = settings["decoding"]["max_segment_seconds"]
    if segment is not None:
        means += f" Recordings over {segment:g} s were decoded in segments: means over a recording's steps."
    lines += [means, "", _table(["bucket", *keys], rows)]
    lines += ["", *(f"- **{key}**: {DEFINITIONS[key]}" for key in keys if key in DEFINITIONS)]
    lines += [
        "",
        "## Attention plots",
        "",
        "Worst: most word errors; median: by WER; longest: by duration.",
        "",
    ]
    for kind in ("worst", "median", "longest"):
        plot = summary["plots"][kind]
        lines += [f"### {kind}: `{plot['utterance']}`", "", f"![{kind}]({plot['file']})", ""]
    lines += ["Per-utterance alignments and diagnostics, worst first: `errors.txt`."]
    return "\n".join(lines) + "\n"


def _confidence_section(confidence: dict) -> list[str]:
    """report.md's lines on avg_logprob: WER by its quartiles, and how well it finds the errors."""
    rows = [
        [f"{group['low']:.3f} to {group['high']:.3f}", *_rate_row(group)] for group in confidence["groups"]
    ]
    auc = confidence["auc_errors"]
    found = (
        f"An utterance with errors scores below one without in {100 * auc:.0f} % of pairs "
        f"(ROC AUC {auc:.3f})."
        if auc is not None
        else "Every utterance is right, or every one wrong: no ranking to measure."
    )
    return [
        "",
        "## WER by confidence",
        "",
        "avg_logprob: the acoustic model's log-probability per output token, (1 - w) attention + w CTC "
        "with the search's CTC weight, eos counted, without the LM (`asr-transcribe --scores`). "
        "Utterances in four equal shares, lowest first. " + found,
        "",
        _table(["avg_logprob", *_RATE_COLUMNS], rows),
    ]


_RATE_COLUMNS = ["utterances", "words", "audio (s)", "WER %", "CER %", "SER %", "sub", "del", "ins"]


def _rate_row(group: dict) -> list:
    """The `_RATE_COLUMNS` of a `summarise_group` result."""
    wer, sizes = group["wer"], [group["num_utterances"], group["num_words"], group["audio_seconds"]]
    rates = [wer["percent"], group["cer"]["percent"], group["sentence_error_rate"]]
    return sizes + rates + [wer["substitutions"], wer["deletions"], wer["insertions"]]


def _table(header: list[str], rows: list[list]) -> str:
    cells = [[f"{value:.2f}" if isinstance(value, float) else str(value) for value in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def _none(value) -> str:
    return "none" if value is None else str(value)


if __name__ == "__main__":
    sys.exit(main())
