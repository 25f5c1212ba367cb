"""The fast teacher-forced decoder (issue 7) computes what the plain loop of `step` computes:
the same logits, attention weights, loss and gradients, to floating-point tolerance."""

import copy
import dataclasses
import io
import os
import subprocess
import sys

import pytest
import torch

from asr.decoding import DecodingOptions, search
from asr.features import SpecAugmentConfig
from asr.model import LAS, DecoderConfig
from asr.model.encoder import BiLSTM
from asr.model.recurrence import (
    Embedded,
    LoopContexts,
    LoopLinear,
    LoopLSTMCell,
    lstm_pointwise,
    lstm_pointwise_in_place,
    run_cells,
)
from asr.optimizer import OptimizerOptions
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(
    attention="location", cell="lstm", num_layers=1, input_feeding=True, heads=1, attentional_dim=0
) -> LAS:
    torch.manual_seed(0)
    decoder = DecoderConfig(
        cell=cell,
        embedding_dim=8,
        hidden_dim=16,
        num_layers=num_layers,
        input_feeding=input_feeding,
        attentional_dim=attentional_dim,
    )
    no_masks = SpecAugmentConfig(num_freq_masks=0, num_time_masks=0)
    config = tiny_config(attention=attention, decoder=decoder, spec_augment=no_masks, ctc_weight=0.3)
    config = dataclasses.replace(config, attention=dataclasses.replace(config.attention, num_heads=heads))
    return LAS(config).train()  # no dropout, no masks: train mode without randomness


def _loss_and_gradients(model: LAS, decoder_forward, feats, feat_lens, targets, target_lens):
    """The model's training loss with the decoder's teacher forcing replaced by `decoder_forward`."""
    model.zero_grad(set_to_none=True)
    model.decoder.forward = decoder_forward
    try:
        output = model.loss_from_features(feats, feat_lens, targets, target_lens)
    finally:
        del model.decoder.forward
    output.loss.backward()
    return output.loss.detach(), {
        name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None
    }


def _batch():
    generator = torch.Generator().manual_seed(3)
    feat_lens = torch.tensor([61, 40, 23])
    feats = torch.randn(3, 61, 20, generator=generator) * (torch.arange(61) < feat_lens[:, None])[..., None]
    target_lens = torch.tensor([7, 4, 2])
    targets = torch.randint(2, 11, (3, 7), generator=generator) * (torch.arange(7) < target_lens[:, None])
    return feats, feat_lens, targets, target_lens


