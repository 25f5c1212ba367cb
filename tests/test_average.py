"""asr-average: the mean of known checkpoints, refusals that name the file, and per-epoch checkpoints."""

import dataclasses

import pytest
import torch

from asr.checkpoint import (
    CheckpointError,
    average_model_states,
    epoch_checkpoints,
    load_model,
    model_state,
    save_checkpoint,
    save_epoch_checkpoint,
)
from asr.cli.average import main
from asr.lm import LanguageModelConfig, LSTMLanguageModel, language_model_state
from asr.model import LAS
from asr.tokenizer import CharTokenizer
from tests.conftest import tiny_config

TOKENIZER = CharTokenizer.build(["one two three"])


def write_model(path, seed: int, config=None, tokenizer=TOKENIZER, **extra):
    torch.manual_seed(seed)
    model = LAS(config or tiny_config(vocab_size=tokenizer.vocab_size))
    model.normalization.set_statistics(torch.full((20,), float(seed)), torch.full((20,), 1.0 + seed))
    save_checkpoint({**model_state(model, tokenizer), **extra}, path)
    return model


def test_the_average_of_two_checkpoints_is_their_elementwise_mean(tmp_path, capsys):
    first = write_model(tmp_path / "a.pt", seed=1, max_utterance_seconds=3.0)
    second = write_model(tmp_path / "b.pt", seed=2, max_utterance_seconds=4.0, optimizer={}, dev={})
    counter = "decoder.counter"  # an integer buffer, as BatchNorm's num_batches_tracked is
    for path, value in ((tmp_path / "a.pt", 7), (tmp_path / "b.pt", 9)):
        state = torch.load(path, weights_only=True)
        state["model"][counter] = torch.tensor(value)
        save_checkpoint(state, path)
    out = tmp_path / "avg" / "avg.pt"
    assert main(["--out", str(out), str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]) == 0
    assert "averaged 2 checkpoint(s)" in capsys.readouterr().err
    averaged = torch.load(out, weights_only=True)
    for name, tensor in first.state_dict().items():
        expected = (tensor.double() + second.state_dict()[name].double()) / 2
        torch.testing.assert_close(averaged["model"][name], expected.to(tensor.dtype), rtol=0, atol=1e-7)
    assert torch.equal(averaged["model"][counter], torch.tensor(9))  # from the last, not averaged
    assert averaged["max_utterance_seconds"] == 4.0  # training metadata of the last
    assert "optimizer" not in averaged and "dev" not in averaged
    averaged["model"].pop(counter)
    save_checkpoint(averaged, out)
    model, tokenizer = load_model(out)  # what asr-transcribe does
    assert tokenizer.symbols == TOKENIZER.symbols
    assert torch.equal(model.normalization.mean, torch.full((20,), 1.5))


def test_checkpoints_of_other_models_or_tokenizers_are_refused_by_name(tmp_path, capsys):
    write_model(tmp_path / "a.pt", seed=1)
    wider = dataclasses.replace(
        tiny_config(vocab_size=TOKENIZER.vocab_size),
        decoder=dataclasses.replace(tiny_config().decoder, hidden_dim=24),
    )
    write_model(tmp_path / "wide.pt", seed=2, config=wider)
    other = CharTokenizer.build(["four five six"])
    write_model(
        tmp_path / "other.pt", seed=3, config=tiny_config(vocab_size=TOKENIZER.vocab_size), tokenizer=other
    )
    out = tmp_path / "avg.pt"
    assert main(["--out", str(out), str(tmp_path / "a.pt"), str(tmp_path / "wide.pt")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "wide.pt: model config differs" in error
    assert "a.pt: decoder.hidden_dim=24, not 16" in error
    with pytest.raises(CheckpointError, match=r"other\.pt: tokenizer differs"):
        average_model_states([tmp_path / "a.pt", tmp_path / "other.pt"])
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint not found"):
        average_model_states([tmp_path / "a.pt", tmp_path / "missing.pt"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable checkpoint"):
        average_model_states([tmp_path / "a.pt", tmp_path / "junk.pt"])
    lm = LSTMLanguageModel(LanguageModelConfig(vocab_size=TOKENIZER.vocab_size))
    torch.save(language_model_state(lm, TOKENIZER), tmp_path / "lm.pt")
    with pytest.raises(CheckpointError, match=r"lm\.pt: not a las-asr checkpoint"):
        average_model_states([tmp_path / "lm.pt"])
    assert not out.exists()


def test_epoch_checkpoints_keep_the_last_n_and_average_from_the_run_folder(tmp_path, capsys):
    torch.manual_seed(0)
    model = LAS(tiny_config(vocab_size=TOKENIZER.vocab_size))
    save_checkpoint(model_state(model, TOKENIZER), tmp_path / "epoch_12.pt")  # left by an earlier run
    for epoch in range(11):
        save_epoch_checkpoint(model_state(model, TOKENIZER), tmp_path, epoch, keep=3)
    assert [p.name for p in epoch_checkpoints(tmp_path)] == ["epoch_8.pt", "epoch_9.pt", "epoch_10.pt"]
    out = tmp_path / "avg2.pt"
    assert main(["--exp-dir", str(tmp_path), "--last", "2", "--out", str(out)]) == 0
    assert "epoch_9.pt, epoch_10.pt" in capsys.readouterr().err
    assert torch.load(out, weights_only=True)["averaged_from"][-1].endswith("epoch_10.pt")
    assert main(["--exp-dir", str(tmp_path), "--last", "4", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "3 epoch checkpoint(s)" in error and "keep_epoch_checkpoints=4" in error
