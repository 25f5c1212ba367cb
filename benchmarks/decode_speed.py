"""Decoding speed on CPU: greedy search and beam 10 with and without CTC, batched and one at a time.

    python benchmarks/decode_speed.py --model exp/digits/best.pt --threads 2 --repeats 3
    python benchmarks/decode_speed.py --model exp/digits/best.pt --device cuda     # on a GPU

Every search decodes the same fixed utterances twice: as one padded batch (`asr.decoding.decode`
over all of them) and one utterance at a time, in the same run, so the ratio of the two is
measured under the same load. The RTF and utterances/s figures include features, the encoder and
the search (what `asr-transcribe` spends per batch, with `--device cuda` the copy of the waveforms
to the GPU too) but not audio loading. The search alone is
timed too (`asr.decoding.search` over encoder outputs computed beforehand, batched and one at a
time): its speed-up is the one that batching the search itself gives, while the end-to-end one
also holds the encoder's, which is smaller for a batch of mixed lengths (padding). Each figure is
the median of `--repeats` runs after one untimed warm-up run per search; batched and
one-at-a-time runs alternate, so that on a shared machine both see the same load.

Two batches of `--num-utterances` test strings of the digits recipe (`asr-prepare digits` writes
them to exp/digits/data/test/cuts.jsonl.gz) are timed, each its own rows of the table:

- `mixed`: the first by id, of mixed lengths (1.0-5.3 s for the first 16), so the batch is padded
  to its longest one: what `asr-transcribe` decodes when given a handful of files of any length;
- `similar`: those around the median duration, as in the duration-sorted batches that
  `asr-evaluate` and `asr-transcribe` form from a larger set.

`--batches mixed` or `--batches similar` times one of them (`--similar-lengths` is the second).
Without the manifest, deterministic generated audio stands in (1.5-4 s mixed, 2.4-2.6 s similar).
Without `--model`, a freshly initialised model of the
digits recipe's sizes (conf/experiment/digits.yaml) is timed, with eos suppressed so that every
search runs to its maximum length and decode lengths do not depend on random weights; a trained
model stops much earlier, so its figures are the ones to report.

Prints a markdown table (one row per batch and search) and a final line `RESULT {json}` for
scripts, with the figures of each batch under `batches`.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from asr.allocator import keep_freed_memory
from asr.checkpoint import load_model
from asr.decoding import DecodingOptions, decode, search
from asr.distributed import DeviceError, resolve_device

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("exp/digits/data/test/cuts.jsonl.gz")
# (name, beam size, CTC weight); greedy is beam 1 without CTC, the cheapest search there is
SEARCHES = (("greedy", 1, 0.0), ("beam 10", 10, 0.0), ("beam 10 + CTC 0.3", 10, 0.3))
# the batches `--batches both` times, in this order (`load_utterances`)
BATCHES = ("mixed", "similar")
DIGIT_WORDS = "zero one two three four five six seven eight nine"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None, metavar="CKPT", help="model checkpoint (default: a fresh digits-sized model)"
    )
    parser.add_argument(
        "--data",
        default=str(DEFAULT_DATA),
        metavar="MANIFEST",
        help="lhotse cuts to take the utterances from; 'generated' (or a missing file) uses "
        "deterministic generated audio (default: %(default)s)",
    )
    parser.add_argument("--num-utterances", type=int, default=16, metavar="N", help="(default: %(default)s)")
    parser.add_argument(
        "--batches",
        choices=BATCHES + ("both",),
        default="both",
        help="mixed: the first utterances by id; similar: those around the median duration, as in a "
        "duration-sorted batch (default: %(default)s)",
    )
    parser.add_argument(
        "--similar-lengths",
        dest="batches",
        action="store_const",
        const="similar",
        help="the same as --batches similar",
    )
    parser.add_argument(
        "--threads", type=int, default=2, metavar="N", help="torch threads (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, metavar="N", help="timed runs per figure (default: %(default)s)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    return parser


def fresh_digits_model() -> torch.nn.Module:
    """The digits recipe's model, freshly initialised, with eos suppressed: every search runs to
    max_length_ratio x frames, so the work per utterance is fixed by the audio lengths alone."""
    from hydra import compose, initialize_config_dir

    from asr.cli.train import build_model
    from asr.tokenizer import CharTokenizer

    with initialize_config_dir(config_dir=str(REPOSITORY / "conf"), version_base="1.3"):
        config = compose(config_name="train", overrides=["experiment=digits"])
    tokenizer = CharTokenizer.build([DIGIT_WORDS])
    torch.manual_seed(0)
    model = build_model(config.model, tokenizer.vocab_size)
    with torch.no_grad():
        model.decoder.output.bias[tokenizer.eos_id] = -1e4
    return model.eval()


def load_utterances(data: str, count: int, sample_rate: int, similar_lengths: bool) -> list[torch.Tensor]:
    """`count` mono float32 waveforms (num_samples,) at `sample_rate`: the first cuts by id, or
    with `similar_lengths` the `count` around the median duration."""
    path = Path(data)
    which = "median-duration" if similar_lengths else "first"
    if data != "generated" and path.is_file():
        import lhotse

        cuts = sorted(lhotse.load_manifest(path), key=lambda cut: cut.id)
        if similar_lengths:
            by_duration = sorted(cuts, key=lambda cut: (cut.duration, cut.id))
            start = max(0, (len(by_duration) - count) // 2)
            cuts = sorted(by_duration[start : start + count], key=lambda cut: cut.id)
        cuts = [
            cut.resample(sample_rate) if cut.sampling_rate != sample_rate else cut for cut in cuts[:count]
        ]
        print(f"utterances: the {which} {len(cuts)} cuts of {path}", file=sys.stderr)
        return [torch.from_numpy(cut.load_audio()).float().mean(0) for cut in cuts]
    print(f"utterances: {count} generated, {which} lengths (no manifest at {path})", file=sys.stderr)
    return [generated_utterance(seed, sample_rate, similar_lengths) for seed in range(count)]


def generated_utterance(seed: int, sample_rate: int, similar_length: bool = False) -> torch.Tensor:
    """1.5 to 4 s (2.4 to 2.6 s with `similar_length`) of noise modulated at syllable rate (about
    4 Hz), the same for every run."""
    generator = torch.Generator().manual_seed(seed)
    low, high = (2.4, 2.6) if similar_length else (1.5, 4.0)
    seconds = low + (high - low) * float(torch.rand((), generator=generator))
    time_axis = torch.arange(int(seconds * sample_rate)) / sample_rate
    envelope = 0.5 * (
        1 + torch.sin(2 * torch.pi * (3 + 2 * float(torch.rand((), generator=generator))) * time_axis)
    )
    return 0.1 * envelope * torch.randn(time_axis.numel(), generator=generator)


def pad(waves: list[torch.Tensor], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) zero-padded waves and (B,) lengths, on `device`."""
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    return padded.to(device), torch.tensor([w.numel() for w in waves], device=device)


