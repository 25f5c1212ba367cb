"""Mains hum removal: find a steady 50 or 60 Hz tone and its harmonics in a recording and subtract them.

A badly grounded microphone or cable adds the mains frequency and its harmonics, steady from the
first sample to the last. In log-mel frames the hum fills the lowest bins, and a model reads it as
voicing: the digits model, trained with hum augmentation, still heard "six" as "seven" under a
60 Hz buzz 10 dB below the speech (recipes/digits/README.md, "Faults"). Speech has almost no
energy at 50-60 Hz and its harmonics glide with the pitch, so a narrow peak at the mains frequency
that keeps its level through the recording is hum. `remove_mains_hum` then fits a sinusoid at each
of its harmonics over the whole recording and subtracts the fit: unlike notch filters, it leaves
the speech at those frequencies and has no start-up transient. The fit is weighted least squares
that trusts the quiet frames most (`_quiet_weights`), so it takes the hum, not the voice.

Detection, for the fundamental (within 1.5 % of 50 or 60 Hz, a local maximum of the spectrum):
its peak at least `detect_db` above the mean of its flanks (2.5-6 frequency resolutions away),
and its level in the recording's first and second halves within `max_change_db` of each other.
Harmonics up to `max_hz` are subtracted where the spectrum has a peak near k times the
fundamental, their level is as steady, and they are at most `max_harmonic_gain_db` louder than
the fundamental (a louder one is the voice's). The fundamental is then refined by Gauss-Newton
steps (`_frequency_error`): a hum at 60.2 Hz is found to within 0.01 Hz in 1.8 s of speech, which
keeps the fit in phase with the hum up to its highest harmonic. Hum fainter than `min_level_db`
below the recording is left alone.
"""

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HumConfig:
    detect_db: float = 10.0  # the fundamental's peak over its flanks
    max_change_db: float = 6.0  # the most a component's level may differ between the two halves
    max_harmonic_gain_db: float = 10.0  # a harmonic louder than the fundamental by more is the voice's
    min_level_db: float = -40.0  # hum fainter than this, relative to the recording's power, is left:
    # the recordings FSDD's European voice made carry a 50 Hz hum 41-49 dB down, which costs nothing
    max_hz: float = 1000.0  # harmonics above this are left (buzz falls off; speech dominates there)
    min_seconds: float = 0.15  # shorter recordings are left as they are: too short to tell hum from voice
    analysis_seconds: float = 30.0  # the spectrum that finds the hum reads at most this much of the start
    mains_hz: tuple[float, ...] = (50.0, 60.0)
    tolerance: float = 0.015  # the mains frequency's relative deviation allowed


@dataclass(frozen=True)
class Hum:
    """What `remove_mains_hum` found and subtracted."""

    frequency: float  # the fundamental's estimate, Hz
    harmonics: tuple[int, ...]  # the harmonic numbers subtracted (1 = the fundamental)
    level_db: float  # the subtracted hum's power relative to the recording's

    def describe(self) -> str:
        harmonics = ", ".join(str(k) for k in self.harmonics)
        return (
            f"mains hum at {self.frequency:.1f} Hz removed before decoding "
            f"(harmonics {harmonics}; {self.level_db:.1f} dB of the recording's power)"
        )


