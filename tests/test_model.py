import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from asr.features import SpecAugmentConfig, sequence_mask
from asr.model import LAS
from asr.model.attention import AttentionConfig, DotProductAttention, build_attention
from asr.model.encoder import (
    BiLSTM,
    EncoderConfig,
    PyramidalEncoder,
    concatenate_neighbours,
    reverse_padded,
    run_in_stages,
)
from asr.model.las import IGNORE_INDEX, ModelConfig, SpeakerAdversary, SpeakerAdversaryConfig, add_sos_eos
from tests.conftest import tiny_config


def test_reverse_padded_reverses_within_length_and_is_an_involution():
    x = torch.arange(10.0).view(2, 5, 1)
    lengths = torch.tensor([5, 3])
    reversed_x = reverse_padded(x, lengths)
    assert reversed_x[0, :, 0].tolist() == [4, 3, 2, 1, 0]
    assert reversed_x[1, :, 0].tolist() == [7, 6, 5, 8, 9]
    assert torch.equal(reverse_padded(reversed_x, lengths), x)


def test_bilstm_equals_a_packed_bidirectional_lstm():
    """Our fast dense form computes exactly what pack_padded_sequence computes."""
    torch.manual_seed(0)
    layer = BiLSTM(6, 5)
    reference = torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for suffix, source in (("", layer.forward_lstm), ("_reverse", layer.backward_lstm)):
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(reference, name + suffix).copy_(getattr(source, name))
    x, lengths = torch.randn(3, 7, 6), torch.tensor([7, 4, 1])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(
        reference(packed)[0], batch_first=True, total_length=7
    )
    torch.testing.assert_close(layer(x, lengths), expected, rtol=1e-5, atol=1e-6)


