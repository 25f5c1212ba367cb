"""The training loop: plain PyTorch, read top to bottom.

    fit():  set up -> normalisation statistics, or resume from last.pt -> for each epoch:
            train_one_epoch (last.pt every `checkpoint_every_steps`) -> validate -> best.pt, last.pt

Each step: forward (bf16 autocast on CUDA; features and CTC stay fp32 inside the model, so no
gradient scaler is needed), backward, clip, optimiser step, scheduler step, `zero_grad`.

Under torchrun every process runs this same loop on its shard of the batches; DDP averages the
gradients, so the ranks stay identical, and rank 0 alone writes checkpoints, TensorBoard and logs.

No work is lost: last.pt holds the weights, optimiser, schedule, the position in the epoch and every
rank's random generators, so a run killed at any moment and resumed (`resume=True`) ends with the
same weights, bit for bit on CPU, as one never interrupted. SIGTERM or SIGINT writes last.pt and
raises `Stopped`.
"""

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from asr import distributed
from asr.checkpoint import (
    Progress,
    check_finite,
    check_writable,
    load_training_state,
    model_state,
    new_epoch_totals,
    random_states,
    save_checkpoint,
    save_epoch_checkpoint,
    training_state,
)
from asr.data import AugmentConfig, LoaderConfig, SpeechDataset, make_loader
from asr.decoding import DecodingOptions, decode
from asr.diagnostics import attention_diagnostics, attention_figure, summarise
from asr.distributed import Process, StopSignals, any_rank, resolve_device, sum_over_ranks
from asr.features import FeatureStatistics
from asr.metrics import word_errors
from asr.model.recurrence import cpu_has_fast_bf16
from asr.optimizer import OptimizerOptions, warmup_cosine

log = logging.getLogger(__name__)


class TrainingError(Exception):
    """Training cannot go on; the message says why and what to do (the CLI prints it alone)."""


class Stopped(Exception):
    """A signal (SIGTERM from a scheduler, SIGINT from a user) stopped training after a checkpoint."""

    def __init__(self, signal_number: int, signal_name: str, checkpoint: Path):
        super().__init__(f"stopped by {signal_name}; resume from {checkpoint} with trainer.resume=true")
        self.signal_number = signal_number


@dataclass(frozen=True)
class TrainerOptions:
    exp_dir: str  # checkpoints, logs and TensorBoard events go here
    max_epochs: int = 30
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    grad_clip: float = 5.0  # maximum global gradient norm
    bf16: bool = True  # bf16 autocast on CUDA
    bf16_cpu: bool = False  # bf16 autocast on CPU: fast with AVX512-BF16 or AMX, slower without (warned)
    resume: bool = False  # continue from exp_dir/last.pt when it exists
    checkpoint_every_steps: int = 200  # also write last.pt every this many batches; 0: epoch ends only
    log_every: int = 50  # steps between console/TensorBoard loss lines
    stats_batches: int = 30  # training batches that estimate the feature normalisation statistics
    max_nonfinite_steps: int = 20  # abort after this many non-finite losses or gradients in a row
    keep_epoch_checkpoints: int = 0  # models of the last this many epochs, epoch_<N>.pt, for asr-average


@dataclass
class Run:
    """What every step touches."""

    model: torch.nn.Module  # the LAS model: validation and checkpoints use it
    trained: torch.nn.Module  # what the steps call: the model, or DistributedDataParallel around it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    process: Process
    signals: StopSignals
    writer: SummaryWriter | None = None  # rank 0 only


def count_batches(cuts, config: LoaderConfig, seed: int, process: Process | None = None) -> int:
    """Batches the sampler will yield for `cuts` on this rank (runs the sampler only, loads no audio)."""
    process = process or Process()
    return sum(1 for _ in make_loader(cuts, None, config, seed, process.world_size, process.rank).sampler)


@torch.no_grad()
def fit_normalization(model, loader, device, num_batches: int) -> None:
    """Global mean/variance of the raw log-mel features over a sample of training batches.

    Every rank reads the same (unsharded) batches, so every rank gets the same statistics.
    """
    statistics = FeatureStatistics()
    for index, batch in enumerate(loader):
        if index == num_batches:
            break
        if len(batch):
            batch = batch.to(device)
            statistics.update(*model.compute_features(batch.waves, batch.wave_lens))
    if not statistics.count:
        raise TrainingError(
            f"no usable audio in the first {num_batches} training batches: every utterance was "
            "skipped (see the warnings above)"
        )
    model.normalization.set_statistics(*(t.to(device) for t in statistics.mean_and_std()))
    log.info("normalisation statistics from %d frames", statistics.count)