def time_search(model, waves: list[torch.Tensor], options: DecodingOptions, repeats: int) -> dict:
    """Seconds to decode every wave as one batch and one at a time, end to end and the search
    alone, median over `repeats`.

    Each repeat times the four runs back to back, so that on a shared machine all see the same
    load, and each speed-up is the median of the per-repeat ratios.
    """
    device = next(model.parameters()).device  # the results are Python lists: each run ends synchronised
    padded = pad(waves, device)
    with torch.inference_mode():
        encoded = model.encode(*padded)
        encoded_one_by_one = [model.encode(*pad([wave], device)) for wave in waves]

    def batched() -> list:
        return decode(model, *pad(waves, device), options)

    def one_at_a_time() -> list:
        return [decode(model, *pad([wave], device), options)[0] for wave in waves]

    def search_batched() -> list:
        return search(model, encoded, options)

    def search_one_at_a_time() -> list:
        return [search(model, output, options)[0] for output in encoded_one_by_one]

    runs = {
        "batched": batched,
        "one_at_a_time": one_at_a_time,
        "search_batched": search_batched,
        "search_one_at_a_time": search_one_at_a_time,
    }
    hypotheses = batched()  # warm-up: first-call allocations and kernel selection
    for name, run in runs.items():
        if name != "batched":
            run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    def speedup(prefix: str) -> float:
        pairs = zip(times[f"{prefix}batched"], times[f"{prefix}one_at_a_time"], strict=True)
        return statistics.median(single / batch for batch, single in pairs)

    return {
        "batched_seconds": statistics.median(times["batched"]),
        "one_at_a_time_seconds": statistics.median(times["one_at_a_time"]),
        "fastest_batched_seconds": min(times["batched"]),
        "fastest_one_at_a_time_seconds": min(times["one_at_a_time"]),
        "speedup": speedup(""),
        "search_batched_seconds": statistics.median(times["search_batched"]),
        "search_one_at_a_time_seconds": statistics.median(times["search_one_at_a_time"]),
        "search_speedup": speedup("search_"),
        "mean_output_tokens": statistics.mean(len(h.tokens) for h in hypotheses),
    }