def _assert_paths_agree(model: LAS):
    batch = _batch()
    loss, gradients = _loss_and_gradients(model, model.decoder.forward, *batch)
    reference_loss, reference_gradients = _loss_and_gradients(model, model.decoder.forward_by_steps, *batch)
    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == reference_gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, reference_gradients[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("attention", ["dot", "additive", "location"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fast_teacher_forcing_gives_the_step_loops_loss_and_gradients(attention, cell):
    _assert_paths_agree(_model(attention, cell))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fast_teacher_forcing_agrees_with_two_layers_and_two_heads(cell):
    _assert_paths_agree(_model("location", cell, num_layers=2))
    _assert_paths_agree(_model("dot", cell, num_layers=2, heads=2))


@pytest.mark.parametrize("attention", ["dot", "location"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_without_input_feeding_the_fused_rnn_gives_the_step_loops_loss_and_gradients(
    attention, cell, num_layers
):
    _assert_paths_agree(_model(attention, cell, num_layers, input_feeding=False))


@pytest.mark.parametrize("input_feeding", [True, False])
def test_the_attentional_state_gives_the_step_loops_loss_and_gradients(input_feeding):
    model = _model(input_feeding=input_feeding, attentional_dim=12)
    assert model.decoder.output.in_features == 12
    _assert_paths_agree(model)


def test_the_attentional_state_is_tanh_of_state_and_context():
    model = _model(input_feeding=False, attentional_dim=12).eval()
    hidden, context = torch.randn(5, 16), torch.randn(5, model.encoder.output_dim)
    expected = model.decoder.output(torch.tanh(model.decoder.attentional(torch.cat([hidden, context], -1))))
    torch.testing.assert_close(model.decoder._logits(hidden, context), expected)
    assert _model(input_feeding=False).decoder.attentional is None  # off: the checkpoint keys as before


def test_without_input_feeding_the_first_cell_reads_only_the_embeddings():
    model = _model(input_feeding=False)
    assert model.decoder.cells[0].input_size == model.config.decoder.embedding_dim
    assert _model().decoder.cells[0].input_size == 8 + model.encoder.output_dim


def test_forward_under_inference_mode_and_bf16_autocast():
    model = _model().eval()
    feats, feat_lens, targets, target_lens = _batch()
    with torch.inference_mode():
        encoded = model.encode_features(feats, feat_lens)
        tokens = torch.cat([torch.full((3, 1), 11), targets], dim=1)
        logits, weights = model.decoder(tokens, encoded.output, encoded.lengths)
        expected_logits, expected_weights = model.decoder.forward_by_steps(
            tokens, encoded.output, encoded.lengths
        )
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model.loss_from_features(feats, feat_lens, targets, target_lens)
    output.loss.backward()
    reference = model.loss_from_features(feats, feat_lens, targets, target_lens).loss
    assert abs(output.loss.item() - reference.item()) < 0.05 * reference.item()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("input_feeding", [True, False])
def test_bf16_autocast_teacher_forcing_matches_the_step_loop(input_feeding):
    """The fused paths under CPU bf16 autocast (memory cast to bf16 once for the contexts, not at
    every step) give the step loop's loss and gradients, to bf16 rounding."""
    model = _model(input_feeding=input_feeding)
    batch = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, gradients = _loss_and_gradients(model, model.decoder.forward, *batch)
        expected_loss, expected = _loss_and_gradients(model, model.decoder.forward_by_steps, *batch)
    assert abs(loss.item() - expected_loss.item()) < 0.01 * expected_loss.item()
    for name, gradient in gradients.items():
        scale = expected[name].abs().max().item()
        assert (gradient - expected[name]).abs().max().item() <= 0.05 * scale + 1e-3, name


def test_loop_linear_gives_linears_gradient_and_needs_every_step_in_order():
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 4)
    inputs = torch.randn(3, 2, 5, requires_grad=True)
    loop = LoopLinear.from_linear(linear, steps=3, batch=2)
    outputs = torch.stack([loop(i, inputs[i]) ** 2 for i in range(3)])
    gradients = torch.autograd.grad(outputs.sum(), [linear.weight, linear.bias, inputs])
    expected = torch.autograd.grad((linear(inputs) ** 2).sum(), [linear.weight, linear.bias, inputs])
    for gradient, reference in zip(gradients, expected, strict=True):
        torch.testing.assert_close(gradient, reference)
    loop = LoopLinear.from_linear(linear, steps=3, batch=2)
    with pytest.raises(RuntimeError, match="expected step 0"):
        loop(1, inputs[1])
    partial = loop(0, inputs[0])
    with pytest.raises(RuntimeError, match="called for 1 of 3 steps"):
        partial.sum().backward()


@pytest.mark.parametrize("known", ["embedded", "dense", "none"])
def test_loop_lstm_cell_gives_lstm_cells_outputs_and_gradients(known):
    """Known inputs as embedded tokens (the table's rows), as a tensor (embeddings with dropout) or
    none (a second layer): outputs and every gradient are a plain nn.LSTMCell loop's."""
    torch.manual_seed(0)
    steps, batch, known_dim, input_dim, hidden_dim = 4, 3, 5, 6, 7
    embedding = torch.nn.Embedding(11, known_dim)
    cell = torch.nn.LSTMCell((known_dim if known != "none" else 0) + input_dim, hidden_dim)
    tokens = torch.randint(0, 11, (steps, batch))
    inputs = torch.randn(steps, batch, input_dim, requires_grad=True)
    start = (torch.zeros(batch, hidden_dim), torch.zeros(batch, hidden_dim))
    parameters = [embedding.weight, *cell.parameters(), inputs]

    def plain_loop():
        state, outputs = start, []
        for i in range(steps):
            x = inputs[i] if known == "none" else torch.cat([embedding(tokens[i]), inputs[i]], dim=1)
            state = cell(x, state)
            outputs.append(state[0] * state[1])
        return torch.stack(outputs)

    def loop_cell():
        given = {"embedded": Embedded(tokens, embedding.weight), "dense": embedding(tokens), "none": None}
        loop, state, outputs = LoopLSTMCell(cell, given[known], steps, batch), start, []
        for i in range(steps):
            state = loop(i, inputs[i], state)
            outputs.append(state[0] * state[1])
        return torch.stack(outputs)

    expected, output = plain_loop(), loop_cell()
    torch.testing.assert_close(output, expected)
    used = [p for p in parameters if p is not embedding.weight or known != "none"]
    for gradient, reference in zip(
        torch.autograd.grad(output.square().sum(), used),
        torch.autograd.grad(expected.square().sum(), used),
        strict=True,
    ):
        torch.testing.assert_close(gradient, reference)
    given = Embedded(tokens, embedding.weight) if known != "none" else None
    partial = LoopLSTMCell(cell, given, steps, batch)
    with pytest.raises(RuntimeError, match="expected step 0"):
        partial(1, inputs[1], start)
    with pytest.raises(RuntimeError, match="called for 1 of 4 steps"):
        partial(0, inputs[0], start)[0].sum().backward()


def test_in_place_lstm_nonlinearities_equal_the_cells():
    """One sigmoid for all four gates, tanh as 2 sigmoid(2x) - 1: the cell's values to fp32 rounding,
    saturated gates included."""
    generator = torch.Generator().manual_seed(0)
    gates = torch.randn(7, 4 * 5, generator=generator) * torch.tensor(
        [0.01, 1.0, 30.0, 200.0]
    ).repeat_interleave(5)
    cell = torch.randn(7, 5, generator=generator) * 3
    hidden, new_cell = lstm_pointwise(gates, cell)
    in_place_hidden, in_place_cell = lstm_pointwise_in_place(gates.clone(), cell)
    torch.testing.assert_close(in_place_cell, new_cell, rtol=0, atol=1e-6)
    torch.testing.assert_close(in_place_hidden, hidden, rtol=0, atol=1e-6)
    assert torch.isfinite(in_place_hidden).all()


def test_loop_contexts_give_the_weighted_sums_and_their_gradients():
    torch.manual_seed(0)
    memory = torch.randn(2, 7, 5, requires_grad=True)
    logits = torch.randn(3, 2, 7, requires_grad=True)
    loop = LoopContexts(memory, steps=3)
    contexts = torch.stack([loop(i, logits[i].softmax(-1)) for i in range(3)])
    expected = torch.einsum("ubt,bte->ube", logits.softmax(-1), memory)
    torch.testing.assert_close(contexts, expected)
    target = torch.randn_like(expected)
    gradients = torch.autograd.grad((contexts * target).sum(), [memory, logits])
    for gradient, reference in zip(
        gradients, torch.autograd.grad((expected * target).sum(), [memory, logits]), strict=True
    ):
        torch.testing.assert_close(gradient, reference)
    loop = LoopContexts(memory, steps=3)
    with pytest.raises(RuntimeError, match="expected step 0"):
        loop(1, logits[1])
    partial = loop(0, logits[0].softmax(-1))
    with pytest.raises(RuntimeError, match="called for 1 of 3 steps"):
        partial.sum().backward()


def test_run_cells_is_a_loop_of_the_cells():
    torch.manual_seed(0)
    cells = torch.nn.ModuleList([torch.nn.LSTMCell(3, 4), torch.nn.LSTMCell(4, 4)])
    inputs, zeros = torch.randn(5, 2, 3), torch.zeros(2, 4)
    outputs = run_cells(cells, inputs, [(zeros, zeros), (zeros, zeros)], dropout=0.0, training=False)
    states = [(zeros, zeros), (zeros, zeros)]
    for i in range(5):
        x = inputs[i]
        for layer, cell in enumerate(cells):
            states[layer] = cell(x, states[layer])
            x = states[layer][0]
        torch.testing.assert_close(outputs[i], x)


@pytest.mark.parametrize(("beam_size", "attentional_dim"), [(1, 0), (3, 0), (3, 12)])
def test_search_without_input_feeding_matches_its_teacher_forcing(beam_size, attentional_dim):
    """Greedy and beam search run the model without input feeding through `step`; each hypothesis's
    score is what the fused teacher-forced decoder gives its tokens."""
    model = _model(input_feeding=False, attentional_dim=attentional_dim).eval()
    with torch.no_grad():
        model.decoder.output.bias[11] = -5.0  # untrained: keep eos from ending every hypothesis at once
    feats, feat_lens, _, _ = _batch()
    with torch.inference_mode():
        encoded = model.encode_features(feats, feat_lens)
        options = DecodingOptions(beam_size=beam_size, ctc_weight=0.0, max_length_ratio=1.0)
        results = search(model, encoded, options)
        for i, nbest in enumerate(results):
            frames = int(encoded.lengths[i])
            best = nbest[0]
            tokens_in = torch.tensor([[11, *best.tokens]])
            logits, weights = model.decoder(
                tokens_in, encoded.output[i : i + 1, :frames], encoded.lengths[i : i + 1]
            )
            log_probs = torch.log_softmax(logits[0].double(), dim=-1)
            expected = log_probs.gather(1, torch.tensor([*best.tokens, 11])[:, None]).sum().item()
            assert best.attention_score == pytest.approx(expected, abs=1e-4)
            torch.testing.assert_close(best.attention, weights[0], atol=1e-5, rtol=1e-4)
    assert any(len(nbest[0].tokens) >= 2 for nbest in results)


def test_a_full_length_batch_takes_one_bidirectional_call_with_the_same_result():
    torch.manual_seed(0)
    layer = BiLSTM(4, 3)
    x, lengths = torch.randn(2, 9, 4, requires_grad=True), torch.tensor([9, 9])
    results = []
    for full_length in (True, False):
        output = layer(x, lengths, full_length)
        gradients = torch.autograd.grad((output**2).sum(), [x, *layer.parameters()])
        results.append((output, gradients))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("input_feeding", [True, False])
def test_fast_paths_train_with_dropout(input_feeding):
    """Dropout draws differ between the paths (masks for all steps at once), so only check it trains."""
    torch.manual_seed(0)
    decoder = DecoderConfig(
        embedding_dim=8, hidden_dim=16, num_layers=2, dropout=0.3, input_feeding=input_feeding
    )
    model = LAS(tiny_config(decoder=decoder)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    feats, feat_lens, targets, target_lens = _batch()
    losses = []
    for _ in range(5):
        optimizer.zero_grad(set_to_none=True)
        output = model.loss_from_features(feats, feat_lens, targets, target_lens)
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("num_layers, input_feeding", [(1, True), (2, True), (2, False)])
def test_search_steps_follow_weights_that_change_after_packing(num_layers, input_feeding):
    """`step` in inference runs each LSTM cell as one oneDNN GEMM on weights packed once, with the
    first cell's embedding share of the gates from a table (`search_lstm_weights`): it gives what
    teacher forcing gives, and an optimiser step or a loaded state (in-place updates) of any of
    those weights must reach the next search."""
    torch.manual_seed(0)
    decoder_config = DecoderConfig(
        embedding_dim=8, hidden_dim=16, num_layers=num_layers, input_feeding=input_feeding
    )
    model = LAS(tiny_config(attention="location", cell="lstm", decoder=decoder_config)).eval()
    decoder = model.decoder
    memory, memory_lens = torch.randn(2, 6, model.encoder.output_dim), torch.tensor([6, 4])
    tokens = torch.randint(2, 11, (2, 4))
    mask = torch.arange(6)[None, :] < memory_lens[:, None]

    def step_logits():
        with torch.inference_mode():
            keys = decoder.attention.prepare(memory)
            state = decoder.initial_state(memory, memory_lens)
            logits = []
            for i in range(tokens.shape[1]):
                step, state = decoder.step(tokens[:, i], state, keys, memory, mask)
                logits.append(step)
            return torch.stack(logits, dim=1)

    for change in range(6):
        if change == 1:
            with torch.no_grad():
                decoder.cells[0].weight_hh.mul_(-1.5)  # as an optimiser step: in place
        if change == 4:
            with torch.no_grad():
                decoder.embedding.weight.mul_(3.0)  # the first cell's table of embedding gates
        if change == 5:
            with torch.no_grad():
                decoder.cells[-1].bias_hh.add_(0.5)
        if change == 2:
            state = {k: v.clone() for k, v in model.state_dict().items()}
            state["decoder.cells.0.weight_ih"].normal_()
            model.load_state_dict(state)
        if change == 3:  # the trainer's AdamW, whose fused kernel leaves versions alone (asr/optimizer.py)
            optimizer = OptimizerOptions(lr=0.1).adamw(model.parameters())
            for parameter in model.parameters():
                parameter.grad = torch.randn_like(parameter)
            optimizer.step()
        with torch.no_grad():
            expected, _ = decoder(tokens, memory, memory_lens)
        torch.testing.assert_close(step_logits(), expected, rtol=1e-5, atol=1e-5)
    # the packed copies live outside the model: it still copies and pickles after a search
    copied = copy.deepcopy(model)
    torch.save(copied, io.BytesIO())


HUGE_PAGE_PROBE = """
import resource, sys
import asr, torch
torch.ones(1)  # the allocator reads its setting at the first allocation
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _transparent_huge_pages() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as file:
            return file.read()
    except OSError:
        return "[never]"


@pytest.mark.skipif("[never]" in _transparent_huge_pages(), reason="no transparent huge pages here")
def test_importing_asr_backs_large_tensors_with_huge_pages():
    """64 MiB are 16,384 pages of 4 KiB; on 2 MiB pages they fault in 32 times (plus a little)."""
    env = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
    run = subprocess.run([sys.executable, "-c", HUGE_PAGE_PROBE], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) < 16384 // 4
    env["THP_MEM_ALLOC_ENABLE"] = "0"  # the user's setting wins
    run = subprocess.run([sys.executable, "-c", HUGE_PAGE_PROBE], env=env, capture_output=True, text=True)
    assert int(run.stdout) >= 16384


def test_decoding_processes_keep_freed_memory_where_glibc_allows():
    """glibc accepts both settings (mallopt returns 1 for each); the speed they give is measured by
    benchmarks/decode_speed.py, not here: whether a freed block is found again depends on where the
    interpreter's small allocations land, so page-fault counts vary from run to run. In a subprocess,
    because the settings are process-wide."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: keep_freed_memory does not apply")
    probe = "from asr.allocator import keep_freed_memory; print(keep_freed_memory())"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "True"
