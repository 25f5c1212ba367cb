"""`asr-train-lm`: the Hydra application that trains the LSTM language model for shallow fusion.

    asr-train-lm text=corpus.txt exp_dir=exp/lm tokenizer_from=exp/digits/best.pt
    asr-transcribe --model exp/digits/best.pt --lm exp/lm/best.pt --lm-weight 0.3 recordings/

The text has one sentence per line and goes through `asr.text.normalize_text`, like every
transcript. Fusion adds LM and acoustic-model log-probabilities token by token, so the LM must
use the acoustic model's tokenizer: `tokenizer_from=CKPT` takes it out of an `asr-train`
checkpoint; without it a tokenizer is built from the text. A dev split (`dev_text`, or the held-out
`dev_fraction` of the lines) gives the dev perplexity per token (eos included) after every epoch
and every `trainer.eval_every` updates; best.pt holds the LM with the lowest one, last.pt what
`trainer.resume=true` needs to continue after the last finished epoch.

The loop is plain PyTorch, read top to bottom in `fit_language_model`: forward, loss, backward,
clip, AdamW step, warmup/cosine schedule step, `zero_grad(set_to_none=True)`. The configs are
found like `asr-train`'s (`asr.cli.train.config_path`), from a checkout or an installed package.
"""

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from asr.checkpoint import load_checkpoint, save_checkpoint
from asr.cli.train import build_tokenizer, config_path
from asr.distributed import DeviceError, resolve_device
from asr.lm import (
    LanguageModelConfig,
    LSTMLanguageModel,
    language_model_state,
    read_language_model_checkpoint,
)
from asr.optimizer import OptimizerOptions, warmup_cosine
from asr.text import normalize_text
from asr.tokenizer import tokenizer_from_dict

log = logging.getLogger("asr.train_lm")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class LanguageModelTrainerOptions:
    exp_dir: str  # best.pt, last.pt and the log go here
    max_epochs: int = 10
    max_steps: int | None = None  # stop after this many updates; None: max_epochs decides
    batch_tokens: int = 4000  # padded tokens per batch: batch size x its longest sentence (+ eos)
    eval_every: int | None = None  # updates between dev evaluations; None: after every epoch only
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    grad_clip: float = 1.0  # maximum global gradient norm
    log_every: int = 100  # updates between loss lines in the log
    resume: bool = False  # continue from exp_dir/last.pt when it exists


def read_sentences(path: str | Path) -> list[str]:
    """The normalised, non-empty lines of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: text file not found")
    with open(path, encoding="utf-8") as file:
        sentences = [normalize_text(line) for line in file]
    return [sentence for sentence in sentences if sentence]


def split_dev(sentences: list[str], dev_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, dev): a random `dev_fraction` of the sentences (at least one) held out for dev."""
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be between 0 and 1, got {dev_fraction}")
    if len(sentences) < 2:
        raise ValueError(f"need at least 2 sentences to hold out a dev split, got {len(sentences)}")
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    num_dev = min(len(sentences) - 1, max(1, round(dev_fraction * len(sentences))))
    dev = set(order[:num_dev])
    return [s for i, s in enumerate(sentences) if i not in dev], [
        s for i, s in enumerate(sentences) if i in dev
    ]


def load_tokenizer(tokenizer_from: str | None, tokenizer_type: str, texts: list[str]):
    """The acoustic model's tokenizer from its checkpoint, or a new one built from `texts`."""
    if tokenizer_from:
        return tokenizer_from_dict(load_checkpoint(tokenizer_from)["tokenizer"])
    return build_tokenizer(texts, type=tokenizer_type)


def encode_sentences(sentences: list[str], tokenizer, name: str) -> list[list[int]]:
    """Token ids per sentence; logs how much of the text the tokenizer does not know."""
    encoded = [tokenizer.encode(sentence) for sentence in sentences]
    num_tokens = sum(len(ids) for ids in encoded)
    num_unknown = sum(ids.count(tokenizer.unk_id) for ids in encoded)
    if num_unknown:
        log.warning(
            "%s: %d of %d tokens (%.2f%%) are outside the tokenizer's vocabulary and become <unk>",
            name,
            num_unknown,
            num_tokens,
            100 * num_unknown / max(1, num_tokens),
        )
    return encoded


