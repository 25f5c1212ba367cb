"""The CUDA paths: the same losses, gradients, searches and transcripts as on the CPU, bf16 autocast
training, and a training run whose checkpoint loads on a machine without a GPU.

Marked `gpu`: skipped where there is no CUDA device (CI; `tests/conftest.py`), run with
`make test-gpu` (or `pytest -m gpu`) on a machine that has one. cuDNN's and cuBLAS's TF32 modes are
off in the comparisons, so the CUDA results must equal the CPU's to fp32 rounding.
"""

import copy
import dataclasses

import pytest
import torch

from asr.checkpoint import load_model
from asr.cli.transcribe import main as transcribe_main
from asr.decoding import DecodingOptions, search
from asr.features import SpecAugmentConfig
from asr.lm import LanguageModelConfig, LSTMLanguageModel
from asr.model import LAS, DecoderConfig
from asr.tokenizer import CharTokenizer
from tests.conftest import tiny_config
from tests.test_decoding import VOCAB_SIZE, _assert_same_hypotheses, _trained_model
from tests.test_decoding import _batch as wave_batch
from tests.test_train import fit_small, small_corpus  # noqa: F401  (small_corpus: a fixture)
from tests.test_transcribe import _build_checkpoint, _write

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 on the GPU as on the CPU: TF32 keeps 10 mantissa bits and would need 1e-3 tolerances."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _model(cell: str = "lstm", input_feeding: bool = True, num_layers: int = 2) -> LAS:
    """A small model in train mode without randomness (no dropout, no SpecAugment)."""
    torch.manual_seed(0)
    config = tiny_config(
        cell=cell,
        decoder=DecoderConfig(
            cell=cell, embedding_dim=8, hidden_dim=16, num_layers=num_layers, input_feeding=input_feeding
        ),
        spec_augment=SpecAugmentConfig(num_freq_masks=0, num_time_masks=0),
        ctc_weight=0.3,
    )
    config = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, num_layers=2))
    return LAS(config).train()


def _feature_batch(device=None):
    generator = torch.Generator().manual_seed(3)
    feat_lens = torch.tensor([83, 61, 40, 23])
    feats = torch.randn(4, 83, 20, generator=generator) * (torch.arange(83) < feat_lens[:, None])[..., None]
    target_lens = torch.tensor([9, 7, 4, 2])
    targets = torch.randint(2, 11, (4, 9), generator=generator) * (torch.arange(9) < target_lens[:, None])
    return tuple(t.to(device) for t in (feats, feat_lens, targets, target_lens))


