"""asr-train-lm: its config, data handling, training, resuming, and fusion in asr-transcribe."""

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asr.checkpoint import model_state, save_checkpoint
from asr.cli.train_lm import (
    LanguageModelTrainerOptions,
    collate,
    make_batches,
    read_sentences,
    run,
    split_dev,
    train_one_epoch,
)
from asr.cli.transcribe import main as transcribe
from asr.lm import LanguageModelConfig, load_language_model
from asr.model import LAS
from asr.tokenizer import CharTokenizer
from asr.train import OptimizerOptions
from tests.conftest import REPO, tiny_config

CONF = REPO / "conf"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# a tiny LM and a few updates: every test here runs in a second or two
TINY = [
    "lm.embedding_dim=8",
    "lm.hidden_dim=16",
    "lm.num_layers=1",
    "lm.dropout=0.1",
    "trainer.max_epochs=2",
    "trainer.batch_tokens=400",
    "trainer.num_threads=1",
    "optimizer.warmup_steps=2",
    "optimizer.lr=1.0e-2",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train_lm", overrides=overrides)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """200 lines of digit words, with punctuation and blank lines that normalisation removes."""
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) for _ in range(200)]
    path = tmp_path_factory.mktemp("text") / "digits.txt"
    path.write_text(
        "\n".join(f"{line.title()}." if i % 7 == 0 else line for i, line in enumerate(lines)) + "\n\n"
    )
    return path


@pytest.fixture(scope="module")
def acoustic_checkpoint(tmp_path_factory) -> Path:
    """A random tiny LAS whose tokenizer knows the digit words; a strong eos bias keeps it short."""
    tokenizer = CharTokenizer.build(WORDS)
    torch.manual_seed(0)
    model = LAS(tiny_config(vocab_size=tokenizer.vocab_size))
    with torch.no_grad():
        model.decoder.output.bias[tokenizer.eos_id] += 3.0
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(model_state(model, tokenizer), path)
    return path


def test_the_config_composes_and_every_key_maps_onto_an_argument():
    config = _compose(["text=corpus.txt", "exp_dir=exp/lm"])
    assert config.tokenizer_from is None and config.tokenizer.type == "char"
    LanguageModelConfig(vocab_size=10, **config.lm)
    trainer = {k: v for k, v in config.trainer.items() if k != "num_threads"}
    LanguageModelTrainerOptions(exp_dir=config.exp_dir, **trainer)
    optimizer = OmegaConf.to_container(config.optimizer)
    OptimizerOptions(**{**optimizer, "betas": tuple(optimizer["betas"])})
    keys = {"lm", "text", "exp_dir", "dev_text", "dev_fraction", "seed", "tokenizer_from", "tokenizer"}
    assert set(config) == keys | {"trainer", "optimizer"}


def test_sentences_are_normalised_and_split_into_disjoint_train_and_dev(corpus):
    sentences = read_sentences(corpus)
    assert len(sentences) == 200 and sentences[0] == sentences[0].lower() and "." not in sentences[0]
    train, dev = split_dev(sentences, 0.05, seed=3)
    assert len(dev) == 10 and sorted(train + dev) == sorted(sentences)
    assert split_dev(sentences, 0.05, seed=3) == (train, dev)
    with pytest.raises(ValueError, match="at least 2 sentences"):
        split_dev(["one"], 0.5, seed=0)


def test_batches_hold_every_sentence_once_within_the_token_budget():
    sequences = [[2] * length for length in [5, 1, 9, 3, 3, 7, 2, 30]]
    for rng in (None, random.Random(1)):
        batches = make_batches(sequences, batch_tokens=20, rng=rng)
        assert sorted(i for batch in batches for i in batch) == list(range(len(sequences)))
        for batch in batches:  # padded tokens, eos included; a too-long sentence goes alone
            longest = max(len(sequences[i]) + 1 for i in batch)
            assert len(batch) * longest <= 20 or len(batch) == 1
    tokens_in, tokens_out, lengths = collate([[2, 3], [4]], [0, 1], sos_eos_id=9)
    assert tokens_in.tolist() == [[9, 2, 3], [9, 4, 0]]
    assert tokens_out.tolist() == [[2, 3, 9], [4, 9, -100]]
    assert lengths.tolist() == [3, 2]


def test_training_lowers_the_dev_perplexity_and_keeps_the_acoustic_tokenizer(
    tmp_path, corpus, acoustic_checkpoint
):
    config = _compose(
        [f"text={corpus}", f"exp_dir={tmp_path}", f"tokenizer_from={acoustic_checkpoint}", *TINY]
    )
    config.trainer.max_epochs = 8
    best = run(config)
    lm, tokenizer = load_language_model(tmp_path / "best.pt")
    assert tokenizer.to_dict() == CharTokenizer.build(WORDS).to_dict()
    # a uniform guess over the 17 tokens that can follow is perplexity 17; spelling is learnt fast
    assert best["perplexity"] < 8
    assert torch.load(tmp_path / "best.pt", weights_only=True)["dev"] == best
    assert lm.config.vocab_size == tokenizer.vocab_size


def test_resuming_after_an_interruption_gives_the_same_model_as_training_straight_through(
    tmp_path, corpus, monkeypatch
):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(_compose([f"text={corpus}", f"exp_dir={straight}", *TINY]))
    epochs = []

    def interrupted_in_the_second_epoch(*args, **kwargs):
        epochs.append(len(epochs))
        if len(epochs) == 2:
            raise KeyboardInterrupt
        return train_one_epoch(*args, **kwargs)

    monkeypatch.setattr("asr.cli.train_lm.train_one_epoch", interrupted_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(_compose([f"text={corpus}", f"exp_dir={resumed}", *TINY]))
    monkeypatch.undo()
    run(_compose([f"text={corpus}", f"exp_dir={resumed}", *TINY, "trainer.resume=true"]))
    first = torch.load(straight / "last.pt", weights_only=True)
    second = torch.load(resumed / "last.pt", weights_only=True)
    assert first["step"] == second["step"] and first["best"] == second["best"]
    for name, tensor in first["model"].items():
        torch.testing.assert_close(second["model"][name], tensor, rtol=0, atol=0)


def _speechlike(path: Path, seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    time_axis = np.arange(round(seconds * 8000)) / 8000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * time_axis)
    soundfile.write(path, (0.3 * envelope * rng.standard_normal(time_axis.size)).astype(np.float32), 8000)
    return path


def test_an_lm_trained_by_the_command_fuses_in_asr_transcribe(tmp_path, capsys, corpus, acoustic_checkpoint):
    """End to end: the installed command (run from another folder, so it must find its configs)
    trains an LM on the text; asr-transcribe fuses it, and with weight 0 it changes nothing."""
    command = Path(sys.executable).with_name("asr-train-lm")
    arguments = [
        f"text={corpus}",
        f"exp_dir={tmp_path / 'lm'}",
        f"tokenizer_from={acoustic_checkpoint}",
        *TINY,
    ]
    environment = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        [command, *arguments], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "lm" / "best.pt").is_file() and (tmp_path / "lm" / "train_lm.log").is_file()
    audio = [str(_speechlike(tmp_path / f"utterance{i}.wav", 0.6 + 0.4 * i, seed=i)) for i in range(3)]
    common = ["--model", str(acoustic_checkpoint), "--beam-size", "3", "--ctc-weight", "0.3", *audio]
    outputs = {}
    for name, extra in [("plain", []), ("zero", ["--lm-weight", "0"]), ("fused", ["--lm-weight", "2"])]:
        lm_arguments = ["--lm", str(tmp_path / "lm" / "best.pt"), *extra] if extra else []
        status = transcribe([*lm_arguments, *common])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        outputs[name] = captured.out
    assert outputs["zero"] == outputs["plain"]
    assert [line.split("\t")[0] for line in outputs["fused"].splitlines()] == [
        "utterance0",
        "utterance1",
        "utterance2",
    ]
    assert outputs["fused"] != outputs["plain"]  # a random acoustic model: the LM has its say


def test_asr_transcribe_refuses_an_lm_with_another_vocabulary(tmp_path, capsys, acoustic_checkpoint):
    text = tmp_path / "pangrams.txt"
    text.write_text("the quick brown fox\njumps over the lazy dog\n")
    run(_compose([f"text={text}", f"exp_dir={tmp_path}", *TINY, "trainer.max_steps=1"]))
    wave = _speechlike(tmp_path / "a.wav", 0.5, seed=0)
    status = transcribe(["--model", str(acoustic_checkpoint), "--lm", str(tmp_path / "best.pt"), str(wave)])
    assert status == 2 and "tokenizer differs" in capsys.readouterr().err