def uses_bf16(bf16: bool, bf16_cpu: bool, device: torch.device) -> bool:
    """Whether training steps on `device` run under bf16 autocast: `trainer.bf16` on CUDA,
    `trainer.bf16_cpu` on the CPU, each on its own (a recipe that keeps its GPU runs in fp32 can
    still take bf16 on a CPU with native bf16)."""
    if device.type == "cuda":
        return bf16
    return device.type == "cpu" and bf16_cpu


def forward_backward(model, batch, grad_clip: float, autocast: bool):
    """Loss and gradients of one batch; returns (LossOutput, gradient norm before clipping)."""
    with torch.autocast(batch.waves.device.type, dtype=torch.bfloat16, enabled=autocast):
        output = model(batch.waves, batch.wave_lens, batch.targets, batch.target_lens, batch.speakers)
    output.loss.backward()
    return output, torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)


def train_one_epoch(run: Run, loader, options: TrainerOptions, progress: Progress, save_last) -> bool:
    """Train on `loader` (already past `progress.batches_done`); False when a signal stopped it.

    `save_last()` writes last.pt; every rank calls it at the same batches.
    """
    run.trained.train()
    device = run.process.device
    autocast = uses_bf16(options.bf16, options.bf16_cpu, device)
    totals, started = progress.totals, time.perf_counter()
    # a log file gets a progress line every 30 s instead of a bar redrawn many times a second
    bar = tqdm(
        loader,
        desc=f"epoch {progress.epoch}",
        unit="batch",
        initial=progress.batches_done,
        leave=False,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        disable=not run.process.is_main,
    )
    for batch in bar:
        # one rank with an empty batch (all its audio unreadable) makes every rank skip the step
        empty, stopping = any_rank([not len(batch), run.signals.received is not None], run.process)
        if stopping:
            totals["seconds"] += time.perf_counter() - started
            return False  # this batch is not consumed: a resumed run starts with it
        progress.batches_done += 1
        totals["skipped"] += batch.num_skipped
        if empty:
            continue
        batch = batch.to(device)
        output, grad_norm = forward_backward(run.trained, batch, options.grad_clip, autocast)
        # DDP makes grad_norm equal on all ranks, but not the loss; all ranks must agree to skip
        (nonfinite,) = any_rank(
            [not (torch.isfinite(output.loss) and torch.isfinite(grad_norm))], run.process
        )
        if nonfinite:  # skip the update: one bad batch must not poison the weights
            run.optimizer.zero_grad(set_to_none=True)
            _count_nonfinite(progress, options, float(output.loss.detach()), batch.ids[0])
        else:
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.nonfinite_in_a_row = 0
            _add_to_totals(totals, output, len(batch))
            lr = run.scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{float(output.loss.detach()):.3f}", lr=f"{lr:.2e}", refresh=False)
            if progress.step % options.log_every == 0:
                add_scalars(
                    run.writer,
                    progress.step,
                    {
                        "train/loss": output.loss.detach(),
                        "train/attention_loss": output.attention_loss,
                        "train/ctc_loss": output.ctc_loss,
                        "train/speaker_loss": output.speaker_loss,
                        "train/grad_norm": grad_norm,
                        "train/lr": lr,
                    },
                )
        if options.checkpoint_every_steps and progress.batches_done % options.checkpoint_every_steps == 0:
            save_last()
    totals["seconds"] += time.perf_counter() - started
    return True


def _count_nonfinite(progress: Progress, options: TrainerOptions, loss: float, first_id: str) -> None:
    progress.totals["nonfinite"] += 1
    progress.nonfinite_in_a_row += 1
    log.warning(
        "epoch %d step %d: non-finite loss or gradient (loss %s), update skipped (batch %s...)",
        progress.epoch,
        progress.step,
        loss,
        first_id,
    )
    if progress.nonfinite_in_a_row >= options.max_nonfinite_steps:
        raise TrainingError(
            f"{progress.nonfinite_in_a_row} non-finite steps in a row (trainer.max_nonfinite_steps); "
            "stopping. Lower the learning rate or check the data; last.pt holds the last good weights."
        )


def _add_to_totals(totals: dict, output, num_utterances: int) -> None:
    tokens = int(output.num_tokens)
    totals["loss"] += float(output.loss.detach()) * tokens
    totals["attention"] += float(output.attention_loss) * tokens
    totals["ctc"] += float(output.ctc_loss) * tokens
    totals["speaker"] += float(output.speaker_loss) * tokens
    totals["tokens"] += tokens
    totals["utterances"] += num_utterances