def _loss_and_gradients(model: LAS, batch, decoder_forward=None, autocast: bool = False):
    model.zero_grad(set_to_none=True)
    if decoder_forward is not None:
        model.decoder.forward = decoder_forward
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model.loss_from_features(*batch).loss
    finally:
        model.decoder.__dict__.pop("forward", None)
    loss.backward()
    gradients = {name: p.grad.detach().cpu() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach().cpu(), gradients


def _assert_same(loss, gradients, reference_loss, reference_gradients):
    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == reference_gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, reference_gradients[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize(("cell", "input_feeding"), [("lstm", True), ("gru", True), ("lstm", False)])
def test_a_training_step_on_cuda_gives_the_cpus_loss_and_gradients(cell, input_feeding):
    model = _model(cell, input_feeding)
    reference = _loss_and_gradients(model, _feature_batch())
    on_cuda = _loss_and_gradients(copy.deepcopy(model).to(CUDA), _feature_batch(CUDA))
    _assert_same(*on_cuda, *reference)


@pytest.mark.parametrize("input_feeding", [True, False])
def test_fast_teacher_forcing_on_cuda_gives_the_step_loops_loss_and_gradients(input_feeding):
    model = _model(input_feeding=input_feeding).to(CUDA)
    batch = _feature_batch(CUDA)
    fast = _loss_and_gradients(model, batch)
    step_loop = _loss_and_gradients(model, batch, model.decoder.forward_by_steps)
    _assert_same(*fast, *step_loop)


@pytest.mark.parametrize("input_feeding", [True, False])
def test_bf16_autocast_on_cuda_trains_with_fp32_weights_and_a_close_loss(input_feeding):
    model = _model(input_feeding=input_feeding).to(CUDA)
    batch = _feature_batch(CUDA)
    reference_loss, _ = _loss_and_gradients(model, batch)
    loss, gradients = _loss_and_gradients(model, batch, autocast=True)
    assert abs(loss.item() - reference_loss.item()) < 0.02 * reference_loss.item()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in gradients.values())


def _searches(model: LAS, waves, lengths, options, lm=None):
    with torch.inference_mode():
        return search(model, model.encode(waves, lengths), options, lm)


@pytest.mark.parametrize(
    ("beam_size", "ctc_weight", "lm_weight"), [(1, 0.0, 0.0), (4, 0.5, 0.0), (4, 0.3, 0.5)]
)
def test_batched_search_on_cuda_equals_the_cpus_and_one_utterance_at_a_time(beam_size, ctc_weight, lm_weight):
    model = _trained_model()
    torch.manual_seed(1)
    lm = LSTMLanguageModel(LanguageModelConfig(vocab_size=VOCAB_SIZE, embedding_dim=8, hidden_dim=16)).eval()
    options = DecodingOptions(beam_size=beam_size, ctc_weight=ctc_weight, lm_weight=lm_weight)
    waves, lengths = wave_batch()
    on_cpu = _searches(model, waves, lengths, options, lm)
    model_cuda, lm_cuda = copy.deepcopy(model).to(CUDA), copy.deepcopy(lm).to(CUDA)
    on_cuda = _searches(model_cuda, waves.to(CUDA), lengths.to(CUDA), options, lm_cuda)
    assert len(on_cuda) == len(on_cpu) and any(len(nbest[0].tokens) > 1 for nbest in on_cuda)
    for i, length in enumerate(lengths.tolist()):
        _assert_same_hypotheses(
            [dataclasses.replace(h, attention=h.attention.cpu()) for h in on_cuda[i]], on_cpu[i]
        )
        alone = _searches(
            model_cuda, waves[i : i + 1, :length].to(CUDA), lengths[i : i + 1].to(CUDA), options, lm_cuda
        )
        _assert_same_hypotheses(on_cuda[i], alone[0])


def test_training_on_cuda_in_bf16_writes_checkpoints_that_load_on_the_cpu(small_corpus, tmp_path):  # noqa: F811
    best = fit_small(small_corpus, tmp_path, device="cuda", bf16=True, max_epochs=2)
    assert best["epoch"] in (0, 1)
    model, tokenizer = load_model(tmp_path / "last.pt", "cpu")
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["progress"]["epoch"] == 2 and state["progress"]["step"] > 0
    # resuming on the GPU restores its generators and continues where the first run stopped
    resumed = fit_small(small_corpus, tmp_path, device="cuda", bf16=True, max_epochs=3, resume=True)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["progress"]["epoch"] == 3
    assert resumed["epoch"] in (0, 1, 2)
    assert isinstance(tokenizer, CharTokenizer)


def test_transcribing_on_cuda_gives_the_cpus_text(tmp_path, capsys):
    checkpoint = _build_checkpoint(tmp_path / "model.pt")
    inputs = [
        _write(tmp_path / f"{i}.wav", seconds, seed=i) for i, seconds in enumerate([0.6, 1.4, 2.3, 9.0])
    ]
    outputs = {}
    for device in ("cpu", "cuda"):
        status = transcribe_main(
            ["--model", str(checkpoint), "--beam-size", "3", "--ctc-weight", "0.3", "--device", device]
            + [str(path) for path in inputs]
        )
        captured = capsys.readouterr()
        assert status == 0, captured.err
        outputs[device] = captured.out
    assert outputs["cuda"] == outputs["cpu"] and len(outputs["cpu"].splitlines()) == len(inputs)
