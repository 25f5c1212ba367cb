"""The training loop: plain PyTorch, read top to bottom.

    fit():  normalisation statistics -> for each epoch: train_one_epoch -> validate -> checkpoints

Each step: forward (bf16 autocast on CUDA; features and CTC stay fp32 inside the model),
backward, clip, optimiser step, scheduler step, `zero_grad(set_to_none=True)`.
"""

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from asr.checkpoint import load_checkpoint, model_state, save_checkpoint
from asr.data import AugmentConfig, LoaderConfig, SpeechDataset, make_loader
from asr.decoding import DecodingOptions, decode
from asr.features import FeatureStatistics
from asr.metrics import word_errors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerOptions:
    exp_dir: str  # checkpoints, logs and TensorBoard events go here
    max_epochs: int = 30
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    grad_clip: float = 5.0  # maximum global gradient norm
    bf16: bool = True  # bf16 autocast on CUDA; CPU always trains in fp32
    resume: bool = False  # continue from exp_dir/last.pt when it exists
    log_every: int = 50  # steps between console/TensorBoard loss lines
    stats_batches: int = 30  # training batches that estimate the feature normalisation statistics
    max_nonfinite_steps: int = 20  # abort after this many non-finite losses or gradients in a row


@dataclass(frozen=True)
class OptimizerOptions:
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 500  # linear warmup from 0
    final_lr_ratio: float = 0.02  # cosine decay to lr * final_lr_ratio at the last step


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def warmup_cosine(warmup_steps: int, total_steps: int, final_ratio: float):
    """LambdaLR factor: linear warmup, then cosine decay that ends exactly at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def count_batches(cuts, config: LoaderConfig, seed: int) -> int:
    """Batches the sampler will yield for `cuts` (runs the sampler only, loads no audio)."""
    return sum(1 for _ in make_loader(cuts, None, config, seed).sampler)


@torch.no_grad()
def fit_normalization(model, loader, device, num_batches: int) -> None:
    """Global mean/variance of the raw log-mel features over a sample of training batches."""
    statistics = FeatureStatistics()
    for index, batch in enumerate(loader):
        if index == num_batches:
            break
        batch = batch.to(device)
        statistics.update(*model.compute_features(batch.waves, batch.wave_lens))
    model.normalization.set_statistics(*(t.to(device) for t in statistics.mean_and_std()))
    log.info("normalisation statistics from %d frames", statistics.count)


def train_one_epoch(
    model,
    optimizer,
    scheduler,
    loader,
    device,
    options: TrainerOptions,
    epoch: int,
    writer: SummaryWriter,
    step: int,
) -> tuple[int, dict]:
    """One pass over `loader`; returns the new global step and the epoch's averages."""
    model.train()
    autocast = device.type == "cuda" and options.bf16
    totals = dict(loss=0.0, attention=0.0, ctc=0.0, tokens=0, utterances=0, skipped=0, nonfinite=0)
    nonfinite_in_a_row = 0
    started = time.perf_counter()
    # a log file gets a progress line every 30 s instead of a bar redrawn many times a second
    progress = tqdm(
        loader,
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    for batch in progress:
        totals["skipped"] += batch.num_skipped
        if not len(batch):
            continue
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            output = model(batch.waves, batch.wave_lens, batch.targets, batch.target_lens)
        output.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
        if not (torch.isfinite(output.loss) and torch.isfinite(grad_norm)):
            # skip the update: one bad batch must not poison the weights
            optimizer.zero_grad(set_to_none=True)
            totals["nonfinite"] += 1
            nonfinite_in_a_row += 1
            log.warning(
                "epoch %d step %d: non-finite loss or gradient (%s), update skipped (batch %s...)",
                epoch,
                step,
                float(output.loss),
                batch.ids[0],
            )
            if nonfinite_in_a_row >= options.max_nonfinite_steps:
                raise FloatingPointError(
                    f"{nonfinite_in_a_row} non-finite steps in a row; stopping. Lower the "
                    "learning rate or check the data; the last good checkpoint is kept."
                )
            continue
        nonfinite_in_a_row = 0
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens = int(output.num_tokens)
        totals["loss"] += float(output.loss.detach()) * tokens
        totals["attention"] += float(output.attention_loss) * tokens
        totals["ctc"] += float(output.ctc_loss) * tokens
        totals["tokens"] += tokens
        totals["utterances"] += len(batch)
        progress.set_postfix(
            loss=f"{float(output.loss):.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False
        )
        if step % options.log_every == 0:
            writer.add_scalar("train/loss", float(output.loss), step)
            writer.add_scalar("train/attention_loss", float(output.attention_loss), step)
            writer.add_scalar("train/ctc_loss", float(output.ctc_loss), step)
            writer.add_scalar("train/grad_norm", float(grad_norm), step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
    seconds = time.perf_counter() - started
    count = max(1, totals["tokens"])
    summary = dict(
        loss=totals["loss"] / count,
        attention_loss=totals["attention"] / count,
        ctc_loss=totals["ctc"] / count,
        utterances=totals["utterances"],
        skipped=totals["skipped"],
        nonfinite=totals["nonfinite"],
        seconds=seconds,
        utterances_per_second=totals["utterances"] / max(seconds, 1e-9),
    )
    return step, summary


@torch.no_grad()
def validate(model, tokenizer, loader, device, decoding: DecodingOptions) -> dict:
    """Teacher-forced dev loss and free-running dev WER (what a user would get from this decoding)."""
    model.eval()
    loss_sum, tokens, references, hypotheses = 0.0, 0, [], []
    for batch in loader:
        if not len(batch):
            continue
        batch = batch.to(device)
        output = model(batch.waves, batch.wave_lens, batch.targets, batch.target_lens)
        loss_sum += float(output.loss) * int(output.num_tokens)
        tokens += int(output.num_tokens)
        for hypothesis, reference in zip(
            decode(model, batch.waves, batch.wave_lens, decoding), batch.texts, strict=True
        ):
            hypotheses.append(tokenizer.decode(hypothesis.tokens))
            references.append(reference)
    errors = word_errors(references, hypotheses)
    return dict(loss=loss_sum / max(1, tokens), wer=errors.error_rate, utterances=len(references))


def training_state(
    model, tokenizer, optimizer, scheduler, epoch: int, step: int, best: dict, max_utterance_seconds: float
) -> dict:
    """Everything `resume` needs, on top of what inference needs."""
    return {
        **model_state(model, tokenizer),
        "max_utterance_seconds": max_utterance_seconds,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": step,
        "best": best,
        "torch_rng": torch.get_rng_state(),
    }


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
) -> dict:
    """Train `model` on `corpus`; keeps exp_dir/last.pt (resumable) and exp_dir/best.pt (lowest dev WER)."""
    exp_dir = Path(options.exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(options.device)
    model.to(device)
    sample_rate = model.config.features.sample_rate
    train_data = SpeechDataset(tokenizer, sample_rate, augment, seed=seed, cache=corpus.cache)
    dev_loader = make_loader(
        corpus.dev_cuts(),
        SpeechDataset(tokenizer, sample_rate),
        LoaderConfig(loader_config.max_duration, shuffle=False),
    )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=optimizer_options.lr,
        betas=optimizer_options.betas,
        weight_decay=optimizer_options.weight_decay,
    )
    steps_per_epoch = count_batches(corpus.train_cuts(0), loader_config, seed)
    total_steps = steps_per_epoch * options.max_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        warmup_cosine(optimizer_options.warmup_steps, total_steps, optimizer_options.final_lr_ratio),
    )
    log.info(
        "%s parameters on %s; about %d steps per epoch, %d in all",
        f"{sum(p.numel() for p in model.parameters()):,}",
        device,
        steps_per_epoch,
        total_steps,
    )

    start_epoch, step, best = 0, 0, {"wer": math.inf, "loss": math.inf, "epoch": -1}
    last_path = exp_dir / "last.pt"
    if options.resume and last_path.exists():
        state = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, step, best = state["epoch"] + 1, state["step"], state["best"]
        log.info("resumed from %s after epoch %d (step %d)", last_path, state["epoch"], step)
    else:
        first = make_loader(corpus.train_cuts(0), train_data, loader_config, seed)
        fit_normalization(model, first, device, options.stats_batches)

    writer = SummaryWriter(str(exp_dir / "tensorboard"), purge_step=step or None)
    for epoch in range(start_epoch, options.max_epochs):
        loader = make_loader(corpus.train_cuts(epoch), train_data, loader_config, seed=seed + epoch)
        step, train_summary = train_one_epoch(
            model, optimizer, scheduler, loader, device, options, epoch, writer, step
        )
        dev = validate(model, tokenizer, dev_loader, device, decoding)
        for name, value in (
            ("dev/loss", dev["loss"]),
            ("dev/wer", dev["wer"]),
            ("train/epoch_loss", train_summary["loss"]),
        ):
            writer.add_scalar(name, value, step)
        log.info(
            "epoch %d: train loss %.3f (att %.3f, ctc %.3f), %.0f utt/s, %d skipped | dev loss %.3f, "
            "WER %.2f%%",
            epoch,
            train_summary["loss"],
            train_summary["attention_loss"],
            train_summary["ctc_loss"],
            train_summary["utterances_per_second"],
            train_summary["skipped"],
            dev["loss"],
            100 * dev["wer"],
        )
        if (dev["wer"], dev["loss"]) < (best["wer"], best["loss"]):
            best = {"wer": dev["wer"], "loss": dev["loss"], "epoch": epoch}
            save_checkpoint(
                {
                    **model_state(model, tokenizer),
                    "max_utterance_seconds": corpus.max_utterance_seconds,
                    "dev": best,
                },
                exp_dir / "best.pt",
            )
        save_checkpoint(
            training_state(
                model, tokenizer, optimizer, scheduler, epoch, step, best, corpus.max_utterance_seconds
            ),
            last_path,
        )
    writer.close()
    log.info(
        "best dev WER %.2f%% at epoch %d; model in %s", 100 * best["wer"], best["epoch"], exp_dir / "best.pt"
    )
    return best
