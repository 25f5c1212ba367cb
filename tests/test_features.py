import math

import torch
import torchaudio

from asr.features import (
    FeatureConfig,
    FeatureStatistics,
    GlobalNormalization,
    LogMelFeatures,
    SpecAugment,
    SpecAugmentConfig,
    sequence_mask,
)


def test_frame_count_follows_the_documented_formula():
    features = LogMelFeatures(FeatureConfig(sample_rate=16000))
    assert (features.win_length, features.hop_length, features.n_fft) == (400, 160, 512)
    lengths = torch.tensor([16000, 512, 100, 8000])
    expected = torch.tensor([1 + (16000 - 512) // 160, 1, 1, 1 + (8000 - 512) // 160])
    assert torch.equal(features.num_frames(lengths), expected)
    feats, feat_lens = features(torch.randn(4, 16000), lengths)
    assert feats.shape == (4, int(expected.max()), 80) and torch.equal(feat_lens, expected)


def test_features_of_an_utterance_do_not_depend_on_padding():
    torch.manual_seed(0)
    features = LogMelFeatures(FeatureConfig(sample_rate=8000, num_mel_bins=40))
    short, long = torch.randn(3000), torch.randn(8000)
    alone, alone_lens = features(short[None], torch.tensor([3000]))
    batch = torch.zeros(2, 8000)
    batch[0, :3000], batch[1] = short, long
    batch[0, 3000:] = 123.0  # garbage in the padding must not leak into the frames
    together, lens = features(batch, torch.tensor([3000, 8000]))
    assert lens[0] == alone_lens[0]
    torch.testing.assert_close(together[0, : lens[0]], alone[0], rtol=1e-5, atol=1e-5)


def test_high_pass_keeps_each_utterance_independent_of_its_padding():
    torch.manual_seed(0)
    features = LogMelFeatures(FeatureConfig(sample_rate=8000, num_mel_bins=40, high_pass_hz=80.0)).eval()
    lengths = torch.tensor([8000, 3000, 100, 5000])  # per utterance in eval, batched in training
    waves = torch.randn(4, 8000) * 0.1 + 0.3
    each, lens = features(waves, lengths)
    batched, _ = features.train()(waves, lengths)
    for row, length in enumerate(lens.tolist()):
        alone, _ = features(waves[row : row + 1, : lengths[row]], lengths[row : row + 1])
        torch.testing.assert_close(each[row, :length], alone[0], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(batched[row, :length], alone[0], rtol=1e-5, atol=1e-4)


def test_high_pass_removes_a_dc_offset_and_keeps_speech_bands():
    """Speech-band content passes unchanged; an offset, which fills the lowest mel bins, is gone."""
    t = torch.arange(16000) / 8000
    speech = 0.1 * torch.sin(2 * torch.pi * 300 * t) + 0.05 * torch.sin(2 * torch.pi * 1200 * t)
    lengths = torch.tensor([16000])
    plain = LogMelFeatures(FeatureConfig(sample_rate=8000, f_max=4000.0))
    filtered = LogMelFeatures(FeatureConfig(sample_rate=8000, f_max=4000.0, high_pass_hz=80.0))
    with_offset, _ = filtered((speech + 0.2)[None], lengths)
    clean, _ = filtered(speech[None], lengths)
    settled = slice(20, None)  # the filter's step response dies out within 0.2 s
    torch.testing.assert_close(with_offset[0, settled], clean[0, settled], rtol=0, atol=1e-2)
    unfiltered, _ = plain((speech + 0.2)[None], lengths)
    unfiltered_clean, _ = plain(speech[None], lengths)
    lowest_bins = (unfiltered - unfiltered_clean)[0, settled, :3]
    assert lowest_bins.min() > 5  # without it: > 5 nats in the lowest bins
    # the tones at 300 and 1200 Hz pass: the bins within 20 dB of the loudest are within 0.1 nat (0.4 dB)
    reference = unfiltered_clean[0, settled]
    tones = reference > reference.max() - 20 * math.log(10) / 10
    assert (clean[0, settled] - reference)[tones].abs().max() < 0.1


def test_a_batch_with_much_padding_gets_the_padded_transforms_frames(monkeypatch):
    """Over 25 % padding on the CPU in eval mode: one transform per utterance, the same valid frames."""
    import asr.features

    torch.manual_seed(0)
    features = LogMelFeatures(FeatureConfig(sample_rate=8000, num_mel_bins=40)).eval()
    lengths = torch.tensor([8000, 3000, 100, 5000])  # 49 % padding; 100 samples: shorter than an FFT
    waves = torch.randn(4, 8000)
    each, each_lens = features(waves, lengths)
    monkeypatch.setattr(asr.features, "PADDING_SHARE_PER_UTTERANCE", 1.0)  # never per utterance
    padded, padded_lens = features(waves, lengths)
    assert torch.equal(each_lens, padded_lens) and each.shape == padded.shape
    valid = sequence_mask(each_lens, each.shape[1])
    torch.testing.assert_close(each[valid], padded[valid], rtol=1e-5, atol=1e-5)
    assert torch.all(each[~valid] == torch.log(torch.tensor(features.config.log_floor)))
    monkeypatch.setattr(asr.features, "PADDING_SHARE_PER_UTTERANCE", 0.25)
    training, _ = features.train()(waves, lengths)  # training: the batched transform, as before
    assert torch.equal(training, padded)


def test_a_440_hz_tone_peaks_in_the_right_mel_bin():
    config = FeatureConfig(sample_rate=16000, num_mel_bins=80)
    features = LogMelFeatures(config)
    t = torch.arange(16000) / 16000
    feats, _ = features(torch.sin(2 * torch.pi * 440 * t)[None], torch.tensor([16000]))
    peak = int(feats[0].mean(0).argmax())
    centres = features.mel.mel_scale.fb.argmax(0)  # FFT bin at the top of each mel filter
    assert abs(int(centres[peak]) * 16000 / features.n_fft - 440) < 60


def test_normalisation_uses_statistics_and_zeroes_padding():
    feats = torch.randn(2, 50, 4) * 3 + 7
    lens = torch.tensor([50, 30])
    statistics = FeatureStatistics()
    statistics.update(feats, lens)
    mean, std = statistics.mean_and_std()
    valid = feats[sequence_mask(lens)]
    torch.testing.assert_close(mean, valid.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(std, valid.std(0, unbiased=False), rtol=1e-4, atol=1e-4)
    normalization = GlobalNormalization(4)
    normalization.set_statistics(mean, std)
    normalised = normalization(feats, lens)
    assert normalised[1, 30:].abs().sum() == 0
    torch.testing.assert_close(normalised[sequence_mask(lens)].mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    assert set(dict(normalization.named_buffers())) == {"mean", "std"}  # saved with the weights


def test_spec_augment_masks_only_in_training_and_within_each_length():
    torch.manual_seed(0)
    augment = SpecAugment(
        SpecAugmentConfig(
            num_freq_masks=2, max_freq_width=5, num_time_masks=2, max_time_width=10, max_time_ratio=0.2
        )
    )
    feats = torch.ones(8, 100, 40)
    lens = torch.tensor([100, 80, 60, 40, 20, 10, 5, 100])
    augment.eval()
    assert torch.equal(augment(feats, lens), feats)
    augment.train()
    masked = augment(feats, lens) == 0
    assert masked.any()
    for row, length in enumerate(lens.tolist()):
        time_masked = masked[row].all(dim=1)  # frames masked across every bin
        assert int(time_masked.sum()) <= 2 * min(10, int(0.2 * length))
        assert not time_masked[length:].any()
        freq_masked = masked[row, :length].all(dim=0)
        assert int(freq_masked.sum()) <= 2 * 5


def test_frequency_warp_moves_a_tone_where_a_scaled_tone_lies():
    """VTLP: a tone warped by alpha has the log-mel spectrum of the tone at alpha times its frequency."""
    config = FeatureConfig(sample_rate=8000, f_max=4000.0)
    features, augment = LogMelFeatures(config), SpecAugment(SpecAugmentConfig(max_freq_warp=0.12), config)
    t = torch.arange(8000) / 8000

    def tone(hz):
        return features(torch.sin(2 * math.pi * hz * t)[None], torch.tensor([8000]))[0]

    for hz in (500.0, 1000.0, 2500.0):  # below, an 8 kHz FFT's 31 Hz bins are coarser than the mel bins
        for alpha in (0.9, 1.1):
            warped = augment.warp_frequency(tone(hz), torch.tensor([alpha]))
            target, original = tone(hz * alpha), tone(hz)
            assert warped[0].mean(0).argmax() == target[0].mean(0).argmax() != original[0].mean(0).argmax()
            assert (warped - target).abs().mean() < 0.7 * (original - target).abs().mean()
    feats = torch.randn(2, 30, 80)
    torch.testing.assert_close(augment.warp_frequency(feats, torch.ones(2)), feats, atol=1e-4, rtol=0)
    # the top of the band maps to itself, so alpha < 1 does not read beyond the top bin
    top = torch.zeros(1, 1, 80)
    top[..., -1] = 1.0
    assert augment.warp_frequency(top, torch.tensor([0.88]))[0, 0, -1] == 1.0


def test_time_stretch_resamples_each_utterance_to_its_own_rate():
    augment = SpecAugment(SpecAugmentConfig(max_time_stretch=0.2))
    ramp = torch.arange(40.0)[None, :, None].expand(3, 40, 4).clone()
    lens = torch.tensor([40, 21, 1])
    stretched, new_lens = augment.stretch_time(ramp, lens, torch.tensor([0.5, 1.25, 2.0]))
    assert new_lens.tolist() == [80, 17, 1]
    torch.testing.assert_close(stretched[0, :80, 0], torch.linspace(0, 39, 80))  # slower: frames in between
    torch.testing.assert_close(stretched[1, :17, 0], torch.linspace(0, 20, 17))  # never past its own end
    assert stretched[2, 0, 0] == 0.0
    same, same_lens = augment.stretch_time(ramp, lens, torch.ones(3))
    valid = sequence_mask(lens)
    assert torch.equal(same_lens, lens) and torch.equal(same[valid], ramp[valid])


def test_warps_draw_factors_in_range_and_only_in_training():
    torch.manual_seed(0)
    config = FeatureConfig(sample_rate=8000, f_max=4000.0, num_mel_bins=40)
    augment = SpecAugment(SpecAugmentConfig(max_freq_warp=0.1, max_time_stretch=0.2), config)
    feats, lens = torch.randn(64, 100, 40), torch.full((64,), 100)
    assert augment.eval().warp(feats, lens)[0] is feats
    warped, new_lens = augment.train().warp(feats, lens)
    assert new_lens.min() >= round(100 / 1.2) and new_lens.max() <= round(100 / 0.8)
    assert len(set(new_lens.tolist())) > 10 and warped.shape == (64, int(new_lens.max()), 40)
    assert not torch.equal(augment.warp(feats, lens)[0], augment.warp(feats, lens)[0])
    off = SpecAugment(SpecAugmentConfig()).train()
    assert off.warp(feats, lens)[0] is feats


def test_utterance_mean_over_speech_frames_ignores_added_silence():
    """Cepstral mean normalisation over the frames near the loudest one: a pause of digital silence
    appended to an utterance leaves its speech frames as they were, where the mean over every frame
    moves them (silence pulls it towards log_floor)."""
    torch.manual_seed(0)
    speech = 0.1 * torch.randn(4000) * torch.hann_window(4000)  # 0.5 s at 8 kHz, loud in the middle
    with_pause = torch.cat([speech, torch.zeros(8000)])
    waves = torch.nn.utils.rnn.pad_sequence([speech, with_pause], batch_first=True)
    lengths = torch.tensor([4000, 12000])
    for range_db, moved in ((30.0, False), (None, True)):
        config = FeatureConfig(sample_rate=8000, utterance_mean_norm=True, mean_norm_range_db=range_db)
        feats, feat_lens = LogMelFeatures(config)(waves, lengths)
        frames = int(feat_lens[0])
        assert torch.count_nonzero(feats[0, frames:]) == 0  # padding stays zero
        close = torch.allclose(feats[0, :frames], feats[1, :frames], atol=1e-4)
        assert close != moved


def test_utterance_mean_with_prior_removes_level_and_part_of_the_shape():
    """With `mean_norm_prior_frames`, the utterance's level is removed in full (louder input gives the
    same frames) and its mean spectral shape weighted n / (n + prior): n = 47 frames against a prior of
    100 leave 100 / 147 of the shape in place."""
    torch.manual_seed(0)
    noise = 0.1 * torch.randn(4000)  # 0.5 s at 8 kHz: 47 frames, all within 30 dB of the loudest
    coloured = torchaudio.functional.lowpass_biquad(noise, 8000, 1000.0) + 0.2 * noise
    waves = torch.stack([coloured, 10 * coloured])
    lengths = torch.tensor([4000, 4000])
    plain, _ = LogMelFeatures(FeatureConfig(sample_rate=8000))(waves, lengths)
    config = FeatureConfig(
        sample_rate=8000, utterance_mean_norm=True, mean_norm_range_db=30.0, mean_norm_prior_frames=100.0
    )
    feats, feat_lens = LogMelFeatures(config)(waves, lengths)
    assert int(feat_lens[0]) == 47
    torch.testing.assert_close(feats[0], feats[1], atol=5e-3, rtol=0)  # 20 dB louder, same frames
    shape = plain[0].mean(0) - plain[0].mean()
    assert shape.abs().max() > 2  # the low-pass colours the spectrum
    torch.testing.assert_close(feats[0].mean(0), shape * 100 / 147, atol=1e-4, rtol=1e-4)