def epoch_summary(totals: dict, process: Process) -> dict:
    """The epoch's averages over all ranks."""
    keys = ("loss", "attention", "ctc", "speaker", "tokens", "utterances", "skipped")
    sums = dict(zip(keys, sum_over_ranks([float(totals[k]) for k in keys], process), strict=True))
    count = max(1.0, sums["tokens"])
    return dict(
        loss=sums["loss"] / count,
        attention_loss=sums["attention"] / count,
        ctc_loss=sums["ctc"] / count,
        speaker_loss=sums["speaker"] / count,
        utterances=int(sums["utterances"]),
        skipped=int(sums["skipped"]),
        nonfinite=totals["nonfinite"],  # decided together, so the same on every rank
        utterances_per_second=sums["utterances"] / max(totals["seconds"], 1e-9),
    )


def report_epoch(epoch: int, train: dict, dev: dict, writer: SummaryWriter | None, step: int) -> None:
    speaker = f", speaker {train['speaker_loss']:.3f}" if train["speaker_loss"] else ""
    log.info(
        "epoch %d: train loss %.3f (att %.3f, ctc %.3f%s), %.0f utt/s, %d skipped, %d non-finite "
        "| dev loss %.3f, WER %.2f%% (%d utterances)",
        epoch,
        train["loss"],
        train["attention_loss"],
        train["ctc_loss"],
        speaker,
        train["utterances_per_second"],
        train["skipped"],
        train["nonfinite"],
        dev["loss"],
        100 * dev["wer"],
        dev["utterances"],
    )
    add_scalars(
        writer, step, {"dev/loss": dev["loss"], "dev/wer": dev["wer"], "train/epoch_loss": train["loss"]}
    )
    add_scalars(writer, step, {f"dev_attention/{key}": value for key, value in dev["attention"].items()})
    if writer is not None and dev["example"] is not None:
        weights, labels, title = dev["example"]
        writer.add_figure("dev/attention", attention_figure(weights, labels, title), step)


def add_scalars(writer: SummaryWriter | None, step: int, values: dict) -> None:
    """TensorBoard scalars; ranks other than 0 have no writer."""
    if writer is not None:
        for name, value in values.items():
            writer.add_scalar(name, float(value), step)


@torch.no_grad()
def validate(model, tokenizer, loader, process: Process, decoding: DecodingOptions, signals) -> dict | None:
    """Teacher-forced dev loss and free-running dev WER over every rank's shard; None when stopped."""
    model.eval()
    loss_sum, tokens, references, hypotheses, attention, example = 0.0, 0, [], [], [], None
    for batch in loader:
        if signals.received is not None:
            break  # no collectives in here, so a rank may leave early; the sums below tell the others
        if not len(batch):
            continue
        batch = batch.to(process.device)
        output = model(batch.waves, batch.wave_lens, batch.targets, batch.target_lens)
        loss_sum += float(output.loss) * int(output.num_tokens)
        tokens += int(output.num_tokens)
        for hypothesis, reference in zip(
            decode(model, batch.waves, batch.wave_lens, decoding), batch.texts, strict=True
        ):
            text = tokenizer.decode(hypothesis.tokens)
            hypotheses.append(text)
            references.append(reference)
            # alignment being learned, epoch by epoch (asr-evaluate reports the same diagnostics)
            attention.append(attention_diagnostics(hypothesis.attention, text, reference))
            if example is None:
                labels = [tokenizer.symbols[t] for t in hypothesis.tokens] + ["<eos>"]
                example = (hypothesis.attention, labels, f"REF: {reference}\nHYP: {text}")
    errors = word_errors(references, hypotheses)
    local = [loss_sum, tokens, errors.num_errors, errors.num_reference, len(references)]
    loss_sum, tokens, num_errors, num_reference, utterances, stopped = sum_over_ranks(
        [*local, float(signals.received is not None)], process
    )
    if stopped:
        return None
    return dict(
        loss=loss_sum / max(1, tokens),
        wer=num_errors / max(1, num_reference),
        utterances=int(utterances),
        attention=summarise(attention),  # this rank's dev share; rank 0 logs it
        example=example,
    )