def remove_mains_hum(
    wave: torch.Tensor, sample_rate: int, config: HumConfig = HumConfig()
) -> tuple[torch.Tensor, Hum | None]:
    """`wave` (samples,) without its mains hum, and what was found (None: no hum, `wave` unchanged).

    The output has `wave`'s dtype; the work is done in float64.
    """
    samples = wave.numel()
    if samples < config.min_seconds * sample_rate:
        return wave, None
    x = wave.double()
    x = x - x.mean()
    # the hum is the same throughout: its first 30 s tell as much as an hour (whose zero-padded
    # spectrum would not fit in memory); the fits below run over the whole recording
    spectrum = _Spectrum(x[: round(config.analysis_seconds * sample_rate)], sample_rate)
    best = None
    for mains in config.mains_hz:
        peak = spectrum.peak(mains * (1 - config.tolerance), mains * (1 + config.tolerance))
        if peak is None:
            continue
        salience = spectrum.salience(peak)
        if salience >= config.detect_db and (best is None or salience > best[0]):
            best = (salience, peak)
    if best is None:
        return wave, None
    fundamental = best[1]
    # the candidate harmonics: a spectral peak near k times the fundamental's estimate
    top = int(min(config.max_hz, sample_rate / 2 - 2 * spectrum.resolution) // fundamental)
    candidates, frequencies = [1], [fundamental]
    for k in range(2, top + 1):
        peak = spectrum.peak(k * fundamental - spectrum.resolution, k * fundamental + spectrum.resolution)
        if peak is not None:
            candidates.append(k)
            frequencies.append(peak)
    trust = _quiet_weights(x, sample_rate)
    first, second = _half_levels(x, trust, sample_rate, frequencies)
    steady = (10 * torch.log10(first / second)).abs() <= config.max_change_db
    if not steady[0]:
        return wave, None
    # a "harmonic" far louder than the fundamental is a harmonic of the voice that falls there
    gains = 10 * torch.log10((first + second) / (first[0] + second[0]))
    kept = (steady & (gains <= config.max_harmonic_gain_db)).tolist()
    harmonics = [k for k, keep in zip(candidates, kept, strict=True) if keep]
    chosen = [f for f, keep in zip(frequencies, kept, strict=True) if keep]
    # each harmonic's peak / k estimates the fundamental; the higher ones more precisely
    weights = torch.tensor([k * k for k in harmonics], dtype=torch.float64)
    estimates = torch.tensor([f / k for k, f in zip(harmonics, chosen, strict=True)], dtype=torch.float64)
    frequency = float((weights * estimates).sum() / weights.sum())
    # the peaks are good to a small part of the resolution: a correction beyond that is noise
    low, high = frequency - 0.25 * spectrum.resolution, frequency + 0.25 * spectrum.resolution
    for _ in range(REFINEMENTS):
        step = _frequency_error(x, trust, sample_rate, frequency, harmonics)
        frequency = min(max(frequency + step, low), high)
    # the fit that is subtracted: a sinusoid of constant amplitude per harmonic. A linear change of
    # each one as well (as `_frequency_error` fits) took more of the speech with it: on FSDD's short
    # clips under a 60 Hz hum, 9.2 % WER against 8.4 %
    design = _Sinusoids(samples, sample_rate, tuple(k * frequency for k in harmonics), ramp=False)
    hum = design.evaluate(_weighted_fit(design, x, trust))
    level_db = 10 * math.log10(float(hum.square().mean()) / (float(x.square().mean()) + 1e-30) + 1e-30)
    if level_db < config.min_level_db:
        return wave, None
    return (wave.double() - hum).to(wave.dtype), Hum(frequency, tuple(harmonics), level_db)


class _Spectrum:
    """The power spectrum of a Hann-windowed recording, zero-padded to 4x for peak positions."""

    def __init__(self, x: torch.Tensor, sample_rate: int):
        samples = x.numel()
        size = 2 ** math.ceil(math.log2(4 * samples))
        window = torch.hann_window(samples, periodic=False, dtype=x.dtype)
        self.power = torch.fft.rfft(x * window, size).abs().square()
        self.step = sample_rate / size  # Hz between bins
        self.resolution = sample_rate / samples  # Hz: the window's main lobe is 2 resolutions either side

    def peak(self, low: float, high: float) -> float | None:
        """The frequency of the highest local maximum in [low, high] (parabolic interpolation on the
        log power), None if the band's highest bin is at its edge (a slope, not a peak)."""
        first, last = math.ceil(low / self.step), math.floor(high / self.step)
        if first < 1 or last >= len(self.power) - 1 or last < first:
            return None
        index = first + int(self.power[first : last + 1].argmax())
        left, centre, right = torch.log(self.power[index - 1 : index + 2] + 1e-300).tolist()
        if not (centre > left and centre > right):
            return None
        shift = 0.5 * (left - right) / (left - 2 * centre + right)
        return (index + shift) * self.step

    def salience(self, frequency: float) -> float:
        """dB of the power at `frequency` over the mean power 2.5-6 resolutions either side."""
        centre = round(frequency / self.step)
        near, far = math.ceil(2.5 * self.resolution / self.step), math.floor(6 * self.resolution / self.step)
        left = self.power[max(centre - far, 0) : max(centre - near + 1, 0)]
        right = self.power[centre + near : centre + far + 1]
        flanks = torch.cat([left, right])
        return 10 * math.log10(float(self.power[centre]) / (float(flanks.mean()) + 1e-300) + 1e-300)


# Gauss-Newton steps on the fundamental frequency (`_frequency_error`) before the fit that is subtracted
REFINEMENTS = 2


def _frequency_error(
    x: torch.Tensor, trust: torch.Tensor, sample_rate: int, frequency: float, harmonics: list[int]
) -> float:
    """How far the hum's fundamental is from `frequency` (Hz), from a least-squares fit of its
    harmonics, each with a linear change of its complex amplitude over the recording.

    A component A exp(i 2 pi k (f + d) t) fitted at k f has a complex amplitude that turns at
    2 pi k d radians a second: over the ramp s = 2t/T - 1 its change is b = i pi k d T a, so
    d = Im(b / a) / (pi k T), averaged over the harmonics with weights |a|^2 k^2 (the inverse of
    each estimate's variance).
    """
    samples = x.numel()
    design = _Sinusoids(samples, sample_rate, tuple(k * frequency for k in harmonics), ramp=True)
    coefficients = _weighted_fit(design, x, trust)
    cos, sin, ramp_cos, ramp_sin = coefficients.view(4, len(harmonics))
    level = torch.complex(cos, -sin)  # x = Re(a exp(i theta)) = Re(a) cos theta - Im(a) sin theta
    change = torch.complex(ramp_cos, -ramp_sin)
    k = torch.tensor(harmonics, dtype=torch.float64)
    steps = (change / level).imag / (math.pi * k * samples / sample_rate)
    weights = level.abs().square() * k.square()
    return float((weights * steps).sum() / weights.sum())


# Samples per block when the sinusoids are built: the design of a 5-minute 16 kHz recording with 19
# harmonics would take 2.9 GB at once; block by block the fit holds a few MB
BLOCK = 1 << 15


@dataclass(frozen=True)
class _Sinusoids:
    """The design of the fit, built a block of samples at a time: for each frequency cos and sin,
    and with `ramp` both times a ramp from -1 (the first sample) to 1 (the last)."""

    samples: int
    sample_rate: int
    frequencies: tuple[float, ...]
    ramp: bool

    def rows(self, start: int, end: int) -> torch.Tensor:
        """(end - start, 2 or 4 per frequency) rows of the design."""
        index = torch.arange(start, end, dtype=torch.float64)
        frequencies = torch.tensor(self.frequencies, dtype=torch.float64)
        phases = (2 * math.pi / self.sample_rate) * index[:, None] * frequencies
        columns = [torch.cos(phases), torch.sin(phases)]
        if self.ramp:
            slope = (2 * index / max(self.samples - 1, 1) - 1)[:, None]
            columns += [slope * columns[0], slope * columns[1]]
        return torch.cat(columns, dim=1)

    def blocks(self):
        for start in range(0, self.samples, BLOCK):
            end = min(start + BLOCK, self.samples)
            yield start, end, self.rows(start, end)

    def evaluate(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(samples,) design @ coefficients."""
        return torch.cat([rows @ coefficients for _, _, rows in self.blocks()])


def _half_levels(
    x: torch.Tensor, weights: torch.Tensor, sample_rate: int, frequencies: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each frequency's fitted power in the recording's first half, and in its second."""
    half = x.numel() // 2
    design = _Sinusoids(half, sample_rate, tuple(frequencies), ramp=False)
    levels = []
    for part in (slice(0, half), slice(half, 2 * half)):
        coefficients = _weighted_fit(design, x[part], weights[part])
        cos, sin = coefficients.view(2, len(frequencies))
        levels.append(cos.square() + sin.square() + 1e-300)
    return levels[0], levels[1]


def _quiet_weights(x: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Per-sample least-squares weights: the inverse of the power of the 20 ms frame around it.

    The hum is the same in every frame and the voice is not, so the fit trusts the pauses and the
    quiet frames most (weighted least squares with the voice as noise of varying power). Fitted
    evenly, the voice's own energy at the hum's frequencies, averaged over the recording, was
    subtracted from every frame, pauses included: a steady comb, 17-27 dB below the speech for 19
    harmonics of 50 Hz, that took clean digit strings from 0.25 % to 4.97 % WER.
    """
    frame = max(1, round(0.02 * sample_rate))
    power = torch.nn.functional.avg_pool1d(x.square()[None, None], frame, frame, ceil_mode=True)[0, 0]
    power = power.clamp(min=1e-4 * float(power.mean()) + 1e-30)  # -40 dB: digital silence is not certainty
    weights = (1.0 / power).repeat_interleave(frame)[: x.numel()]
    return weights / weights.mean()


def _weighted_fit(design: _Sinusoids, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """argmin_c sum_t w_t (x_t - (design c)_t)^2, by the normal equations, a block at a time.

    Sinusoids 50 Hz or more apart are nearly orthogonal over 0.15 s or more, so the small Gram
    matrix is well conditioned; products build it, where a QR of the (samples, columns) design
    took most of the time for a 19-harmonic buzz (0.041 s per second of audio, 0.024 this way).
    """
    gram, right = 0.0, 0.0
    for start, end, rows in design.blocks():
        weighted = rows * weights[start:end, None]
        gram = gram + weighted.T @ rows
        right = right + weighted.T @ x[start:end]
    ridge = 1e-10 * float(gram.diagonal().mean()) * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(gram + ridge, right)