def make_batches(sequences: list[list[int]], batch_tokens: int, rng: random.Random | None) -> list[list[int]]:
    """Indices of sentences of similar length, at most `batch_tokens` padded tokens per batch
    (always at least one sentence); with `rng`, equal lengths and the batch order are shuffled."""
    keys = [rng.random() for _ in sequences] if rng is not None else [0.0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), keys[i]))
    batches: list[list[int]] = []
    for index in order:
        # the newest sentence is the longest of its batch: padded tokens = size x (its length + 1)
        if batches and (len(batches[-1]) + 1) * (len(sequences[index]) + 1) <= batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    if rng is not None:
        rng.shuffle(batches)
    return batches


def collate(sequences: list[list[int]], indices: list[int], sos_eos_id: int):
    """tokens_in [sos, y] (B, U+1) zero-padded, tokens_out [y, eos] (B, U+1) IGNORE_INDEX-padded,
    lengths (B,) = U + 1."""
    lengths = torch.tensor([len(sequences[i]) + 1 for i in indices])
    tokens_in = torch.zeros(len(indices), int(lengths.max()), dtype=torch.long)
    tokens_out = torch.full_like(tokens_in, IGNORE_INDEX)
    for row, index in enumerate(indices):
        tokens_in[row, : lengths[row]] = torch.tensor([sos_eos_id, *sequences[index]])
        tokens_out[row, : lengths[row]] = torch.tensor([*sequences[index], sos_eos_id])
    return tokens_in, tokens_out, lengths


def batch_loss(lm: LSTMLanguageModel, batch, device) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's tokens (eos included), and their number."""
    tokens_in, tokens_out, lengths = (tensor.to(device) for tensor in batch)
    logits = lm(tokens_in, lengths)  # (B, U+1, V)
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), tokens_out.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int(lengths.sum())


@torch.no_grad()
def evaluate(lm: LSTMLanguageModel, sequences: list[list[int]], batch_tokens: int, device) -> dict:
    """Dev loss per token (nats) and perplexity = exp(loss)."""
    lm.eval()
    loss_sum, num_tokens = 0.0, 0
    for indices in make_batches(sequences, batch_tokens, rng=None):
        loss, tokens = batch_loss(lm, collate(sequences, indices, lm.sos_eos_id), device)
        loss_sum, num_tokens = loss_sum + float(loss), num_tokens + tokens
    loss = loss_sum / max(1, num_tokens)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": num_tokens}


def train_one_epoch(
    lm: LSTMLanguageModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: list[list[int]],
    batches: list[list[int]],
    device: torch.device,
    options: LanguageModelTrainerOptions,
    step: int,
    evaluate_dev: Callable[[int], None],
) -> tuple[int, float]:
    """One pass over `batches` (lists of indices into `train`); returns the new update count and
    the epoch's training loss per token. Calls `evaluate_dev(step)` every `options.eval_every`
    updates and stops early at `options.max_steps`."""
    lm.train()
    loss_sum, token_count, started = 0.0, 0, time.perf_counter()
    for indices in batches:
        loss, num_tokens = batch_loss(lm, collate(train, indices, lm.sos_eos_id), device)
        (loss / num_tokens).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(lm.parameters(), options.grad_clip)
        if not (
            torch.isfinite(loss) and torch.isfinite(grad_norm)
        ):  # one bad batch must not poison the weights
            log.warning("update %d: non-finite loss or gradient, update skipped", step)
            optimizer.zero_grad(set_to_none=True)
            continue
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = float(loss.detach())
        loss_sum, token_count = loss_sum + loss_value, token_count + num_tokens
        if step % options.log_every == 0:
            lr = scheduler.get_last_lr()[0]
            log.info("update %d: train loss %.4f, lr %.2e", step, loss_value / num_tokens, lr)
        if options.eval_every and step % options.eval_every == 0:
            evaluate_dev(step)
            lm.train()
        if options.max_steps and step >= options.max_steps:
            break
    seconds = time.perf_counter() - started
    log.info("%d tokens in %.1f s (%.0f tokens/s)", token_count, seconds, token_count / max(seconds, 1e-9))
    return step, loss_sum / max(1, token_count)


