"""`asr-average`: average the weights of a run's last epochs into one model checkpoint.

    asr-average --exp-dir exp/librispeech --last 5 --out exp/librispeech/avg5.pt
    asr-average --out avg.pt exp/run/epoch_27.pt exp/run/epoch_28.pt exp/run/epoch_29.pt

The epoch checkpoints are what training keeps with `trainer.keep_epoch_checkpoints=N` (the models
of its last N epochs, `epoch_<N>.pt`). The result loads like best.pt: `asr-transcribe --model
avg5.pt`. Floating weights are averaged; integer buffers come from the last checkpoint.

Exit status: 0 when the average is written; 2 with a one-line message naming the file when a
checkpoint is missing, unreadable, not a las-asr model, or of another model config or tokenizer.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from asr.checkpoint import CheckpointError, average_model_states, epoch_checkpoints, save_checkpoint

PROGRAM = "asr-average"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoints", nargs="*", metavar="CKPT", help="model checkpoints to average (instead of --exp-dir)"
    )
    parser.add_argument("--exp-dir", metavar="DIR", help="a training run's folder, holding epoch_<N>.pt")
    parser.add_argument(
        "--last",
        type=int,
        default=5,
        metavar="N",
        help="with --exp-dir: average the last N epochs (default: 5)",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="the averaged checkpoint to write")
    return parser


def last_epochs(exp_dir: str, count: int) -> list[Path]:
    """The last `count` epoch checkpoints of a run, oldest first."""
    if not Path(exp_dir).is_dir():
        raise CheckpointError(f"{exp_dir}: no such folder")
    found = epoch_checkpoints(exp_dir)
    if len(found) < count:
        raise CheckpointError(
            f"{exp_dir}: {len(found)} epoch checkpoint(s) (epoch_<N>.pt), --last {count} needs {count}; "
            f"train with trainer.keep_epoch_checkpoints={count} or more"
        )
    return found[-count:]


def main(argv: Sequence[str] | None = None) -> int:
    """Run `asr-average`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.exp_dir) == bool(args.checkpoints):
        parser.error("give either --exp-dir (with --last) or checkpoint files, not both")
    if args.last < 1:
        parser.error(f"--last must be at least 1, got {args.last}")
    try:
        paths = last_epochs(args.exp_dir, args.last) if args.exp_dir else [Path(p) for p in args.checkpoints]
        averaged = average_model_states(paths)
        save_checkpoint(averaged, args.out)
    except CheckpointError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    names = ", ".join(p.name for p in paths)
    print(f"{PROGRAM}: averaged {len(paths)} checkpoint(s) ({names}) into {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
