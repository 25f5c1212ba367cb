import pytest
import torch

from asr.checkpoint import CheckpointError, model_state, save_checkpoint
from asr.lm import (
    LM_FORMAT,
    LanguageModelConfig,
    LSTMLanguageModel,
    language_model_state,
    load_language_model,
)
from asr.model import LAS
from asr.tokenizer import CharTokenizer
from tests.conftest import tiny_config

VOCAB_SIZE = 9
SOS_EOS = VOCAB_SIZE - 1


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(dropout: float = 0.0, num_layers: int = 2) -> LSTMLanguageModel:
    torch.manual_seed(0)
    config = LanguageModelConfig(
        VOCAB_SIZE, embedding_dim=8, hidden_dim=16, num_layers=num_layers, dropout=dropout
    )
    return LSTMLanguageModel(config)


def _teacher_forcing_batch(sentences: list[list[int]]):
    """Sentences -> tokens_in [sos, y] and tokens_out [y, eos], zero-padded, with lengths U + 1."""
    lengths = torch.tensor([len(s) + 1 for s in sentences])
    tokens_in = torch.zeros(len(sentences), int(lengths.max()), dtype=torch.long)
    tokens_out = torch.full_like(tokens_in, -100)
    for i, sentence in enumerate(sentences):
        tokens_in[i, : lengths[i]] = torch.tensor([SOS_EOS, *sentence])
        tokens_out[i, : lengths[i]] = torch.tensor([*sentence, SOS_EOS])
    return tokens_in, tokens_out, lengths


@pytest.mark.parametrize("num_layers", [1, 2])
def test_forward_equals_a_loop_of_steps(num_layers):
    lm = _model(dropout=0.3, num_layers=num_layers).eval()
    tokens_in, _, lengths = _teacher_forcing_batch([[2, 3, 4, 5], [6, 2], [7]])
    with torch.inference_mode():
        log_probs = torch.log_softmax(lm(tokens_in, lengths), dim=-1)
        state = lm.initial_state(3, torch.device("cpu"))
        for position in range(tokens_in.shape[1]):
            step_log_probs, state = lm.step(tokens_in[:, position], state)
            valid = position < lengths
            torch.testing.assert_close(
                step_log_probs[valid], log_probs[valid, position], atol=1e-5, rtol=1e-5
            )
        assert log_probs.shape == (3, 5, VOCAB_SIZE)  # sos + the longest sentence


def test_padding_gives_zero_logits_and_does_not_change_valid_ones():
    lm = _model().eval()
    tokens_in, _, lengths = _teacher_forcing_batch([[2, 3, 4, 5], [6, 2]])
    with torch.inference_mode():
        logits = lm(tokens_in, lengths)
        alone = lm(tokens_in[1:, :3], lengths[1:])
    assert torch.all(logits[1, 3:] == 0)
    torch.testing.assert_close(logits[1, :3], alone[0])


def test_select_state_reorders_rows():
    lm = _model().eval()
    with torch.inference_mode():
        state = lm.initial_state(2, torch.device("cpu"))
        _, state = lm.step(torch.tensor([3, 4]), state)
        selected = lm.select_state(state, torch.tensor([1, 1, 0]))
        log_probs, _ = lm.step(torch.tensor([5, 5, 5]), selected)
        expected, _ = lm.step(torch.tensor([5, 5]), state)
    torch.testing.assert_close(log_probs, expected[[1, 1, 0]])


def test_a_tiny_language_model_overfits_a_few_sentences():
    sentences = [[2, 3, 4, 5, 6], [3, 3, 7, 2], [4, 6, 6, 6, 5, 2]]
    tokens_in, tokens_out, lengths = _teacher_forcing_batch(sentences)
    lm = _model(dropout=0.0)
    optimizer = torch.optim.Adam(lm.parameters(), lr=0.03)
    for _ in range(150):
        optimizer.zero_grad(set_to_none=True)
        logits = lm(tokens_in, lengths)
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), tokens_out.flatten(), ignore_index=-100
        )
        loss.backward()
        optimizer.step()
    lm.eval()
    with torch.inference_mode():
        predictions = lm(tokens_in, lengths).argmax(-1)
    # after the first token (which the sentences do not share), every next token and eos is known
    valid = tokens_out != -100
    valid[:, 0] = False
    assert torch.equal(predictions[valid], tokens_out[valid])


def _tokenizer() -> CharTokenizer:
    tokenizer = CharTokenizer.build(["abc de"])  # blank, unk, " abcde", sos/eos
    assert tokenizer.vocab_size == VOCAB_SIZE
    return tokenizer


def test_a_saved_language_model_loads_with_weights_only_and_computes_the_same(tmp_path):
    lm, tokenizer = _model(dropout=0.2), _tokenizer()
    path = tmp_path / "lm" / "best.pt"
    save_checkpoint(language_model_state(lm, tokenizer), path)
    assert torch.load(path, weights_only=True)["format"] == LM_FORMAT  # plain data only
    loaded, loaded_tokenizer = load_language_model(path, "cpu")
    assert not loaded.training and loaded.config == lm.config
    assert loaded_tokenizer.to_dict() == tokenizer.to_dict()
    tokens_in, _, lengths = _teacher_forcing_batch([[2, 3, 4], [5]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(tokens_in, lengths), lm.eval()(tokens_in, lengths))


def test_loading_refuses_what_is_not_a_language_model(tmp_path):
    tokenizer = _tokenizer()
    acoustic = tmp_path / "model.pt"
    save_checkpoint(model_state(LAS(tiny_config(vocab_size=VOCAB_SIZE)), tokenizer), acoustic)
    with pytest.raises(CheckpointError, match="acoustic model checkpoint, not a language model"):
        load_language_model(acoustic)
    with pytest.raises(CheckpointError, match="not found"):
        load_language_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable checkpoint"):
        load_language_model(garbage)
    mismatched = tmp_path / "mismatched.pt"
    save_checkpoint(language_model_state(_model(), CharTokenizer.build(["ab"])), mismatched)
    with pytest.raises(CheckpointError, match="the tokenizer has 6 tokens but the LM 9"):
        load_language_model(mismatched)
