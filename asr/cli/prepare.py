"""`asr-prepare CORPUS`: write the lhotse manifests a recipe trains and scores on.

asr-prepare digits --out exp/digits/data [--fsdd-dir DIR] [--held-out SPEAKER] [--synthetic-dir DIR|none]
asr-prepare kathleen --out exp/kathleen/data [--kathleen-dir DIR]   (downloads without a folder)
asr-prepare librispeech --out exp/librispeech/data [--librispeech-dir DIR] [--subset train-clean-100]
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from asr.corpora.fsdd import prepare_digits
from asr.corpora.kathleen import prepare_kathleen
from asr.corpora.librispeech import SUBSETS, prepare_librispeech

# The repository's vendored copy; FSDD_DIR or --fsdd-dir points at an upstream checkout instead.
VENDORED_FSDD = Path(__file__).resolve().parents[2] / "recipes" / "digits" / "fsdd"
# Synthetic voices the digits recipe also trains on (recipes/digits/synthetic/README.md)
VENDORED_SYNTHETIC = VENDORED_FSDD.parent / "synthetic" / "recordings"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr-prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    corpora = parser.add_subparsers(dest="corpus", required=True)
    digits = corpora.add_parser(
        "digits", help="FSDD connected-digit strings", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    digits.add_argument(
        "--fsdd-dir",
        default=os.environ.get("FSDD_DIR") or str(VENDORED_FSDD),
        help="FSDD folder (with recordings/); $FSDD_DIR overrides the vendored copy",
    )
    digits.add_argument("--out", required=True, help="output folder for manifests and dev/test audio")
    digits.add_argument("--num-dev", type=int, default=100, help="dev strings (from test-split takes 0-1)")
    digits.add_argument("--num-test", type=int, default=200, help="test strings (from test-split takes 2-4)")
    digits.add_argument(
        "--num-long",
        type=int,
        default=50,
        help="long strings of 20-40 digits (takes 2-4), longer than any training string",
    )
    digits.add_argument(
        "--held-out",
        action="append",
        default=[],
        metavar="SPEAKER",
        help="also write held_out_SPEAKER/: strings of all that speaker's recordings, each once "
        "(cuts.jsonl.gz, transcripts.txt), and the recordings one by one (clips.jsonl.gz, clips.txt), "
        "to score a model trained with data.corpus.exclude_speakers=[SPEAKER] (repeatable)",
    )
    digits.add_argument(
        "--synthetic-dir",
        default=str(VENDORED_SYNTHETIC),
        help="clips of other voices named like FSDD's (the vendored eSpeak NG voices), listed in "
        "synthetic_train_clips.jsonl.gz for training; 'none' lists none",
    )
    digits.add_argument("--seed", type=int, default=20261125)
    kathleen = corpora.add_parser(
        "kathleen",
        help="Kathleen read sentences (CMU ARCTIC prompts, one speaker)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    kathleen.add_argument(
        "--kathleen-dir",
        default=os.environ.get("KATHLEEN_DIR"),
        help="an upstream checkout (arctic_*.wav + .txt) or a converted copy (transcripts.tsv + audio/); "
        "$KATHLEEN_DIR by default; neither downloads rhasspy/dataset-voice-cathy into --out",
    )
    kathleen.add_argument("--out", required=True, help="output folder for the manifests")
    librispeech = corpora.add_parser(
        "librispeech",
        help="LibriSpeech read audiobooks, through lhotse's recipe",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    librispeech.add_argument(
        "--librispeech-dir",
        default=os.environ.get("LIBRISPEECH_DIR"),
        help="an existing copy (the LibriSpeech/ folder holding train-clean-100/, dev-clean/, ..., or its "
        "parent); $LIBRISPEECH_DIR by default; neither downloads the parts from openslr.org into --out",
    )
    librispeech.add_argument(
        "--subset",
        choices=list(SUBSETS),
        default="train-clean-100",
        help="training data: mini_librispeech (5 h), train-clean-100, or librispeech (all 960 h)",
    )
    librispeech.add_argument("--num-jobs", type=int, default=4, help="threads reading audio headers")
    librispeech.add_argument("--out", required=True, help="output folder for the manifests")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.corpus == "digits":
            paths = prepare_digits(
                args.fsdd_dir,
                args.out,
                args.num_dev,
                args.num_test,
                args.num_long,
                args.seed,
                tuple(args.held_out),
                None if args.synthetic_dir.lower() == "none" else args.synthetic_dir,
            )
        elif args.corpus == "kathleen":
            paths = prepare_kathleen(args.kathleen_dir, args.out)
        else:
            paths = prepare_librispeech(args.librispeech_dir, args.out, args.subset, args.num_jobs)
    except (FileNotFoundError, OSError, ValueError) as error:
        print(f"asr-prepare: error: {error}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