def measure(model, waves: list[torch.Tensor], repeats: int) -> dict:
    """Per search: RTF and utterances per second, batched and one at a time, and their ratio."""
    audio_seconds = sum(w.numel() for w in waves) / model.config.features.sample_rate
    results = {}
    for name, beam_size, ctc_weight in SEARCHES:
        timing = time_search(
            model, waves, DecodingOptions(beam_size=beam_size, ctc_weight=ctc_weight), repeats
        )
        results[name] = {"beam_size": beam_size, "ctc_weight": ctc_weight, **timing}
        for way in ("batched", "one_at_a_time"):
            results[name][f"{way}_rtf"] = timing[f"{way}_seconds"] / audio_seconds
            results[name][f"{way}_utterances_per_second"] = len(waves) / timing[f"{way}_seconds"]
    return results


def markdown_table(batches: dict) -> str:
    """One row per batch and search, from {batch: {"utterance_seconds": (shortest, longest),
    "searches": {search: figures}}}."""
    lines = [
        "| batch | search | batched RTF | batched utt/s | one-at-a-time RTF | one-at-a-time utt/s "
        "| speed-up | search alone: batched s | one at a time s | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, figures in batches.items():
        shortest, longest = figures["utterance_seconds"]
        for name, row in figures["searches"].items():
            lines.append(
                f"| {batch} {shortest:.1f}-{longest:.1f} s | {name} | {row['batched_rtf']:.4f} "
                f"| {row['batched_utterances_per_second']:.1f} | {row['one_at_a_time_rtf']:.4f} "
                f"| {row['one_at_a_time_utterances_per_second']:.1f} | {row['speedup']:.1f}x "
                f"| {row['search_batched_seconds']:.3f} | {row['search_one_at_a_time_seconds']:.3f} "
                f"| {row['search_speedup']:.1f}x |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.threads, args.repeats, args.num_utterances) < 1:
        print("--threads, --repeats and --num-utterances must be at least 1", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
    except DeviceError as error:
        print(f"--device {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as asr-transcribe and asr-evaluate do (asr/allocator.py)
    model = load_model(args.model)[0] if args.model else fresh_digits_model()
    model.to(device)
    sample_rate = model.config.features.sample_rate
    batches = {}
    for batch in BATCHES if args.batches == "both" else (args.batches,):
        waves = load_utterances(args.data, args.num_utterances, sample_rate, batch == "similar")
        seconds = [w.numel() / sample_rate for w in waves]
        batches[batch] = {
            "num_utterances": len(waves),
            "audio_seconds": sum(seconds),
            "utterance_seconds": (min(seconds), max(seconds)),
            "searches": measure(model, waves, args.repeats),
        }
    sizes = ", ".join(
        f"{batch} {figures['num_utterances']} utterances ({figures['audio_seconds']:.1f} s of audio)"
        for batch, figures in batches.items()
    )
    processor = platform.processor() or platform.machine()
    if device.type == "cuda":
        processor = f"{torch.cuda.get_device_name(device)} ({processor} host)"
    print(f"{sizes}; {args.threads} threads, median of {args.repeats} runs, {processor}")
    print(markdown_table(batches))
    summary = {
        "model": args.model or "fresh digits-sized model, eos suppressed",
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_utterances": args.num_utterances,
        "threads": args.threads,
        "device": str(device),
        "repeats": args.repeats,
        "torch": torch.__version__,
        "batches": batches,
    }
    print("RESULT " + json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
