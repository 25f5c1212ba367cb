import os

import pytest
import torch

from asr.checkpoint import CheckpointError, load_checkpoint, load_model, model_state, save_checkpoint
from asr.model import LAS
from asr.tokenizer import CharTokenizer
from tests.conftest import tiny_config


def make_model():
    tokenizer = CharTokenizer.build(["one two three"])
    torch.manual_seed(0)
    model = LAS(tiny_config(vocab_size=tokenizer.vocab_size)).eval()
    model.normalization.set_statistics(torch.full((20,), 2.0), torch.full((20,), 3.0))
    return model, tokenizer


def test_a_saved_model_loads_with_weights_only_and_computes_the_same(tmp_path):
    model, tokenizer = make_model()
    path = tmp_path / "model.pt"
    save_checkpoint(model_state(model, tokenizer), path)
    torch.load(path, weights_only=True)  # plain data only: safe to load
    loaded, loaded_tokenizer = load_model(path)
    assert loaded_tokenizer.symbols == tokenizer.symbols
    assert loaded.config == model.config
    assert torch.equal(
        loaded.normalization.mean, torch.full((20,), 2.0)
    )  # statistics travel with the weights
    waves, lens = torch.randn(2, 8000), torch.tensor([8000, 5000])
    torch.testing.assert_close(loaded.encode(waves, lens).output, model.encode(waves, lens).output)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    model, tokenizer = make_model()
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(model_state(model, tokenizer), path)
    save_checkpoint(model_state(model, tokenizer), path)  # overwrite in place
    assert sorted(os.listdir(path.parent)) == ["model.pt"]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, tokenizer = make_model()
    path = tmp_path / "model.pt"
    save_checkpoint(model_state(model, tokenizer), path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*unchanged"):
        save_checkpoint(model_state(model, tokenizer), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint({"format": "x"}, blocker / "model.pt")


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "checkpoint not found"),
        (b"", "not a readable checkpoint"),
        (b"garbage bytes", "not a readable checkpoint"),
    ],
)
def test_bad_checkpoint_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_truncated_and_foreign_checkpoints_are_refused(tmp_path):
    model, tokenizer = make_model()
    path = tmp_path / "model.pt"
    save_checkpoint(model_state(model, tokenizer), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a las-asr checkpoint"):
        load_checkpoint(path)


def test_random_states_survive_a_weights_only_round_trip(tmp_path):
    import random

    import numpy as np

    from asr.checkpoint import random_states, set_random_states

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint({"format": "x", "random": random_states()}, tmp_path / "state.pt")
    expected = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_random_states(torch.load(tmp_path / "state.pt", weights_only=True)["random"])
    actual = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    assert torch.equal(actual[0], expected[0])
    assert np.array_equal(actual[1], expected[1]) and actual[2] == expected[2]


def test_weights_with_nan_are_never_written(tmp_path):
    from asr.checkpoint import check_finite

    model, tokenizer = make_model()
    path = tmp_path / "last.pt"
    check_finite(model, path)  # a healthy model passes
    with torch.no_grad():
        model.ctc_head.bias[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"non-finite values in ctc_head\.bias.*unchanged"):
        check_finite(model, path)


def test_an_unwritable_exp_dir_is_found_before_training(tmp_path):
    from asr.checkpoint import check_writable

    check_writable(tmp_path / "new" / "exp")  # created
    assert (tmp_path / "new" / "exp").is_dir() and not any((tmp_path / "new" / "exp").iterdir())
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="cannot write checkpoints here"):
        check_writable(tmp_path / "file" / "exp")


def test_a_training_state_resumes_its_position_and_refuses_another_model(tmp_path):
    from asr.checkpoint import Progress, load_training_state, random_states, training_state

    model, tokenizer = make_model()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    position = Progress(epoch=2, batches_done=5, step=41)
    state = training_state(model, tokenizer, optimizer, scheduler, position, [random_states()], {})
    save_checkpoint(state, tmp_path / "last.pt")
    torch.load(tmp_path / "last.pt", weights_only=True)  # plain data all through
    progress = load_training_state(tmp_path / "last.pt", model, optimizer, scheduler)
    assert (progress.epoch, progress.batches_done, progress.step) == (2, 5, 41)
    # two ranks shard the batches differently from the one that wrote it: the epoch starts over
    progress = load_training_state(tmp_path / "last.pt", model, optimizer, scheduler, rank=1, world_size=2)
    assert (progress.epoch, progress.batches_done, progress.step) == (2, 0, 41)
    other = LAS(tiny_config(vocab_size=tokenizer.vocab_size + 1))
    with pytest.raises(CheckpointError, match="does not match this model"):
        load_training_state(tmp_path / "last.pt", other, optimizer, scheduler)
