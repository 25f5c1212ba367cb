"""A long recording in one `asr-transcribe` call: WER, real-time factor and peak memory.

    python benchmarks/long_recording.py --model exp/digits/best.pt --minutes 1 10

Builds one recording per `--minutes` value by concatenating the digits recipe's test strings
(exp/digits/data/test, written by `asr-prepare digits`) in id order, cycling if needed, with
pauses of 0.3 to 1.0 s drawn from a fixed seed, so that the same data always gives the same file.
Each recording is written as FLAC with its reference transcript, then transcribed by the
installed `asr-transcribe` in a child process (the checkpoint's `max_utterance_seconds` decides
where it is cut at pauses), and scored with `asr.metrics.word_errors`.

RTF is what asr-transcribe reports (reading, segmenting and decoding; model loading excluded);
"with start-up" divides the child's whole wall time, Python start-up included, by the audio.
Peak memory is the child's maximum resident set size (`getrusage`, children only). When it
stays flat from 1 to 10 minutes, transcription holds one batch of segments at a time rather
than the whole recording's features or hypotheses.

Prints a markdown table and a final line `RESULT {json}`.
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lhotse
import numpy as np
import soundfile

from asr.metrics import word_errors

DEFAULT_DATA = Path("exp/digits/data/test/cuts.jsonl.gz")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, metavar="CKPT", help="model checkpoint (required)")
    parser.add_argument(
        "--data", default=str(DEFAULT_DATA), metavar="MANIFEST", help="test cuts (default: %(default)s)"
    )
    parser.add_argument(
        "--minutes", type=float, nargs="+", default=[1.0, 10.0], help="recording lengths (default: 1 10)"
    )
    parser.add_argument(
        "--out",
        default="exp/long_recording",
        metavar="DIR",
        help="recordings and outputs (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="pause lengths (default: %(default)s)")
    parser.add_argument(
        "--transcribe-args",
        default="",
        metavar="ARGS",
        help="extra asr-transcribe arguments, e.g. '--beam-size 10 --ctc-weight 0.3' (default: none)",
    )
    return parser


def build_recording(cuts: list, minutes: float, seed: int, path: Path) -> tuple[float, str, int]:
    """Write test strings, each followed by a pause, as long as they fit in `minutes`.

    Returns the duration in seconds, the reference text and the number of strings.
    """
    rng = random.Random(seed)
    sample_rate = cuts[0].sampling_rate
    pieces, texts, total = [], [], 0
    target = round(minutes * 60 * sample_rate)
    for index in range(10**6):
        cut = cuts[index % len(cuts)]
        if cut.sampling_rate != sample_rate:
            cut = cut.resample(sample_rate)
        samples = cut.load_audio().mean(axis=0).astype(np.float32)  # (channels, S) -> (S,)
        pause = np.zeros(round(rng.uniform(0.3, 1.0) * sample_rate), dtype=np.float32)
        if total + samples.size + pause.size > target:
            break
        pieces += [samples, pause]
        texts.append(cut.supervisions[0].text)
        total += samples.size + pause.size
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.concatenate(pieces), sample_rate)
    return total / sample_rate, " ".join(texts), len(texts)


def transcribe(model: str, recording: Path, extra_arguments: list[str]) -> dict:
    """Run asr-transcribe on one file in a child process: its text, wall time and peak RSS."""
    command = shutil.which("asr-transcribe") or str(Path(sys.executable).with_name("asr-transcribe"))
    output, segments = recording.with_suffix(".hyp.txt"), recording.with_suffix(".segments.txt")
    arguments = [command, "--model", model, "--output", str(output), "--segments", str(segments)]
    start = time.perf_counter()
    # the child's peak RSS: wait4 reports the rusage of exactly this child
    process = subprocess.Popen(
        [*arguments, *extra_arguments, str(recording)], stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"asr-transcribe failed on {recording}:\n{stderr}")
    # "N files, A s of audio in W s (real-time factor ...)": W excludes loading the model
    summary = re.search(r"([0-9.]+) s of audio in ([0-9.]+) s", stderr)
    text = output.read_text().split("\t", 1)[1].strip()
    return {
        "text": text,
        "wall_seconds": seconds,
        "decoding_seconds": float(summary.group(2)),
        "decoding_rtf": float(summary.group(2)) / float(summary.group(1)),
        "peak_rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
        "num_segments": len(segments.read_text().splitlines()),
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    data = Path(args.data)
    if not data.is_file():
        print(f"{data}: not found; run `asr-prepare digits --out exp/digits/data` first", file=sys.stderr)
        return 2
    cuts = sorted(lhotse.load_manifest(data), key=lambda cut: cut.id)
    rows = []
    for minutes in args.minutes:
        recording = Path(args.out) / f"digits_{minutes:g}min.flac"
        seconds, reference, num_strings = build_recording(cuts, minutes, args.seed, recording)
        Path(recording.with_suffix(".ref.txt")).write_text(f"{recording.stem}\t{reference}\n")
        result = transcribe(args.model, recording, args.transcribe_args.split())
        errors = word_errors([reference], [result.pop("text")])
        rows.append(
            {
                "minutes": minutes,
                "audio_seconds": seconds,
                "num_strings": num_strings,
                "num_words": errors.num_reference,
                "errors": {
                    "substitutions": errors.substitutions,
                    "deletions": errors.deletions,
                    "insertions": errors.insertions,
                },
                "wer": errors.error_rate,
                "rtf": result["wall_seconds"] / seconds,
                **result,
            }
        )
    print("| recording | strings | words | segments | WER | RTF | RTF with start-up | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['audio_seconds'] / 60:.1f} min | {row['num_strings']} | {row['num_words']} "
            f"| {row['num_segments']} | {100 * row['wer']:.2f}% | {row['decoding_rtf']:.4f} "
            f"| {row['rtf']:.4f} "
            f"| {row['peak_rss_mb']:.0f} MB |"
        )
    print("RESULT " + json.dumps({"model": args.model, "recordings": rows}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