def fit(
    model,
    tokenizer,
    corpus,
    options: TrainerOptions,
    optimizer_options: OptimizerOptions,
    loader_config: LoaderConfig,
    augment: AugmentConfig | None,
    decoding: DecodingOptions,
    seed: int = 0,
    process: Process | None = None,
) -> dict:
    """Train `model` on `corpus`; keeps exp_dir/last.pt (resumable) and exp_dir/best.pt (lowest dev WER).

    `process` is this process's place in a torchrun group (`asr.distributed.start`); None trains
    alone on `options.device`.
    """
    process = process or Process(device=resolve_device(options.device))
    exp_dir, last_path = Path(options.exp_dir), Path(options.exp_dir) / "last.pt"
    if process.is_main:
        check_writable(exp_dir)  # fail now, not after the first epoch
    if process.world_size > 1:  # different dropout and SpecAugment draws on every rank
        torch.manual_seed(seed * 1_000_003 + process.rank)
    model.to(process.device)
    sample_rate = model.config.features.sample_rate
    speaker_ids = None
    if model.speaker_adversary is not None:  # the classifier's outputs are the corpus's speakers in order
        speaker_ids = {name: index for index, name in enumerate(corpus.speakers())}
        if len(speaker_ids) != model.config.speaker_adversary.num_speakers:
            raise TrainingError(
                f"the model's speaker classifier has {model.config.speaker_adversary.num_speakers} "
                f"outputs but the training data has {len(speaker_ids)} speakers"
            )
    train_data = SpeechDataset(
        tokenizer, sample_rate, augment, seed=seed, cache=corpus.cache, speaker_ids=speaker_ids
    )
    dev_loader = make_loader(
        distributed.shard(corpus.dev_cuts(), process),
        SpeechDataset(tokenizer, sample_rate),
        LoaderConfig(loader_config.max_duration, num_buckets=loader_config.num_buckets, shuffle=False),
    )
    optimizer = optimizer_options.adamw(model.parameters())
    steps_per_epoch = count_batches(corpus.train_cuts(0), loader_config, seed, process)
    total_steps = steps_per_epoch * options.max_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        warmup_cosine(optimizer_options.warmup_steps, total_steps, optimizer_options.final_lr_ratio),
    )
    log.info(
        "%s parameters on %s x %d; about %d steps per epoch, %d in all",
        f"{sum(p.numel() for p in model.parameters()):,}",
        process.device,
        process.world_size,
        steps_per_epoch,
        total_steps,
    )
    if options.bf16_cpu and process.device.type == "cpu" and not cpu_has_fast_bf16():
        log.warning(
            "trainer.bf16_cpu=true on a CPU without native bf16 (AVX512-BF16 or AMX): oneDNN emulates "
            "it, and training is slower than in fp32 (3x measured on an AVX2 machine)"
        )
    run = Run(model, model, optimizer, scheduler, process, StopSignals())
    if options.resume and last_path.exists():
        progress = load_training_state(
            last_path, model, optimizer, scheduler, process.rank, process.world_size
        )
    else:
        progress = Progress()
        first = make_loader(corpus.train_cuts(0), train_data, loader_config, seed)
        fit_normalization(model, first, process.device, options.stats_batches)
    run.trained = distributed.wrap_model(model, process)  # after the weights are final on every rank
    if process.is_main:
        run.writer = SummaryWriter(str(exp_dir / "tensorboard"), purge_step=progress.step or None)
    extra = {"max_utterance_seconds": corpus.max_utterance_seconds}  # asr-transcribe's segment length

    def save_last() -> None:
        states = distributed.gather_to_all(random_states(), process)  # every rank's generators, in rank order
        if process.is_main:
            check_finite(model, last_path)
            save_checkpoint(
                training_state(model, tokenizer, optimizer, scheduler, progress, states, extra), last_path
            )

    with run.signals:
        for epoch in range(progress.epoch, options.max_epochs):
            progress.epoch = epoch
            loader = make_loader(
                corpus.train_cuts(epoch),
                train_data,
                loader_config,
                seed + epoch,
                process.world_size,
                process.rank,
                skip_batches=progress.batches_done,
            )
            finished = train_one_epoch(run, loader, options, progress, save_last)
            dev = validate(model, tokenizer, dev_loader, process, decoding, run.signals) if finished else None
            if dev is None:  # a signal: keep what this epoch has done so far
                save_last()
                raise Stopped(run.signals.received, run.signals.name, last_path)
            report_epoch(epoch, epoch_summary(progress.totals, process), dev, run.writer, progress.step)
            if (dev["wer"], dev["loss"]) < (progress.best["wer"], progress.best["loss"]):
                progress.best = {"wer": dev["wer"], "loss": dev["loss"], "epoch": epoch}
                if process.is_main:
                    check_finite(model, exp_dir / "best.pt")
                    best = {**model_state(model, tokenizer), **extra, "dev": progress.best}
                    save_checkpoint(best, exp_dir / "best.pt")
            if options.keep_epoch_checkpoints and process.is_main:  # what asr-average averages
                check_finite(model, exp_dir / f"epoch_{epoch}.pt")
                scores = {"wer": dev["wer"], "loss": dev["loss"], "epoch": epoch}
                state = {**model_state(model, tokenizer), **extra, "dev": scores}
                save_epoch_checkpoint(state, exp_dir, epoch, options.keep_epoch_checkpoints)
            progress.epoch, progress.batches_done, progress.totals = epoch + 1, 0, new_epoch_totals()
            save_last()
    if run.writer is not None:
        run.writer.close()
    best = progress.best
    log.info(
        "best dev WER %.2f%% at epoch %d; model in %s", 100 * best["wer"], best["epoch"], exp_dir / "best.pt"
    )
    return best
