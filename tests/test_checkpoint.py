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
