"""Waveform -> log-mel frames -> global mean/variance normalisation -> SpecAugment.

These modules live *inside* the model so that training and inference can never compute features
differently (a pretrained kospeech model gave gibberish for that reason, kospeech#69). They always
run in fp32: the caller disables autocast around them (espnet#1836, speechbrain#1803).
"""

import math
from dataclasses import dataclass

import torch
import torchaudio
from torch import nn


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000  # audio is resampled to this rate before the model sees it
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0  # analysis window; the FFT size is the next power of two
    frame_shift_ms: float = 10.0
    f_min: float = 20.0
    f_max: float | None = None  # None: the Nyquist frequency; 4000 makes 8 kHz and 16 kHz audio look alike
    high_pass_hz: float | None = None  # a 2nd-order Butterworth high-pass on the waveform first: takes out
    # a DC offset and rumble below speech; None: off
    log_floor: float = 1e-6  # added to mel energies before the log, about -90 dB below full-scale speech
    utterance_mean_norm: bool = False  # subtract each utterance's own mean per bin (cepstral mean
    # normalisation): removes the fixed colouring of a microphone or channel before the global statistics
    mean_norm_range_db: float | None = None  # with utterance_mean_norm: the mean over the frames within
    # this many dB of the utterance's loudest one (its speech), so pauses do not set it; None: every frame
    mean_norm_prior_frames: float | None = None  # with utterance_mean_norm: subtract the mean's level
    # (its average over bins) in full and its spectral shape weighted n / (n + this), n the frames
    # averaged, so one short word keeps most of its own shape; None: the whole mean


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment (Park et al. 2019) and two warps of each utterance's frames; training only."""

    num_freq_masks: int = 2
    max_freq_width: int = 15  # mel bins
    num_time_masks: int = 2
    max_time_width: int = 40  # frames
    max_time_ratio: float = 0.1  # a time mask covers at most this share of its utterance
    max_freq_warp: float = 0.0  # vocal tract length perturbation (Jaitly & Hinton 2013): each utterance's
    # spectrum scaled in frequency by a factor from [1 - this, 1 + this], the band's top kept; 0: off
    max_time_stretch: float = 0.0  # tempo: each utterance's frames resampled to a rate from
    # [1 - this, 1 + this] of its own, the spectrum kept (speed perturbation changes both); 0: off


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid positions."""
    max_length = int(lengths.max()) if max_length is None else max_length
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


# In eval mode on the CPU (decoding), a batch whose padding exceeds this share of its samples is
# transformed one utterance at a time (`LogMelFeatures._log_mel_each`), which skips the padding.
# Training batches are duration-bucketed and keep the one batched transform, and with it their
# exact values from run to run.
PADDING_SHARE_PER_UTTERANCE = 0.25


class LogMelFeatures(nn.Module):
    """Log-mel filterbank frames that depend only on each utterance's own samples.

    Frames are not centred (no reflection padding), so frame `t` reads samples
    `[t * hop, t * hop + n_fft)` and a shorter utterance in a padded batch gets exactly the frames
    it gets alone: `num_frames = 1 + (num_samples - n_fft) // hop`, at least 1 (a clip shorter than
    one FFT is zero-padded to it).
    """

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config
        self.win_length = round(config.sample_rate * config.frame_length_ms / 1000)
        self.hop_length = round(config.sample_rate * config.frame_shift_ms / 1000)
        self.n_fft = 2 ** math.ceil(math.log2(self.win_length))
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=self.n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            f_min=config.f_min,
            f_max=config.f_max,
            n_mels=config.num_mel_bins,
            center=False,
            power=2.0,
        )

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.clamp((num_samples - self.n_fft) // self.hop_length + 1, min=1)

    def forward(self, waves: torch.Tensor, wave_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        waves : torch.Tensor, shape = (batch, samples), float, zero beyond `wave_lens`
        returns feats (batch, frames, num_mel_bins) float32 and feat_lens (batch,)
        """
        feat_lens = self.num_frames(wave_lens)
        if (
            not self.training
            and waves.device.type == "cpu"
            and int(wave_lens.sum()) < (1 - PADDING_SHARE_PER_UTTERANCE) * waves.numel()
        ):
            feats = self._log_mel_each(waves, wave_lens, feat_lens)
        else:
            waves = waves.float() * sequence_mask(wave_lens, waves.shape[1])
            feats = self._log_mel(waves).transpose(1, 2)  # (B, T, F)
        if self.config.utterance_mean_norm:
            feats = self._subtract_utterance_mean(feats, feat_lens)
        return feats, feat_lens

    def _subtract_utterance_mean(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        """Each utterance's mean log-mel vector subtracted from its frames; padding stays 0."""
        valid = sequence_mask(feat_lens, feats.shape[1])
        counted = valid
        if self.config.mean_norm_range_db is not None:
            loudness = feats.logsumexp(-1).masked_fill(~valid, -math.inf)  # (B, T) log frame energy
            loudest = loudness.max(dim=1, keepdim=True).values
            counted = loudness >= loudest - self.config.mean_norm_range_db * math.log(10) / 10
        weights = counted[..., None].to(feats.dtype)
        count = weights.sum(1, keepdim=True)  # (B, 1, 1)
        mean = (feats * weights).sum(1, keepdim=True) / count
        if self.config.mean_norm_prior_frames is not None:
            level = mean.mean(-1, keepdim=True)
            mean = level + (mean - level) * count / (count + self.config.mean_norm_prior_frames)
        return (feats - mean) * valid[..., None].to(feats.dtype)

    def _log_mel_each(self, waves, wave_lens, feat_lens) -> torch.Tensor:
        """The batch's (B, T, F) log-mel frames, one utterance at a time over its own samples.

        The valid frames of one transform over the padded batch (to rounding), without the work on its
        padding: a batch of mixed lengths (16 digit strings of 1-5 s) took 6.7 ms instead of 11-15.
        Frames past an utterance's length hold log(log_floor), what silence gives; every later
        stage masks them.
        """
        frames = int(self.num_frames(torch.tensor(waves.shape[1])))
        floor = math.log(self.config.log_floor)
        feats = waves.new_full((waves.shape[0], frames, self.config.num_mel_bins), floor, dtype=torch.float32)
        for row, (samples, length) in enumerate(zip(wave_lens.tolist(), feat_lens.tolist(), strict=True)):
            feats[row, :length] = self._log_mel(waves[row, :samples].float()).t()
        return feats

    def _log_mel(self, waves: torch.Tensor) -> torch.Tensor:
        """(..., samples) -> (..., F, T) log-mel; a clip shorter than one FFT is zero-padded to it."""
        if waves.shape[-1] < self.n_fft:
            waves = nn.functional.pad(waves, (0, self.n_fft - waves.shape[-1]))
        if self.config.high_pass_hz is not None:  # after the padding, as in a padded batch
            waves = self._high_pass(waves)
        return torch.log(self.mel(waves) + self.config.log_floor)

    def _high_pass(self, waves: torch.Tensor) -> torch.Tensor:
        """The Butterworth high-pass biquad of `torchaudio.functional.highpass_biquad` (Q = 1/sqrt(2)),
        without its clamping of the output to [-1, 1], which would clip loud audio with an offset.

        The filter is causal, so the zeros that pad a shorter utterance in a batch come after its
        samples and its frames stay the ones it gets alone.
        """
        w0 = 2 * math.pi * self.config.high_pass_hz / self.config.sample_rate
        alpha = math.sin(w0) / math.sqrt(2)  # sin(w0) / (2 Q)
        b = [(1 + math.cos(w0)) / 2, -(1 + math.cos(w0)), (1 + math.cos(w0)) / 2]
        a = [1 + alpha, -2 * math.cos(w0), 1 - alpha]
        # in float64, which torchaudio's loop also runs about three times faster than float32
        waves64 = waves.double()
        filtered = torchaudio.functional.lfilter(
            waves64, waves64.new_tensor(a), waves64.new_tensor(b), clamp=False
        )
        return filtered.to(waves.dtype)


class GlobalNormalization(nn.Module):
    """Subtract the training-data mean and divide by its standard deviation, per mel bin.

    The statistics are buffers, so they are saved with the model's weights.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-5))

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        normalised = (feats - self.mean) / self.std
        return normalised * sequence_mask(feat_lens, feats.shape[1])[..., None]


class FeatureStatistics:
    """Running per-bin sums (in float64) over the valid frames of many batches."""

    def __init__(self):
        self.count = 0
        self.total = None
        self.total_squares = None

    def update(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> None:
        valid = feats[sequence_mask(feat_lens, feats.shape[1])].double()  # (frames, F)
        if self.total is None:
            self.total = torch.zeros(feats.shape[-1], dtype=torch.float64)
            self.total_squares = torch.zeros_like(self.total)
        self.count += valid.shape[0]
        self.total += valid.sum(0).cpu()
        self.total_squares += valid.square().sum(0).cpu()

    def mean_and_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.count:
            raise ValueError("no frames were accumulated")
        mean = self.total / self.count
        variance = (self.total_squares / self.count - mean.square()).clamp_min(0.0)
        return mean.float(), variance.sqrt().float()


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """The HTK mel scale, torchaudio's default."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


# VTLP's warp is linear up to this share of the top frequency (in the output's frequencies, times the
# factor when it is below 1) and then bends so that the top maps to itself, as in Jaitly & Hinton 2013.
FREQ_WARP_KNEE = 0.85


class SpecAugment(nn.Module):
    """Training-time augmentation of log-mel frames, drawn per utterance.

    `warp` (on the raw log-mel frames, before global normalisation) changes each utterance's tempo
    and scales its spectrum in frequency, which speaker and speaking rate move independently;
    `forward` (after normalisation) applies random frequency and time masks inside each utterance's
    valid frames, set to 0, the training mean.
    """

    def __init__(self, config: SpecAugmentConfig, features: FeatureConfig | None = None):
        super().__init__()
        self.config = config
        if config.max_freq_warp and features is None:
            raise ValueError("max_freq_warp needs the feature configuration (the mel bins' frequencies)")
        if not (0.0 <= config.max_freq_warp < 1.0 and 0.0 <= config.max_time_stretch < 1.0):
            raise ValueError(
                "max_freq_warp and max_time_stretch must be in [0, 1), "
                f"got {config.max_freq_warp} and {config.max_time_stretch}"
            )
        if features is not None:
            top = features.f_max if features.f_max is not None else features.sample_rate / 2
            self.mel_low, self.mel_high = (float(hz_to_mel(torch.tensor(hz))) for hz in (features.f_min, top))
            self.mel_step = (self.mel_high - self.mel_low) / (features.num_mel_bins + 1)
            self.top_hz = top
            # the filterbank's centres, evenly spaced in mel between its two edges (torchaudio's layout);
            # a buffer so that it follows the model to its device, not saved with the weights
            centre_mels = self.mel_low + self.mel_step * torch.arange(1, features.num_mel_bins + 1)
            centres_hz = 700.0 * (10.0 ** (centre_mels / 2595.0) - 1.0)  # the inverse of hz_to_mel
            self.register_buffer("centres_hz", centres_hz, persistent=False)

    def warp(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) raw log-mel frames -> tempo-changed and frequency-warped frames, new lengths."""
        if not self.training:
            return feats, feat_lens
        config = self.config
        if config.max_time_stretch:
            feats, feat_lens = self.stretch_time(feats, feat_lens, self._draw(feats, config.max_time_stretch))
        if config.max_freq_warp:
            feats = self.warp_frequency(feats, self._draw(feats, config.max_freq_warp))
        return feats, feat_lens

    @staticmethod
    def _draw(feats: torch.Tensor, spread: float) -> torch.Tensor:
        """(B,) factors uniform in [1 - spread, 1 + spread]."""
        return 1.0 + spread * (2.0 * torch.rand(feats.shape[0], device=feats.device) - 1.0)

    @staticmethod
    def stretch_time(feats, feat_lens, rate) -> tuple[torch.Tensor, torch.Tensor]:
        """Each utterance's n frames linearly resampled to round(n / rate): rate > 1 is faster speech."""
        new_lens = torch.clamp((feat_lens / rate).round().long(), min=1)
        # output frame t reads input position t (n - 1) / (n' - 1): the first and last frames are kept
        step = (feat_lens - 1).float() / (new_lens - 1).clamp_min(1).float()
        positions = torch.arange(int(new_lens.max()), device=feats.device)[None, :] * step[:, None]
        positions = torch.minimum(positions, (feat_lens - 1)[:, None].float())
        # whole frames are copied (index_select on rows), far faster than gathering single values
        lower = positions.floor().long()
        upper = torch.minimum(lower + 1, (feat_lens - 1).clamp_min(0)[:, None])
        rows = feats.reshape(-1, feats.shape[2])
        first_row = (torch.arange(feats.shape[0], device=feats.device) * feats.shape[1])[:, None]
        low, high = (
            rows.index_select(0, (first_row + i).flatten()).view(*i.shape, -1) for i in (lower, upper)
        )
        return torch.lerp(low, high, (positions - lower).to(feats.dtype)[..., None]), new_lens

    def warp_frequency(self, feats: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Output bin i reads the spectrum at f_i / alpha (f_i its centre; linear in the bin's mel
        position): alpha > 1 moves formants and harmonics up, as a shorter vocal tract does."""
        bins, alpha, centres = feats.shape[-1], alpha[:, None], self.centres_hz[None, :]
        knee = FREQ_WARP_KNEE * self.top_hz * alpha.clamp_max(1.0)
        bent = knee / alpha + (centres - knee) * (self.top_hz - knee / alpha) / (self.top_hz - knee)
        source_hz = torch.where(centres <= knee, centres / alpha, bent)
        positions = ((hz_to_mel(source_hz) - self.mel_low) / self.mel_step - 1.0).clamp(0.0, bins - 1)
        # as a (B, F, F) matrix of two weights per output bin: one batched GEMM reads every frame
        lower = positions.floor().long()
        upper = (lower + 1).clamp_max(bins - 1)
        weight = (positions - lower).to(feats.dtype)
        matrix = feats.new_zeros(feats.shape[0], bins, bins)
        matrix.scatter_add_(2, lower[..., None], (1.0 - weight)[..., None])
        matrix.scatter_add_(2, upper[..., None], weight[..., None])
        return torch.bmm(feats, matrix.transpose(1, 2))

    def _band_mask(self, size: int, max_width: torch.Tensor, num_masks: int, lengths: torch.Tensor):
        """(B,) limits -> (B, size) bool mask of `num_masks` random bands per row."""
        positions = torch.arange(size, device=lengths.device)[None, :]
        mask = torch.zeros(lengths.shape[0], size, dtype=torch.bool, device=lengths.device)
        for _ in range(num_masks):
            width = (torch.rand_like(lengths, dtype=torch.float) * (max_width + 1)).long()
            start = (torch.rand_like(lengths, dtype=torch.float) * (lengths - width + 1).clamp_min(1)).long()
            mask |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
        return mask

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return feats
        batch, frames, bins = feats.shape
        config = self.config
        bins_per_row = torch.full_like(feat_lens, bins)
        freq_mask = self._band_mask(
            bins,
            torch.full_like(feat_lens, config.max_freq_width).clamp_max(bins),
            config.num_freq_masks,
            bins_per_row,
        )
        time_limit = torch.minimum(
            (feat_lens * config.max_time_ratio).long(), torch.full_like(feat_lens, config.max_time_width)
        )
        time_mask = self._band_mask(frames, time_limit, config.num_time_masks, feat_lens)
        mask = freq_mask[:, None, :] | time_mask[:, :, None]  # (B, T, F)
        return feats.masked_fill(mask, 0.0)
