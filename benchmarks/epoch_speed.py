"""A real training epoch of the digits recipe against the same epoch with its input precomputed.

    python benchmarks/epoch_speed.py                           # 400 strings, 2 rounds, 2 threads
    python benchmarks/epoch_speed.py --strings 1000 --rounds 3 --num-workers 1
    python benchmarks/epoch_speed.py model.decoder.input_feeding=false   # Hydra overrides go last
    python benchmarks/epoch_speed.py --device cuda --num-workers 4       # on a GPU (bf16, as asr-train)

Both loops run the same training steps (forward with loss, backward, clip, AdamW step) on the same
batches. The *real* epoch is what `asr-train experiment=digits` does per epoch: lhotse's
duration-bucketed sampler, rendering each digit string from the cached FSDD clips, waveform
augmentation, collation, and log-mel features inside the model. The *precomputed* epoch first
materialises every batch's log-mel frames and targets, then times only the model on them
(`LAS.loss_from_features`). Their ratio is the cost of the input pipeline: issue 7 wants the real
epoch within 1.3x of the precomputed one. With `--device cuda` each batch is copied to the GPU
and the steps run under bf16 autocast when `trainer.bf16` is on (its default), as in `asr-train`;
the precomputed batches wait on the GPU.

After one untimed warm-up epoch, rounds alternate real and precomputed epochs (in turn first) so
that both see the same load on a shared machine; each figure is the median over rounds. Needs the
recipe's data (`asr-prepare digits --out exp/digits/data`, stage 1 of recipes/digits/run.sh).
Prints a table and `RESULT {json}`.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asr.cli.train import build_model, build_tokenizer
from asr.corpora import build_corpus
from asr.data import AugmentConfig, LoaderConfig, SpeechDataset, make_loader
from asr.distributed import DeviceError, resolve_device
from asr.optimizer import fused_where_possible
from asr.train import uses_bf16

REPOSITORY = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--strings", type=int, default=400, help="training strings per epoch (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="real + precomputed epochs each (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument(
        "--num-workers", type=int, default=None, help="DataLoader workers (default: the recipe's, 0)"
    )
    parser.add_argument(
        "--data-dir", default="exp/digits/data", help="asr-prepare's output (default: %(default)s)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml experiment=digits")
    return parser


def load_setup(args):
    """The digits recipe's corpus, tokenizer, model and loader settings, as asr-train builds them."""
    overrides = ["experiment=digits", f"data.dir={args.data_dir}", *args.overrides]
    with initialize_config_dir(config_dir=str(REPOSITORY / "conf"), version_base="1.3"):
        config = compose(config_name="train", overrides=overrides)
    OmegaConf.resolve(config)
    corpus_options = {**config.data.corpus, "strings_per_epoch": args.strings}
    corpus = build_corpus(seed=config.seed, **corpus_options)
    tokenizer = build_tokenizer(corpus.texts(), **config.tokenizer)
    torch.manual_seed(config.seed)
    model = build_model(config.model, tokenizer.vocab_size).train()
    loader_config = LoaderConfig(**config.data.loader)
    if args.num_workers is not None:
        loader_config = LoaderConfig(**{**config.data.loader, "num_workers": args.num_workers})
    augment = AugmentConfig(**config.data.augment) if config.data.augment else None
    dataset = SpeechDataset(tokenizer, model.config.features.sample_rate, augment, config.seed, corpus.cache)
    return config, corpus, model, dataset, loader_config


def train_step(model, optimizer, loss_fn, grad_clip: float, autocast: bool) -> int:
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        output = loss_fn()
    output.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return 1


