"""Long inputs: WER on digit strings longer than any training string, against the normal test strings.

    python benchmarks/long_strings.py --model exp/digits/best.pt --ctc-weights 0.3 0

For every CTC weight, the installed `asr-transcribe` decodes the test strings
(exp/digits/data/test) and the long strings (exp/digits/data/long: 20-40 digits, 10-27 s, written
by `asr-prepare digits`) in a child process. The long strings are decoded whole: the checkpoint's
`max_utterance_seconds` would make asr-transcribe cut them at pauses, so `--max-segment-seconds`
is raised above the longest of them (60 s by default).

Reported per set: WER with substitutions, deletions and insertions, hypothesis words per reference
word, and extra repeats: outputs in which some n-gram (n <= 4) repeats back to back more often
than anywhere in the reference ("seven seven seven" for "seven nine", or "five four five four
five four"), the signature of an attention decoder that loops (espnet#1297). A substitution can
make one too ("six three three" -> "three three three"), so read them with the insertions and the
length ratio. The ratio is the long-string WER over the test-string WER. RTF is the one
asr-transcribe reports (model loading excluded).

The recipe's 200 test strings leave a good model only a few errors, so one error moves the ratio
by 0.3-0.5. For a steadier ratio, draw larger sets from the same held-out takes and point
`--data-dir` at them: `asr-prepare digits --out exp/digits/data_large --num-dev 0 --num-test 1000
--num-long 200` (recipes/digits/README.md has both sets' figures).

Prints a markdown table and a final line `RESULT {json}`.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from asr.metrics import read_transcripts, word_errors
from asr.text import normalize_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, metavar="CKPT", help="model checkpoint (required)")
    parser.add_argument(
        "--data-dir",
        default="exp/digits/data",
        metavar="DIR",
        help="with test/ and long/ (default: %(default)s)",
    )
    parser.add_argument("--ctc-weights", type=float, nargs="+", default=[0.3, 0.0], metavar="W")
    parser.add_argument("--beam-size", type=int, default=10, metavar="N", help="(default: %(default)s)")
    parser.add_argument(
        "--max-segment-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="given to asr-transcribe for the long strings: they are decoded whole (default: %(default)s)",
    )
    parser.add_argument(
        "--transcribe-args", default="", metavar="ARGS", help="extra asr-transcribe arguments (default: none)"
    )
    parser.add_argument(
        "--out", default="exp/long_strings", metavar="DIR", help="hypotheses (default: %(default)s)"
    )
    return parser


def longest_repeat(words: list[str], max_n: int = 4) -> int:
    """The most times any n-gram (n <= max_n) occurs back to back: 'a b a b a b c' -> 3."""
    longest = 1 if words else 0
    for n in range(1, max_n + 1):
        for start in range(len(words) - n):
            count = 1
            while words[start + count * n : start + (count + 1) * n] == words[start : start + n]:
                count += 1
            longest = max(longest, count)
    return longest


def score(references: dict[str, str], hypotheses: dict[str, str]) -> dict:
    """WER, error counts, length ratio and extra repeats of one set."""
    ids = sorted(references)
    missing = [utterance for utterance in ids if utterance not in hypotheses]
    if missing:
        raise RuntimeError(f"no hypothesis for {len(missing)} utterances, e.g. {missing[0]}")
    reference_words = [normalize_text(references[i]).split() for i in ids]
    hypothesis_words = [normalize_text(hypotheses[i]).split() for i in ids]
    errors = word_errors([references[i] for i in ids], [hypotheses[i] for i in ids])
    repeats = [
        utterance
        for utterance, reference, hypothesis in zip(ids, reference_words, hypothesis_words, strict=True)
        if longest_repeat(hypothesis) > longest_repeat(reference)
    ]
    return {
        "utterances": len(ids),
        "words": errors.num_reference,
        "wer": errors.error_rate,
        "substitutions": errors.substitutions,
        "deletions": errors.deletions,
        "insertions": errors.insertions,
        "length_ratio": sum(map(len, hypothesis_words)) / max(1, sum(map(len, reference_words))),
        "repeats": repeats,
    }


def decode_set(args, set_name: str, ctc_weight: float) -> dict:
    """asr-transcribe on one prepared set with one CTC weight, scored."""
    data = Path(args.data_dir) / set_name
    output = Path(args.out) / f"{set_name}_ctc{ctc_weight:g}.txt"
    output.parent.mkdir(parents=True, exist_ok=True)
    command = shutil.which("asr-transcribe") or str(Path(sys.executable).with_name("asr-transcribe"))
    arguments = [command, "--model", args.model, "--beam-size", str(args.beam_size)]
    arguments += ["--ctc-weight", str(ctc_weight), "--output", str(output), *args.transcribe_args.split()]
    if set_name == "long":
        arguments += ["--max-segment-seconds", str(args.max_segment_seconds)]
    finished = subprocess.run([*arguments, str(data / "cuts.jsonl.gz")], capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"asr-transcribe failed:\n{finished.stderr[-2000:]}")
    summary = finished.stderr.strip().splitlines()[-1]
    print(f"ctc {ctc_weight:g} {set_name}: {summary}", file=sys.stderr)
    # "N files, A s of audio in W s (real-time factor ...)": W excludes loading the model
    seconds = re.search(r"([0-9.]+) s of audio in ([0-9.]+) s", summary)
    result = score(read_transcripts(data / "transcripts.txt"), read_transcripts(output))
    return {**result, "rtf": float(seconds.group(2)) / float(seconds.group(1))}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    results = []
    for ctc_weight in args.ctc_weights:
        test, long = decode_set(args, "test", ctc_weight), decode_set(args, "long", ctc_weight)
        results.append(
            {
                "ctc_weight": ctc_weight,
                "test": test,
                "long": long,
                "ratio": long["wer"] / max(test["wer"], 1e-9),
            }
        )
    print(
        "| CTC weight | set | strings | words | WER | sub / del / ins | hyp/ref words | extra repeats | RTF |"
    )
    print("|---:|---|---:|---:|---:|---|---:|---:|---:|")
    for result in results:
        for set_name in ("test", "long"):
            row = result[set_name]
            print(
                f"| {result['ctc_weight']:g} | {set_name} | {row['utterances']} | {row['words']} "
                f"| {100 * row['wer']:.2f}% "
                f"| {row['substitutions']} / {row['deletions']} / {row['insertions']} "
                f"| {row['length_ratio']:.2f} | {len(row['repeats'])} | {row['rtf']:.3f} |"
            )
    for result in results:
        print(f"CTC weight {result['ctc_weight']:g}: long / test WER = {result['ratio']:.2f}")
    print(
        "RESULT "
        + json.dumps({"model": args.model, "beam_size": args.beam_size, "results": results}, sort_keys=True)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
