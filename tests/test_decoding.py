import functools
import itertools
import math
from collections import defaultdict

import pytest
import torch

from asr import beam_search
from asr.beam_search import length_spans
from asr.ctc_prefix import CTCPrefixScorer, SpanCTCPrefixScorer
from asr.decoding import DecodingOptions, Hypothesis, decode, search
from asr.features import FeatureConfig, SpecAugmentConfig
from asr.lm import LanguageModelConfig, LSTMLanguageModel
from asr.model import LAS, AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig

VOCAB_SIZE = 12
EOS = VOCAB_SIZE - 1
WAVE_LENGTHS = [8000, 6400, 5200, 4000, 2800, 1600]  # samples at 8 kHz: 13 .. 3 attention frames


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    waves = 0.1 * torch.randn(len(WAVE_LENGTHS), max(WAVE_LENGTHS), generator=generator)
    lengths = torch.tensor(WAVE_LENGTHS)
    return waves * (torch.arange(waves.shape[1]) < lengths[:, None]), lengths


@functools.cache
def _trained_model(attention_type: str = "location") -> LAS:
    """A tiny LAS trained for a few steps to map each random utterance to its own short target,
    so that searches produce several tokens and end by themselves."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=VOCAB_SIZE,
        features=FeatureConfig(sample_rate=8000, num_mel_bins=20),
        spec_augment=SpecAugmentConfig(num_freq_masks=0, num_time_masks=0),
        encoder=EncoderConfig(input_dim=20, hidden_dim=16, num_layers=0, num_pyramid_levels=3, ctc_level=2),
        attention=AttentionConfig(type=attention_type, attention_dim=16, location_kernel_size=5),
        decoder=DecoderConfig(embedding_dim=8, hidden_dim=16),
        ctc_weight=0.5,
        label_smoothing=0.0,
    )
    model = LAS(config)
    waves, lengths = _batch()
    feats, feat_lens = model.compute_features(waves, lengths)
    valid = feats[torch.arange(feats.shape[1]) < feat_lens[:, None]]
    model.normalization.set_statistics(valid.mean(0), valid.std(0))
    target_lens = torch.tensor([5, 4, 4, 3, 2, 2])
    targets = torch.randint(2, VOCAB_SIZE - 1, (len(WAVE_LENGTHS), 5))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(40):
        optimizer.zero_grad(set_to_none=True)
        model(waves, lengths, targets, target_lens).loss.backward()
        optimizer.step()
    return model.eval()


def _encode(model, waves, lengths):
    with torch.inference_mode():
        return model.encode(waves, lengths)


def _ctc_log_probs(model, encoded) -> torch.Tensor:
    with torch.inference_mode():
        return model.ctc_log_probs(encoded).double()


def _log_sum_exp(*values: float) -> float:
    top = max(values)
    return top if top == -math.inf else top + math.log(sum(math.exp(v - top) for v in values))


def _reference_ctc_prefix(log_probs: list[list[float]], prefix: tuple[int, ...], exact: bool) -> float:
    """log p(exactly `prefix`), or of every label sequence that starts with it, from the textbook CTC
    forward variables over the blank-extended labels (Graves et al. 2006), one frame at a time."""
    labels = [-1, 0]  # -1: a virtual start state before the first frame
    for token in prefix:
        labels += [token, 0]
    alpha = [0.0] + [-math.inf] * (len(labels) - 1)
    last, entered = len(labels) - 2, -math.inf  # the prefix's last label; paths that reach it

    def arrivals(s):  # states a path comes from into state s, other than s itself
        sources = [alpha[s - 1]]
        if labels[s] != 0 and s >= 2 and labels[s - 2] != labels[s]:
            sources.append(alpha[s - 2])
        return sources

    for frame in log_probs:
        if prefix:  # the last label starts at this frame; whatever follows sums to one
            entered = _log_sum_exp(entered, _log_sum_exp(*arrivals(last)) + frame[labels[last]])
        alpha = [-math.inf] + [
            _log_sum_exp(alpha[s], *arrivals(s)) + frame[labels[s]] for s in range(1, len(labels))
        ]
    if exact:
        return _log_sum_exp(alpha[-1], alpha[-2])
    return entered if prefix else 0.0


def test_ctc_prefix_scores_match_brute_force_over_all_paths():
    torch.manual_seed(0)
    vocab, lengths = 5, torch.tensor([6, 4])  # blank 0, units 1..3, eos 4
    log_probs = torch.log_softmax(2 * torch.randn(2, 6, vocab, dtype=torch.float64), dim=-1).float()

    def brute_force(utterance, prefix, exact):
        total = 0.0
        for path in itertools.product(range(vocab), repeat=int(lengths[utterance])):
            collapsed = tuple(k for i, k in enumerate(path) if k != 0 and (i == 0 or path[i - 1] != k))
            if collapsed == prefix if exact else collapsed[: len(prefix)] == prefix:
                total += math.exp(sum(log_probs[utterance, t, k].item() for t, k in enumerate(path)))
        return math.log(total)

    scorer = CTCPrefixScorer(log_probs, lengths, slice(1, vocab - 1))
    state, last = scorer.initial_state(1), torch.full((2, 1), vocab - 1)
    units = torch.arange(1, vocab - 1).expand(2, 1, -1)
    sequences = torch.tensor([[2, 2, 1], [3, 1, 1]])  # repeats need a blank in between
    for step in range(3):
        psi, final = scorer.score(state, last, units, all_units=True), scorer.final(state)
        torch.testing.assert_close(scorer.score(state, last, units.flip(-1), all_units=False), psi.flip(-1))
        for utterance in range(2):
            prefix = tuple(sequences[utterance, :step].tolist())
            assert final[utterance, 0].item() == pytest.approx(brute_force(utterance, prefix, True), abs=1e-5)
            for token in range(1, vocab - 1):
                expected = brute_force(utterance, (*prefix, token), False)
                assert psi[utterance, 0, token - 1].item() == pytest.approx(expected, abs=1e-5)
        tokens = sequences[:, step : step + 1]
        state = scorer.extend(
            state, torch.zeros_like(tokens), tokens, last, psi.gather(2, tokens[..., None] - 1)[..., 0]
        )
        last = tokens


def test_reference_ctc_prefix_agrees_with_ctc_loss():
    log_probs = torch.log_softmax(torch.randn(7, 5), dim=-1)
    rows = log_probs.tolist()
    loss = torch.nn.functional.ctc_loss(
        log_probs[:, None], torch.tensor([[2, 2, 3]]), [7], [3], reduction="sum"
    )
    assert _reference_ctc_prefix(rows, (2, 2, 3), exact=True) == pytest.approx(-loss.item(), abs=1e-5)
    total = _log_sum_exp(*[_reference_ctc_prefix(rows, (k,), exact=False) for k in range(1, 5)])
    assert _log_sum_exp(total, _reference_ctc_prefix(rows, (), exact=True)) == pytest.approx(0.0, abs=1e-5)


def _greedy_reference(model, waves, lengths, ctc_weight, max_length_ratio=2.0):
    """Greedy joint decoding of one utterance, one token at a time, with the textbook CTC prefix scores."""
    encoded = _encode(model, waves, lengths)
    memory, memory_lens = encoded.output, encoded.lengths
    ctc_rows = _ctc_log_probs(model, encoded)[0].tolist()

    def ctc(tokens, exact):
        return _reference_ctc_prefix(ctc_rows, tuple(tokens), exact) if ctc_weight else 0.0

    decoder, tokens, attention_sum = model.decoder, [], 0.0
    with torch.inference_mode():
        keys, mask = decoder.attention.prepare(memory), torch.ones(1, memory.shape[1], dtype=torch.bool)
        state, previous = decoder.initial_state(memory, memory_lens), torch.tensor([EOS])
        while True:
            logits, state = decoder.step(previous, state, keys, memory, mask)
            attention = torch.log_softmax(logits[0].double(), dim=-1).tolist()
            options = {EOS: (1 - ctc_weight) * attention[EOS] + ctc_weight * ctc(tokens, exact=True)}
            if len(tokens) < math.floor(max_length_ratio * memory.shape[1]):
                for token in range(1, EOS):
                    options[token] = (1 - ctc_weight) * attention[token] + ctc_weight * ctc(
                        [*tokens, token], False
                    )
            best = max(options, key=options.get)
            attention_sum += attention[best]
            if best == EOS:
                return tokens, (1 - ctc_weight) * attention_sum + ctc_weight * ctc(tokens, exact=True)
            tokens.append(best)
            previous = torch.tensor([best])


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
def test_beam_size_one_is_greedy_search(ctc_weight):
    model = _trained_model()
    waves, lengths = _batch()
    options = DecodingOptions(beam_size=1, ctc_weight=ctc_weight, eos_threshold=math.inf)
    results = search(model, _encode(model, waves, lengths), options)
    for i, length in enumerate(lengths.tolist()):
        expected_tokens, expected_score = _greedy_reference(
            model, waves[i : i + 1, :length], lengths[i : i + 1], ctc_weight
        )
        assert len(results[i]) == 1
        assert results[i][0].tokens == expected_tokens
        assert results[i][0].score == pytest.approx(expected_score, abs=1e-4)
    assert any(len(nbest[0].tokens) >= 2 for nbest in results)  # the model says something


def _assert_same_hypotheses(first: list[Hypothesis], second: list[Hypothesis]):
    assert [h.tokens for h in first] == [h.tokens for h in second]
    for a, b in zip(first, second, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.ended_by == b.ended_by
        torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("beam_size", "ctc_weight", "ctc_pre_beam"),
    [(1, 0.0, 0), (1, 0.5, 0), (4, 0.0, 0), (4, 0.5, 0), (4, 0.5, 3)],
)
@pytest.mark.parametrize("span_cost", [None, 0, 5])
def test_batched_search_equals_one_utterance_at_a_time(
    beam_size, ctc_weight, ctc_pre_beam, span_cost, monkeypatch
):
    """span_cost 0 cuts the batch into one span per length, 5 (per row) into a few (`length_spans`)."""
    model = _trained_model()
    waves, lengths = _batch()
    options = DecodingOptions(beam_size=beam_size, ctc_weight=ctc_weight, ctc_pre_beam=ctc_pre_beam)
    encoded = _encode(model, waves, lengths)
    if span_cost is not None:
        monkeypatch.setattr(beam_search, "SPAN_COST", span_cost * beam_size)
        spans = length_spans(encoded.lengths.sort(descending=True).values.tolist(), beam_size)
        assert 1 < len(spans) < len(WAVE_LENGTHS) or (span_cost == 0 and len(spans) == len(WAVE_LENGTHS))
    batched = search(model, encoded, options)
    for i, length in enumerate(lengths.tolist()):
        alone = search(model, _encode(model, waves[i : i + 1, :length], lengths[i : i + 1]), options)
        _assert_same_hypotheses(batched[i], alone[0])


def _reference_ctc_prefix_beam_search(log_probs: list[list[float]], beam_size: int) -> tuple[int, ...]:
    """Frame-synchronous CTC prefix beam search (Hannun et al. 2014), over every id but eos."""
    beams = {(): (0.0, -math.inf)}  # prefix -> (log p ending in blank, log p ending in a label)
    for frame in log_probs:
        following = defaultdict(lambda: [-math.inf, -math.inf])
        for prefix, (blank, label) in beams.items():
            entry = following[prefix]
            entry[0] = _log_sum_exp(entry[0], blank + frame[0], label + frame[0])
            for token in range(1, EOS):
                extended = following[(*prefix, token)]
                if prefix and prefix[-1] == token:
                    extended[1] = _log_sum_exp(extended[1], blank + frame[token])
                    entry[1] = _log_sum_exp(entry[1], label + frame[token])
                else:
                    extended[1] = _log_sum_exp(extended[1], blank + frame[token], label + frame[token])
        ranked = sorted(following.items(), key=lambda item: -_log_sum_exp(*item[1]))
        beams = dict(ranked[:beam_size])
    return max(beams, key=lambda prefix: _log_sum_exp(*beams[prefix]))


def test_ctc_weight_one_gives_the_ctc_prefix_beam_search_result():
    model = _trained_model()
    waves, lengths = _batch()
    encoded = _encode(model, waves, lengths)
    # Label-synchronous search prunes by prefix probability, an upper bound on every continuation, so
    # with a flat CTC and a narrow beam an early eos can lose its slot; a wide beam makes both exact.
    results = search(model, encoded, DecodingOptions(beam_size=32, ctc_weight=1.0))
    log_probs = _ctc_log_probs(model, encoded)
    for i, ctc_length in enumerate(encoded.ctc_lengths.tolist()):
        rows = log_probs[i, :ctc_length].tolist()
        best = results[i][0]
        assert tuple(best.tokens) == _reference_ctc_prefix_beam_search(rows, beam_size=32)
        assert best.score == pytest.approx(
            _reference_ctc_prefix(rows, tuple(best.tokens), exact=True), abs=1e-4
        )
        assert best.ctc_score == pytest.approx(best.score, abs=1e-9)


def test_ctc_pre_beam_scores_fewer_candidates_and_finds_the_same_best_hypotheses():
    model = _trained_model()
    waves, lengths = _batch()
    encoded = _encode(model, waves, lengths)
    full = search(model, encoded, DecodingOptions(beam_size=4, ctc_weight=0.5, ctc_pre_beam=0))
    pre_beam = search(model, encoded, DecodingOptions(beam_size=4, ctc_weight=0.5, ctc_pre_beam=3))
    for a, b in zip(full, pre_beam, strict=True):
        assert a[0].tokens == b[0].tokens
        assert a[0].score == pytest.approx(b[0].score, abs=1e-6)


def _never_ending_model() -> LAS:
    model = _trained_model()
    never = LAS(model.config)
    never.load_state_dict(model.state_dict())
    with torch.no_grad():
        never.decoder.output.bias[EOS] = -1e4
    return never.eval()


@pytest.mark.parametrize(("ctc_weight", "max_length_ratio"), [(0.0, 1.5), (0.3, 0.5), (0.0, 0.1)])
def test_max_length_ends_every_hypothesis(ctc_weight, max_length_ratio):
    model = _never_ending_model()
    waves, lengths = _batch()
    encoded = _encode(model, waves, lengths)
    options = DecodingOptions(beam_size=3, ctc_weight=ctc_weight, max_length_ratio=max_length_ratio)
    for nbest, frames in zip(search(model, encoded, options), encoded.lengths.tolist(), strict=True):
        assert nbest
        for hypothesis in nbest:
            assert len(hypothesis.tokens) == math.floor(max_length_ratio * frames)
            assert hypothesis.ended_by == "max_length"


def test_hypotheses_end_where_ctc_allows_no_more_labels():
    """A prefix needs a CTC frame per label (two between repeats): once none fits, eos is allowed
    even though the eos threshold of this never-ending attention would block it."""
    model = _never_ending_model()
    waves, lengths = _batch()
    encoded = _encode(model, waves, lengths)
    options = DecodingOptions(beam_size=3, ctc_weight=0.5, max_length_ratio=3.0)
    for nbest, ctc_frames in zip(search(model, encoded, options), encoded.ctc_lengths.tolist(), strict=True):
        assert nbest and all(math.isfinite(h.score) and len(h.tokens) <= ctc_frames for h in nbest)
        assert all(h.ended_by == "eos" for h in nbest)


def test_min_length_holds_for_every_hypothesis():
    model = _trained_model()
    waves, lengths = _batch()
    encoded = _encode(model, waves, lengths)
    natural = search(model, encoded, DecodingOptions(beam_size=3))
    frames = encoded.lengths.tolist()
    assert any(len(nbest[0].tokens) < frames[i] for i, nbest in enumerate(natural))  # the limit matters
    longer = search(model, encoded, DecodingOptions(beam_size=3, min_length_ratio=1.0))
    for nbest, count in zip(longer, frames, strict=True):
        assert nbest and all(len(h.tokens) >= count for h in nbest)


def _language_model(favourite: int | None = None) -> LSTMLanguageModel:
    torch.manual_seed(3)
    lm = LSTMLanguageModel(LanguageModelConfig(VOCAB_SIZE, embedding_dim=8, hidden_dim=16, num_layers=1))
    if favourite is not None:  # log p(favourite) ~ 0 after any prefix, every other token ~ -8
        with torch.no_grad():
            lm.output.weight.zero_()
            lm.output.bias.fill_(-8.0)
            lm.output.bias[favourite] = 0.0
    return lm.eval()


def _lm_log_prob(lm: LSTMLanguageModel, tokens: list[int]) -> float:
    with torch.inference_mode():
        tokens_in = torch.tensor([[EOS, *tokens]])
        log_probs = torch.log_softmax(lm(tokens_in, torch.tensor([len(tokens) + 1])), dim=-1)[0]
        return log_probs.gather(1, torch.tensor([*tokens, EOS])[:, None]).sum().item()


def test_lm_weight_zero_changes_nothing():
    model = _trained_model()
    waves, lengths = _batch()
    encoded = _encode(model, waves, lengths)
    options = DecodingOptions(beam_size=3, ctc_weight=0.3)
    without = search(model, encoded, options)
    for results in (
        search(model, encoded, options, lm=_language_model()),
        search(model, encoded, DecodingOptions(beam_size=3, ctc_weight=0.3, lm_weight=0.5)),
    ):
        for a, b in zip(without, results, strict=True):
            _assert_same_hypotheses(a, b)


def test_shallow_fusion_moves_the_output_toward_the_language_model():
    model, favourite = _trained_model(), 4
    waves, lengths = _batch()
    encoded = _encode(model, waves, lengths)
    lm = _language_model(favourite)
    plain = search(model, encoded, DecodingOptions(beam_size=4, ctc_weight=0.3))
    fused = search(model, encoded, DecodingOptions(beam_size=4, ctc_weight=0.3, lm_weight=1.0), lm=lm)

    def share(results):
        tokens = [t for nbest in results for t in nbest[0].tokens]
        return tokens.count(favourite) / max(len(tokens), 1)

    assert share(fused) > share(plain) + 0.3
    for nbest in fused:
        assert nbest[0].lm_score == pytest.approx(_lm_log_prob(lm, nbest[0].tokens), abs=1e-4)
    assert sum(nbest[0].lm_score for nbest in fused) > sum(_lm_log_prob(lm, n[0].tokens) for n in plain)


@pytest.mark.parametrize("ctc_weight", [0.0, 0.5])
def test_blank_is_never_emitted(ctc_weight):
    model = _trained_model()
    blank_loving = LAS(model.config)
    blank_loving.load_state_dict(model.state_dict())
    with torch.no_grad():
        blank_loving.decoder.output.bias[0] = 30.0
    blank_loving.eval()
    waves, lengths = _batch()
    options = DecodingOptions(beam_size=4, ctc_weight=ctc_weight, eos_threshold=math.inf)
    for nbest in search(blank_loving, _encode(blank_loving, waves, lengths), options):
        assert nbest and all(0 not in h.tokens for h in nbest)


@pytest.mark.parametrize("attention_type", ["dot", "additive", "location"])
def test_attention_and_scores_match_teacher_forcing(attention_type):
    """Back-pointers gather the right attention rows: the search's weights and attention scores equal
    those of the decoder run over the hypothesis with teacher forcing."""
    model = _trained_model(attention_type)
    waves, lengths = _batch()
    encoded = _encode(model, waves, lengths)
    results = search(model, encoded, DecodingOptions(beam_size=3, ctc_weight=0.3, coverage_weight=0.2))
    for i, nbest in enumerate(results):
        frames = int(encoded.lengths[i])
        assert 1 <= len(nbest) <= 3
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
        for hypothesis in nbest:
            tokens_in = torch.tensor([[EOS, *hypothesis.tokens]])
            with torch.inference_mode():
                logits, weights = model.decoder(
                    tokens_in, encoded.output[i : i + 1, :frames], encoded.lengths[i : i + 1]
                )
            log_probs = torch.log_softmax(logits[0].double(), dim=-1)
            expected = log_probs.gather(1, torch.tensor([*hypothesis.tokens, EOS])[:, None]).sum().item()
            assert hypothesis.attention.shape == (len(hypothesis.tokens) + 1, frames)
            torch.testing.assert_close(hypothesis.attention, weights[0], atol=1e-5, rtol=1e-4)
            assert hypothesis.attention_score == pytest.approx(expected, abs=1e-4)


def test_decode_returns_the_best_of_search_and_needs_eval_mode():
    model = _trained_model()
    waves, lengths = _batch()
    options = DecodingOptions(beam_size=2, ctc_weight=0.0)
    best = decode(model, waves, lengths, options)
    assert all(h.ctc_score is None and h.lm_score is None for h in best)
    assert [h.tokens for h in best] == [
        n[0].tokens for n in search(model, _encode(model, waves, lengths), options)
    ]
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            decode(model, waves, lengths, options)
    finally:
        model.eval()


def test_options_are_validated():
    with pytest.raises(ValueError):
        DecodingOptions(beam_size=0)
    with pytest.raises(ValueError):
        DecodingOptions(ctc_weight=1.5)
    with pytest.raises(ValueError):
        DecodingOptions(min_length_ratio=3.0, max_length_ratio=2.0)


def test_length_spans_cut_mixed_lengths_and_keep_similar_ones_together(monkeypatch):
    monkeypatch.setattr(beam_search, "SPAN_COST", 1000)
    assert length_spans([40, 40, 39, 39, 38, 38, 37, 37], 10) == [8]  # cutting would save too little
    mixed = [66, 56, 56, 47, 41, 39, 38, 33, 32, 31, 28, 26, 25, 22, 15, 12]  # a batch of digit strings
    sizes = length_spans(mixed, 10)
    assert sum(sizes) == len(mixed) and 1 < len(sizes) < len(mixed)
    assert length_spans(mixed, 1) == [16]  # greedy: ten times fewer rows, nothing worth a span
    monkeypatch.setattr(beam_search, "SPAN_COST", 0)
    assert length_spans([5, 5, 3, 2, 2], 4) == [2, 1, 2]  # free spans: one per distinct length
    assert length_spans([], 4) == []


def test_span_ctc_scorer_gives_every_utterance_its_own_scores():
    """Spans score over their own frames: the same prefix scores, finals and forward variables as
    one scorer over the padded batch, through extensions and a selection that empties a span."""
    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([9, 8, 5, 3])
    log_probs = torch.log_softmax(torch.randn(4, 9, 6, generator=generator), -1)
    units, beam = slice(1, 5), 3
    whole = CTCPrefixScorer(log_probs, lengths, units)
    spans = SpanCTCPrefixScorer(log_probs, lengths, units, [2, 1, 1])
    whole_state, span_state = whole.initial_state(beam), spans.initial_state(beam)
    last = torch.full((4, beam), 5)  # sos: equal to no candidate
    candidates = torch.arange(1, 5).expand(4, beam, -1)
    for step in range(3):
        for got, expected in (
            (
                spans.score(span_state, last, candidates, True),
                whole.score(whole_state, last, candidates, True),
            ),
            (spans.final(span_state), whole.final(whole_state)),
        ):
            torch.testing.assert_close(got, expected)
        parents = torch.randint(0, beam, (len(lengths), beam), generator=generator)
        tokens = torch.randint(1, 5, (len(lengths), beam), generator=generator)
        parent_last = last.gather(1, parents)
        prefix = whole.score(whole_state, last, candidates, True).gather(2, (tokens - 1)[..., None])[..., 0]
        whole_state = whole.extend(whole_state, parents, tokens, parent_last, prefix)
        span_state = spans.extend(span_state, parents, tokens, parent_last, prefix)
        last = tokens
        if step == 1:  # drop utterance 2, the only one of the second span, and utterance 0
            keep = torch.tensor([1, 3])
            whole_state, whole = whole.select_state(whole_state, keep), whole.select(keep)
            span_state, spans = spans.select_state(span_state, keep), spans.select(keep)
            lengths, last, candidates = lengths[keep], last[keep], candidates[keep]
            assert spans.sizes == [1, 1]
    for part, expected in zip(span_state, whole_state.nonblank.split(spans.sizes), strict=True):
        frames = part.nonblank.shape[-1]
        torch.testing.assert_close(part.nonblank, expected[..., :frames])


def test_batched_search_in_spans_with_lm_and_coverage_equals_one_utterance_at_a_time(monkeypatch):
    monkeypatch.setattr(beam_search, "SPAN_COST", 0)  # one span per length
    model, lm = _trained_model(), _language_model()
    waves, lengths = _batch()
    options = DecodingOptions(
        beam_size=4, ctc_weight=0.5, lm_weight=0.5, coverage_weight=0.3, length_bonus=0.2
    )
    batched = search(model, _encode(model, waves, lengths), options, lm)
    for i, length in enumerate(lengths.tolist()):
        alone = search(model, _encode(model, waves[i : i + 1, :length], lengths[i : i + 1]), options, lm)
        _assert_same_hypotheses(batched[i], alone[0])