def fit_language_model(
    lm: LSTMLanguageModel,
    tokenizer,
    train: list[list[int]],
    dev: list[list[int]],
    options: LanguageModelTrainerOptions,
    optimizer_options: OptimizerOptions,
    seed: int = 0,
) -> dict:
    """Train `lm` on token sequences; keeps exp_dir/best.pt (lowest dev perplexity) and last.pt."""
    exp_dir, device = Path(options.exp_dir), resolve_device(options.device)
    exp_dir.mkdir(parents=True, exist_ok=True)
    lm.to(device)
    optimizer = optimizer_options.adamw(lm.parameters())
    total_steps = len(make_batches(train, options.batch_tokens, rng=None)) * options.max_epochs
    total_steps = min(total_steps, options.max_steps or total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        warmup_cosine(optimizer_options.warmup_steps, total_steps, optimizer_options.final_lr_ratio),
    )
    num_parameters = sum(p.numel() for p in lm.parameters())
    log.info("%s parameters on %s; %d updates in all", f"{num_parameters:,}", device, total_steps)
    start_epoch, step, best = 0, 0, {"perplexity": math.inf, "loss": math.inf, "step": -1}
    last_path = exp_dir / "last.pt"
    if options.resume and last_path.exists():
        state = read_language_model_checkpoint(last_path)
        lm.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, step, best = state["epoch"] + 1, state["step"], state["best"]
        log.info("resumed from %s after epoch %d (update %d)", last_path, state["epoch"], step)

    def evaluate_dev(step: int) -> None:
        nonlocal best
        result = evaluate(lm, dev, options.batch_tokens, device)
        log.info("update %d: dev loss %.4f, perplexity %.3f", step, result["loss"], result["perplexity"])
        if result["perplexity"] < best["perplexity"]:
            best = {"perplexity": result["perplexity"], "loss": result["loss"], "step": step}
            save_checkpoint({**language_model_state(lm, tokenizer), "dev": best}, exp_dir / "best.pt")

    for epoch in range(start_epoch, options.max_epochs):
        if step >= total_steps:
            break
        batches = make_batches(train, options.batch_tokens, random.Random(seed + epoch))
        step, train_loss = train_one_epoch(
            lm, optimizer, scheduler, train, batches, device, options, step, evaluate_dev
        )
        log.info("epoch %d: train loss %.4f", epoch, train_loss)
        if not (options.eval_every and step % options.eval_every == 0):  # else just evaluated
            evaluate_dev(step)
        training_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step": step,
            "best": best,
            "torch_rng": torch.get_rng_state(),
        }
        save_checkpoint({**language_model_state(lm, tokenizer), **training_state}, last_path)
    log.info(
        "best dev perplexity %.3f at update %d; LM in %s",
        best["perplexity"],
        best["step"],
        exp_dir / "best.pt",
    )
    return best


def run(config: DictConfig) -> dict:
    """Build everything the config describes and train."""
    torch.manual_seed(config.seed)
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    sentences = read_sentences(config.text)
    if config.dev_text:
        train_texts, dev_texts = sentences, read_sentences(config.dev_text)
    else:
        train_texts, dev_texts = split_dev(sentences, config.dev_fraction, config.seed)
    tokenizer = load_tokenizer(config.tokenizer_from, config.tokenizer.type, train_texts)
    log.info(
        "%d training and %d dev sentences; a vocabulary of %d tokens%s",
        len(train_texts),
        len(dev_texts),
        tokenizer.vocab_size,
        f" from {config.tokenizer_from}"
        if config.tokenizer_from
        else " built from the text (fusion needs the acoustic model's: give tokenizer_from=CKPT)",
    )
    lm = LSTMLanguageModel(LanguageModelConfig(vocab_size=tokenizer.vocab_size, **config.lm))
    trainer = {k: v for k, v in config.trainer.items() if k != "num_threads"}
    optimizer = OmegaConf.to_container(config.optimizer)
    optimizer["betas"] = tuple(optimizer["betas"])
    return fit_language_model(
        lm,
        tokenizer,
        encode_sentences(train_texts, tokenizer, "train"),
        encode_sentences(dev_texts, tokenizer, "dev"),
        LanguageModelTrainerOptions(exp_dir=config.exp_dir, **trainer),
        OptimizerOptions(**optimizer),
        seed=config.seed,
    )


@hydra.main(version_base="1.3", config_path=config_path(), config_name="train_lm")
def main(config: DictConfig) -> None:
    log.info("config:\n%s", OmegaConf.to_yaml(config))
    try:
        run(config)
    except DeviceError as error:  # the message starts with the device's name
        log.error("trainer.device=%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