def test_staged_lstm_equals_one_dense_call_on_valid_frames_and_in_gradients():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 3, batch_first=True)
    lengths = torch.tensor([12, 3, 9, 1, 12, 5, 7, 2, 10])  # quarters at different lengths: five stages
    mask = sequence_mask(lengths, 12)[..., None]
    x = torch.randn(9, 12, 4, requires_grad=True)
    probe = torch.randn(9, 12, 3)
    results = []
    for run in (lambda: lstm(x)[0], lambda: run_in_stages(lstm, x, lengths)):
        output = run() * mask
        x.grad = None
        lstm.zero_grad()
        (output * probe).sum().backward()
        results.append((output, x.grad.clone(), [p.grad.clone() for p in lstm.parameters()]))
    (dense, dense_x_grad, dense_grads), (staged, staged_x_grad, staged_grads) = results
    torch.testing.assert_close(staged, dense)
    torch.testing.assert_close(staged_x_grad, dense_x_grad)
    for got, expected in zip(staged_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_concatenate_neighbours_keeps_an_odd_last_frame():
    x = torch.arange(1.0, 6.0).view(1, 5, 1)
    output, lengths = concatenate_neighbours(x, torch.tensor([5]))
    assert output[0].tolist() == [[1, 2], [3, 4], [5, 0]]
    assert lengths.tolist() == [3]


@pytest.mark.parametrize("num_layers, projection", [(0, 0), (2, 0), (0, 5), (2, 5)])
def test_encoder_is_padding_invariant(num_layers, projection):
    torch.manual_seed(0)
    config = EncoderConfig(
        input_dim=4,
        hidden_dim=3,
        num_layers=num_layers,
        num_pyramid_levels=3,
        ctc_level=1,
        pyramid_projection=projection,
    )
    encoder = PyramidalEncoder(config).eval()
    assert sum(isinstance(p, torch.nn.Linear) for p in encoder.projections) == (3 if projection else 0)
    short, long = torch.randn(1, 13, 4), torch.randn(1, 40, 4)
    alone = encoder(short, torch.tensor([13]))
    batch = torch.cat([torch.nn.functional.pad(short, (0, 0, 0, 27), value=5.0), long])
    batch = batch * sequence_mask(torch.tensor([13, 40]), 40)[..., None]  # padding is zero (as features give)
    together = encoder(batch, torch.tensor([13, 40]))
    assert together.lengths.tolist() == [2, 5] and alone.lengths.tolist() == [2]
    assert together.ctc_lengths.tolist() == [7, 20]
    torch.testing.assert_close(together.output[0, :2], alone.output[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together.ctc_output[0, :7], alone.ctc_output[0], rtol=1e-5, atol=1e-6)
    assert together.output[0, 2:].abs().sum() == 0


def test_encoder_sorts_a_mixed_batch_and_returns_it_in_the_callers_order():
    """Three lengths in an order whose sort is not its own inverse: a wrong restore shows."""
    torch.manual_seed(0)
    config = EncoderConfig(input_dim=4, hidden_dim=3, num_layers=1, num_pyramid_levels=2, ctc_level=1)
    encoder = PyramidalEncoder(config).eval()  # no dropout; autograd still runs
    lengths = torch.tensor([20, 13, 40])
    feats = torch.randn(3, 40, 4) * sequence_mask(lengths, 40)[..., None]
    feats.requires_grad_(True)
    together = encoder(feats, lengths)
    assert together.lengths.tolist() == [5, 4, 10] and together.ctc_lengths.tolist() == [10, 7, 20]
    (together.output.sum() + together.ctc_output.sum()).backward()
    for row, length in enumerate(lengths.tolist()):
        alone_feats = feats[row : row + 1, :length].detach().requires_grad_(True)
        alone = encoder(alone_feats, lengths[row : row + 1])
        frames, ctc_frames = int(alone.lengths[0]), int(alone.ctc_lengths[0])
        torch.testing.assert_close(together.output[row, :frames], alone.output[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            together.ctc_output[row, :ctc_frames], alone.ctc_output[0], rtol=1e-5, atol=1e-6
        )
        assert together.output[row, frames:].abs().sum() == 0
        (alone.output.sum() + alone.ctc_output.sum()).backward()
        torch.testing.assert_close(feats.grad[row, :length], alone_feats.grad[0], rtol=1e-5, atol=1e-6)


def test_dot_product_attention_equals_torch_sdpa_with_masking():
    torch.manual_seed(0)
    attention = DotProductAttention(query_dim=6, memory_dim=10, attention_dim=8)
    query, memory = torch.randn(3, 6), torch.randn(3, 9, 10)
    mask = sequence_mask(torch.tensor([9, 4, 1]), 9)
    keys = attention.prepare(memory)
    context, weights = attention(query, keys, memory, mask, previous_weights=None)
    q = attention.query_projection(query)[:, None, None, :]  # (B, heads=1, L=1, A)
    expected = F.scaled_dot_product_attention(
        q, keys[:, None], memory[:, None], attn_mask=mask[:, None, None, :]
    )
    torch.testing.assert_close(context, expected[:, 0, 0], rtol=1e-5, atol=1e-6)
    assert torch.all(weights[~mask] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    # the seed formula written out: softmax(Q K^T / sqrt(d_k)) V
    scores = (q[:, 0, 0, None, :] * keys).sum(-1) / math.sqrt(8)
    torch.testing.assert_close(weights, torch.softmax(scores.masked_fill(~mask, -math.inf), -1))


def small_attention(kind: str, **config):
    """An attention of `kind` over 10-wide memory for 6-wide queries, seeded."""
    torch.manual_seed(0)
    config = {"attention_dim": 8, "location_kernel_size": 5, **config}
    return build_attention(AttentionConfig(type=kind, **config), query_dim=6, memory_dim=10)


@pytest.mark.parametrize("kind,heads", [("dot", 1), ("dot", 2), ("additive", 1), ("location", 1)])
def test_every_attention_gives_a_distribution_over_valid_frames(kind, heads):
    attention = small_attention(kind, num_heads=heads)
    memory = torch.randn(2, 7, 10)
    mask = sequence_mask(torch.tensor([7, 3]), 7)
    previous = mask.float() / mask.sum(-1, keepdim=True)
    context, weights = attention(torch.randn(2, 6), attention.prepare(memory), memory, mask, previous)
    assert context.shape == (2, 10) and weights.shape == (2, 7)
    assert torch.all(weights[~mask] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))


@pytest.mark.parametrize("kind,heads", [("dot", 1), ("dot", 2), ("additive", 1), ("location", 1)])
def test_attention_shares_one_utterance_among_several_query_rows(kind, heads):
    """A beam search's layout: memory, keys and mask once per utterance, G query rows each."""
    attention = small_attention(kind, num_heads=heads)
    group = 3
    memory = torch.randn(2, 7, 10)
    mask = sequence_mask(torch.tensor([7, 4]), 7)
    rows = torch.arange(2).repeat_interleave(group)
    query = torch.randn(2 * group, 6)
    previous = torch.softmax(torch.randn(2 * group, 7).masked_fill(~mask[rows], -math.inf), -1)
    shared = attention(query, attention.prepare(memory), memory, mask, previous)
    memory_per_row = memory[rows]
    repeated = attention(query, attention.prepare(memory_per_row), memory_per_row, mask[rows], previous)
    for got, expected in zip(shared, repeated, strict=True):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected)
    assert torch.all(shared[1][~mask[rows]] == 0)


@pytest.mark.parametrize("kind,heads", [("dot", 1), ("dot", 2), ("additive", 1), ("location", 1)])
def test_attention_in_spans_equals_attention_over_the_padded_batch(kind, heads):
    """A beam search's length-sorted spans attend over their own frames only: same results."""
    attention = small_attention(kind, num_heads=heads)
    group = 2
    memory = torch.randn(4, 9, 10)
    lengths = torch.tensor([9, 8, 5, 3])
    memory = memory * sequence_mask(lengths, 9)[..., None]
    mask = sequence_mask(lengths, 9)
    rows = torch.arange(4).repeat_interleave(group)
    query = torch.randn(4 * group, 6)
    previous = torch.softmax(torch.randn(4 * group, 9).masked_fill(~mask[rows], -math.inf), -1)
    keys = attention.prepare(memory)
    whole = attention(query, keys, memory, mask, previous)
    spans = attention.forward_in_spans(query, keys, memory, mask, previous, [(0, 2, 9), (2, 3, 5), (3, 4, 3)])
    for got, expected in zip(spans, whole, strict=True):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected)
    assert torch.all(spans[1][~mask[rows]] == 0)


def test_location_features_in_search_equal_the_convolution(monkeypatch):
    """Without autograd the location convolution is a product with its banded matrix (built once,
    cut to each frame count, rebuilt when the weights change); long inputs use the windows."""
    import asr.model.attention as attention_module

    attention = small_attention("location", location_channels=3, location_kernel_size=7)
    weight = attention.location_conv.weight
    for frames in (200, 9, 1, 70):  # the first builds the largest matrix; the others cut it
        previous = torch.softmax(torch.randn(4, frames), -1)
        expected = F.conv1d(previous[:, None], weight, padding=3).transpose(1, 2)
        with torch.no_grad():
            torch.testing.assert_close(attention.location_features(previous), expected)
        torch.testing.assert_close(attention.location_features(previous), expected)  # windows, autograd
    assert attention_module._LOCATION_MATRICES[weight][1].shape == (200, 600)
    with torch.no_grad():
        weight.mul_(2)  # an optimiser step: the matrix follows
        expected = F.conv1d(previous[:, None], weight, padding=3).transpose(1, 2)
        torch.testing.assert_close(attention.location_features(previous), expected)
        monkeypatch.setattr(attention_module, "TOEPLITZ_MAX_FRAMES", 50)
        torch.testing.assert_close(attention.location_features(previous), expected)


@pytest.mark.parametrize("kind", ["additive", "location"])
def test_additive_and_location_attention_equal_their_formulas(kind):
    """e_t = v^T tanh(W_k h_t + W_q s [+ W_f (F * a_prev)_t]), the convolution as nn.functional.conv1d."""
    attention = small_attention(kind, location_channels=3)
    memory, query = torch.randn(2, 7, 10), torch.randn(2, 6)
    mask = sequence_mask(torch.tensor([7, 4]), 7)
    previous = torch.softmax(torch.randn(2, 7).masked_fill(~mask, -math.inf), -1)
    context, weights = attention(query, attention.prepare(memory), memory, mask, previous)
    energies = attention.key_projection(memory) + attention.query_projection(query)[:, None, :]
    if kind == "location":
        features = torch.nn.functional.conv1d(previous[:, None], attention.location_conv.weight, padding=2)
        energies = energies + attention.location_projection(features.transpose(1, 2))
    scores = attention.score(torch.tanh(energies)).squeeze(-1)
    expected = torch.softmax(scores.masked_fill(~mask, -math.inf), -1)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(context, (expected[..., None] * memory).sum(1))


@pytest.mark.parametrize("attention", ["dot", "additive", "location"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_decoder_forward_equals_a_loop_of_step(attention, cell):
    torch.manual_seed(0)
    model = LAS(tiny_config(attention=attention, cell=cell)).eval()
    decoder = model.decoder
    memory, memory_lens = torch.randn(2, 6, model.encoder.output_dim), torch.tensor([6, 3])
    tokens = torch.randint(2, 11, (2, 5))
    logits, weights = decoder(tokens, memory, memory_lens)
    mask = sequence_mask(memory_lens, 6)
    keys = decoder.attention.prepare(memory)
    state = decoder.initial_state(memory, memory_lens)
    for i in range(5):
        step_logits, state = decoder.step(tokens[:, i], state, keys, memory, mask)
        torch.testing.assert_close(step_logits, logits[:, i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state.weights, weights[:, i], rtol=1e-5, atol=1e-6)


def test_add_sos_eos():
    targets, lens = torch.tensor([[3, 4, 5], [6, 0, 0]]), torch.tensor([3, 1])
    tokens_in, tokens_out = add_sos_eos(targets, lens, sos_eos_id=9)
    assert tokens_in.tolist() == [[9, 3, 4, 5], [9, 6, 9, 9]]
    assert tokens_out.tolist() == [[3, 4, 5, 9], [6, 9, IGNORE_INDEX, IGNORE_INDEX]]


def test_model_outputs_are_padding_invariant():
    torch.manual_seed(0)
    model = LAS(tiny_config()).eval()
    short, long = torch.randn(4000), torch.randn(9000)
    waves = torch.zeros(2, 9000)
    waves[0, :4000], waves[1] = short, long
    together = model.encode(waves, torch.tensor([4000, 9000]))
    alone = model.encode(short[None], torch.tensor([4000]))
    length = int(alone.lengths[0])
    torch.testing.assert_close(together.output[0, :length], alone.output[0], rtol=1e-4, atol=1e-5)
    targets = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    loss_alone = model(short[None], torch.tensor([4000]), targets[1:, :2], torch.tensor([2]))
    loss_padded = model(waves[:1], torch.tensor([4000]), targets[1:], torch.tensor([2]))
    torch.testing.assert_close(loss_alone.loss, loss_padded.loss)


def test_model_config_round_trips_and_rejects_unknown_keys():
    config = tiny_config()
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown model config key"):
        ModelConfig.from_dict({**config.to_dict(), "encodr": {}})


def test_ctc_loss_is_finite_at_the_ctc_level():
    """At 4x reduction a 1 s clip has 25 CTC frames: enough for a 10-character target."""
    torch.manual_seed(0)
    model = LAS(tiny_config(ctc_weight=0.5)).train()
    output = model(
        torch.randn(2, 8000),
        torch.tensor([8000, 8000]),
        torch.randint(2, 11, (2, 10)),
        torch.tensor([10, 10]),
    )
    assert torch.isfinite(output.ctc_loss) and output.ctc_loss > 0


def test_tempo_and_frequency_warps_reach_the_loss_in_training_only():
    """With the warps on, a training step sees shorter or longer inputs (the CTC frames follow the new
    lengths) and its gradients flow; evaluation computes exactly what the model without them does."""
    torch.manual_seed(0)
    no_masks = SpecAugmentConfig(num_freq_masks=0, num_time_masks=0)
    warps = dataclasses.replace(no_masks, max_freq_warp=0.1, max_time_stretch=0.3)
    model = LAS(tiny_config(ctc_weight=0.5, spec_augment=warps))
    plain = LAS(tiny_config(ctc_weight=0.5, spec_augment=no_masks))
    plain.load_state_dict(model.state_dict())
    waves, lens = torch.randn(4, 8000), torch.full((4,), 8000)
    targets, target_lens = torch.randint(2, 11, (4, 6)), torch.full((4,), 6)
    feats, feat_lens = model.compute_features(waves, lens)
    model.train()
    lengths = {tuple(model.encode_features(feats, feat_lens).ctc_lengths.tolist()) for _ in range(5)}
    assert len(lengths) > 1  # a new rate per utterance and step
    output = model(waves, lens, targets, target_lens)
    output.loss.backward()
    gradient = model.encoder.layers[0].forward_lstm.weight_ih_l0.grad
    assert torch.isfinite(output.loss) and gradient.abs().sum() > 0
    model.eval(), plain.eval()
    expected = plain(waves, lens, targets, target_lens).loss
    torch.testing.assert_close(model(waves, lens, targets, target_lens).loss, expected)


def test_speaker_adversary_trains_its_classifier_and_reverses_the_encoders_gradient():
    """The classifier gets the speaker cross-entropy's own gradient; the frames it reads get that
    gradient times -weight. Padded frames and utterances of unknown speaker add nothing."""
    torch.manual_seed(0)
    config = SpeakerAdversaryConfig(weight=0.3, num_speakers=3, hidden_dim=8)
    adversary = SpeakerAdversary(config, input_dim=6)
    frames = torch.randn(3, 5, 6, requires_grad=True)
    lengths, speakers = torch.tensor([5, 3, 4]), torch.tensor([2, 0, IGNORE_INDEX])
    loss = adversary(frames, lengths, speakers)
    loss.backward()
    plain = frames.detach().clone().requires_grad_(True)
    logits = adversary.classifier(plain)
    labels = torch.tensor([[2] * 5, [0] * 3 + [IGNORE_INDEX] * 2, [IGNORE_INDEX] * 5])
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, expected)
    expected.backward()
    torch.testing.assert_close(frames.grad, -0.3 * plain.grad)
    assert frames.grad[1, 3:].abs().sum() == 0 and frames.grad[2].abs().sum() == 0
    classifier_grad = adversary.classifier[0].weight.grad
    assert classifier_grad.abs().sum() > 0


def test_speaker_adversary_is_off_in_evaluation_and_without_speakers():
    """The same weights give the plain model's loss in evaluation, or when a batch has no speaker
    ids; in training with them the loss adds the speaker term and the encoder gets its gradient."""
    torch.manual_seed(0)
    model = LAS(tiny_config(speaker_adversary=SpeakerAdversaryConfig(weight=0.5, num_speakers=2)))
    plain = LAS(tiny_config())
    plain.load_state_dict(model.state_dict(), strict=False)
    waves, lens = torch.randn(2, 8000), torch.full((2,), 8000)
    targets, target_lens = torch.randint(2, 11, (2, 6)), torch.full((2,), 6)
    model.eval(), plain.eval()
    speakers = torch.tensor([0, 1])
    torch.testing.assert_close(
        model(waves, lens, targets, target_lens, speakers).loss, plain(waves, lens, targets, target_lens).loss
    )
    model.train()
    output = model(waves, lens, targets, target_lens, speakers)
    assert output.speaker_loss > 0
    recognition = 0.7 * output.attention_loss + 0.3 * output.ctc_loss  # tiny_config's CTC weight 0.3
    torch.testing.assert_close(output.loss.detach(), recognition + output.speaker_loss)
    output.loss.backward()
    assert model.speaker_adversary.classifier[2].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="two speakers"):
        LAS(tiny_config(speaker_adversary=SpeakerAdversaryConfig(weight=0.5, num_speakers=1)))