def finished(model) -> float:
    """time.perf_counter() once the model's device has done all the work queued so far."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def real_epoch(model, optimizer, loader, grad_clip: float, autocast: bool) -> tuple[float, int]:
    """Seconds and utterances of one epoch straight from the loader (audio, augmentation, features)."""
    device = next(model.parameters()).device
    start, utterances = finished(model), 0
    for batch in loader:
        batch = batch.to(device)
        train_step(
            model,
            optimizer,
            lambda b=batch: model(b.waves, b.wave_lens, b.targets, b.target_lens),
            grad_clip,
            autocast,
        )
        utterances += len(batch)
    return finished(model) - start, utterances


def precompute(model, loader) -> list[tuple[torch.Tensor, ...]]:
    """Every batch of the epoch as (log-mel frames, frame counts, targets, target lengths), on the
    model's device."""
    device = next(model.parameters()).device
    batches = []
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(device)
            batches.append(
                (*model.compute_features(batch.waves, batch.wave_lens), batch.targets, batch.target_lens)
            )
    return batches


def precomputed_epoch(model, optimizer, batches, grad_clip: float, autocast: bool) -> tuple[float, int]:
    start = finished(model)
    for batch in batches:
        train_step(model, optimizer, lambda b=batch: model.loss_from_features(*b), grad_clip, autocast)
    return finished(model) - start, sum(len(b[0]) for b in batches)


def main():
    args = build_parser().parse_args()
    try:
        device = resolve_device(args.device)
    except DeviceError as error:
        print(f"--device {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    config, corpus, model, dataset, loader_config = load_setup(args)
    model.to(device)
    autocast = uses_bf16(config.trainer.bf16, config.trainer.bf16_cpu, device)  # as asr-train
    optimizer = fused_where_possible(
        torch.optim.AdamW, model.parameters(), lr=config.optimizer.lr
    )  # as asr-train
    grad_clip = config.trainer.grad_clip

    def loader():  # epoch 0's strings and batches every time: both loops train on the same batches
        return make_loader(corpus.train_cuts(0), dataset, loader_config, config.seed)

    started = time.perf_counter()
    batches = precompute(model, loader())
    frames = sum(int(b[1].sum()) for b in batches)
    padded = sum(b[0].shape[0] * b[0].shape[1] for b in batches)
    print(
        f"{len(batches)} batches, {sum(len(b[0]) for b in batches)} utterances, "
        f"{frames / 100 / 60:.1f} min of audio, {100 * (1 - frames / padded):.0f}% padding "
        f"(precomputed in {time.perf_counter() - started:.1f} s)"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {loader_config.num_workers} workers, "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
        f"{', bf16 autocast' if autocast else ''}"
    )
    # warm-up: oneDNN builds its LSTM kernels for every new batch shape (tens of ms each), and the
    # audio cache renders each speed-perturbed clip once; a real run pays both in its first epoch only
    precomputed_epoch(model, optimizer, batches, grad_clip, autocast)
    real, fast = [], []
    for round_index in range(args.rounds):
        for name in ("real", "precomputed") if round_index % 2 == 0 else ("precomputed", "real"):
            if name == "real":
                seconds, utterances = real_epoch(model, optimizer, loader(), grad_clip, autocast)
                real.append(utterances / seconds)
            else:
                seconds, utterances = precomputed_epoch(model, optimizer, batches, grad_clip, autocast)
                fast.append(utterances / seconds)
        print(f"round {round_index + 1}: real {real[-1]:.1f} utt/s, precomputed {fast[-1]:.1f} utt/s")
    report(statistics.median(real), statistics.median(fast), args)
    return 0


def report(real: float, fast: float, args) -> None:
    print("\n| epoch | utt/s |")
    print("|---|---|")
    print(f"| real: loader, augmentation, features | {real:.1f} |")
    print(f"| precomputed features | {fast:.1f} |")
    print(f"| ratio (precomputed / real) | {fast / real:.2f} |")
    result = dict(
        real_utt_per_s=round(real, 2),
        precomputed_utt_per_s=round(fast, 2),
        ratio=round(fast / real, 3),
        strings=args.strings,
        rounds=args.rounds,
        threads=args.threads,
        overrides=args.overrides,
        machine=platform.processor() or platform.machine(),
        device=args.device,
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
