"""Cuts -> batches: a dataset over lhotse CutSets, lhotse's duration-bucketed sampler, collate.

The sampler yields a CutSet per batch (lhotse's convention); `SpeechDataset` loads and augments its
audio and tokenises its text. Features are *not* computed here: they are computed inside the model,
on the model's device, so training and inference cannot disagree.
"""

import itertools
import logging
import warnings
import zlib
from dataclasses import dataclass

import lhotse
import numpy as np
import torch
import torchaudio
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from scipy.signal import butter, fftconvolve, lfilter, sosfilt

from asr.audio import limit_peak
from asr.text import normalize_text

log = logging.getLogger(__name__)


@dataclass
class Batch:
    ids: list[str]
    texts: list[str]  # normalised reference text
    waves: torch.Tensor  # (B, S) float32, zero-padded
    wave_lens: torch.Tensor  # (B,) samples
    targets: torch.Tensor  # (B, U) token ids without sos/eos, zero-padded
    target_lens: torch.Tensor  # (B,)
    num_skipped: int = 0  # cuts of this batch that could not be loaded
    speakers: torch.Tensor | None = None  # (B,) speaker ids (-100: unknown), for the speaker adversary

    def to(self, device: torch.device | str) -> "Batch":
        non_blocking = torch.device(device).type == "cuda"
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(
            self.ids,
            self.texts,
            move(self.waves),
            move(self.wave_lens),
            move(self.targets),
            move(self.target_lens),
            self.num_skipped,
            None if self.speakers is None else move(self.speakers),
        )

    def __len__(self) -> int:
        return len(self.ids)


def collate(
    ids, texts, waves: list[torch.Tensor], token_ids: list[list[int]], num_skipped: int = 0, speakers=None
) -> Batch:
    """Pad a list of 1-D waveforms and token lists into a Batch (`speakers`: a list of ids, or None)."""
    wave_lens = torch.tensor([len(w) for w in waves], dtype=torch.long)
    padded = torch.zeros(len(waves), int(wave_lens.max()) if waves else 0)
    for row, wave in enumerate(waves):
        padded[row, : len(wave)] = wave
    target_lens = torch.tensor([len(t) for t in token_ids], dtype=torch.long)
    targets = torch.zeros(
        len(token_ids), max(1, int(target_lens.max()) if token_ids else 1), dtype=torch.long
    )
    for row, tokens in enumerate(token_ids):
        targets[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    speakers = None if speakers is None else torch.tensor(speakers, dtype=torch.long)
    return Batch(list(ids), list(texts), padded, wave_lens, targets, target_lens, num_skipped, speakers)


@dataclass(frozen=True)
class AugmentConfig:
    """Waveform augmentation for training, applied per utterance with its own seeded generator.

    Besides noise and level, random filtering imitates other microphones and channels: with five
    FSDD speakers, each recorded on one setup, the channel is as strong a cue as the voice.
    """

    noise_probability: float = 0.6  # share of utterances that get additive (white or brown) noise
    min_snr_db: float = 5.0
    max_snr_db: float = 40.0
    min_gain_db: float = -20.0  # random level change applied to every utterance
    max_gain_db: float = 6.0
    tilt_probability: float = 0.0  # share of utterances whose spectrum is tilted by y[n] = x[n] - a x[n-1]
    max_tilt: float = 0.7  # a is drawn from [-max_tilt, max_tilt]: > 0 brightens, < 0 muffles
    lowpass_probability: float = 0.0  # share of utterances low-passed (band-limited microphones, codecs)
    min_lowpass_ratio: float = 0.5  # cutoff drawn from [min_lowpass_ratio, 0.95] x Nyquist
    reverb_probability: float = 0.0  # share of utterances convolved with a synthetic room response
    min_rt60: float = 0.1  # the room's reverberation time (60 dB decay), drawn from [min_rt60, max_rt60] s
    max_rt60: float = 0.6
    min_drr_db: float = 0.0  # direct-to-reverberant energy ratio, drawn from [min_drr_db, max_drr_db]
    max_drr_db: float = 15.0
    hum_probability: float = 0.0  # share of utterances that get mains hum (50 or 60 Hz and harmonics)
    min_hum_snr_db: float = 5.0  # the hum's level below the speech, drawn from [min, max] dB
    max_hum_snr_db: float = 35.0
    clip_probability: float = 0.0  # share of utterances recorded too loud: raised until their peak is
    max_clip_db: float = 12.0  # up to this many dB over full scale, then clipped there


def synthetic_room_response(
    rt60: float, drr_db: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """A room impulse response: the direct path, then Gaussian noise decaying by 60 dB over `rt60`
    seconds (Polack's statistical model), scaled so the tail has `drr_db` less energy than the direct path."""
    length = max(1, int(rt60 * sample_rate))
    decay = np.exp(-3 * np.log(10) * np.arange(length) / length)  # amplitude falls 60 dB over `length`
    tail = rng.standard_normal(length) * decay
    tail *= np.sqrt(10 ** (-drr_db / 10) / (np.sum(tail**2) + 1e-12))
    tail[0] += 1.0
    return tail


def mains_hum(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power hum as a badly grounded microphone or cable picks it up: 50 or 60 Hz (within 1 %)
    and its harmonics below 1 kHz and Nyquist, of random phases and strengths that fall off as
    k^-p with p drawn from 0.5-2 (from a buzz rich in harmonics to a nearly pure tone)."""
    fundamental = rng.choice([50.0, 60.0]) * rng.uniform(0.99, 1.01)
    harmonics = np.arange(1, int(min(1000.0, sample_rate / 2) // fundamental) + 1)
    amplitudes = rng.uniform(0, 1, len(harmonics)) * harmonics ** -rng.uniform(0.5, 2.0)
    amplitudes[0] = max(amplitudes[0], 0.3)  # the fundamental is always there
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    # one period on a fine grid (the highest harmonic gets over 200 points a cycle), then read at
    # each sample's phase: a tenth of the time of summing the sines over the whole recording
    grid = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
    period = (amplitudes[:, None] * np.sin(harmonics[:, None] * grid + phases[:, None])).sum(0)
    phase = (2 * np.pi * fundamental / sample_rate * np.arange(num_samples)) % (2 * np.pi)
    hum = np.interp(phase, grid, period, period=2 * np.pi)
    return hum / np.sqrt(np.mean(hum**2) + 1e-12)


def augment_waveform(
    wave: np.ndarray, config: AugmentConfig, rng: np.random.Generator, sample_rate: int
) -> np.ndarray:
    """Random room and microphone filtering, gain, then (with `config.noise_probability`) noise and
    (with `config.hum_probability`) mains hum, each at a random SNR, and (with
    `config.clip_probability`) a level too loud for the converter. `sample_rate` is the rate of
    `wave` (the room response's length and the hum's frequencies are in seconds and Hz)."""
    if rng.random() < config.reverb_probability and len(wave):
        response = synthetic_room_response(
            rng.uniform(config.min_rt60, config.max_rt60),
            rng.uniform(config.min_drr_db, config.max_drr_db),
            sample_rate,
            rng,
        )
        level = np.sqrt(np.mean(wave**2)) + 1e-10
        wave = fftconvolve(wave, response)[: len(wave)]  # the tail past the end is cut, as in a recording
        wave *= level / (np.sqrt(np.mean(wave**2)) + 1e-10)
    if rng.random() < config.tilt_probability:
        tilt = rng.uniform(-config.max_tilt, config.max_tilt)
        wave = lfilter([1.0, -tilt], [1.0], wave) / (1 + abs(tilt))
    if rng.random() < config.lowpass_probability:
        cutoff = rng.uniform(config.min_lowpass_ratio, 0.95)
        wave = sosfilt(butter(4, cutoff, output="sos"), wave)
    wave = wave * 10 ** (rng.uniform(config.min_gain_db, config.max_gain_db) / 20)
    if rng.random() < config.noise_probability and len(wave):
        noise = rng.standard_normal(len(wave))
        if rng.random() < 0.5:  # brown-ish noise: leaky integration keeps it bounded
            noise = lfilter([1.0], [1.0, -0.98], noise)
        signal_power = float(np.mean(wave**2)) + 1e-10
        snr_db = rng.uniform(config.min_snr_db, config.max_snr_db)
        noise *= np.sqrt(signal_power / (np.mean(noise**2) + 1e-12) / 10 ** (snr_db / 10))
        wave = wave + noise
    # no number drawn while it is off, so the other augmentations draw as they did before it
    if config.hum_probability > 0 and rng.random() < config.hum_probability and len(wave):
        signal_power = float(np.mean(wave**2)) + 1e-10
        snr_db = rng.uniform(config.min_hum_snr_db, config.max_hum_snr_db)
        wave = wave + mains_hum(len(wave), sample_rate, rng) * np.sqrt(signal_power / 10 ** (snr_db / 10))
    if config.clip_probability > 0 and rng.random() < config.clip_probability and len(wave):
        overdrive_db = rng.uniform(0.0, config.max_clip_db)
        wave = wave * 10 ** (overdrive_db / 20) / (np.abs(wave).max() + 1e-10)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def cut_speaker(cut) -> str | None:
    """The one speaker of a cut's supervisions; None when they name none or several."""
    speakers = {s.speaker for s in cut.supervisions}
    return speakers.pop() if len(speakers) == 1 else None


def cut_text(cut) -> str:
    """The normalised transcript of a cut: its supervisions' texts joined in time order."""
    supervisions = sorted(cut.supervisions, key=lambda s: s.start)
    return normalize_text(" ".join(s.text or "" for s in supervisions))


class AudioCache:
    """Decoded recordings held in memory, for small corpora whose clips are reused many times.

    Renders MonoCuts (optionally speed-perturbed) and MixedCuts of them with padding, which is how
    the digits recipe builds its training strings; lhotse's own `load_audio` decodes and resamples
    every clip of every string again (about 0.7 ms a clip here, as much as training on it).
    Anything else returns None and is loaded by lhotse.
    """

    def __init__(self, cuts: lhotse.CutSet):
        self.audio, self.sample_rate = {}, {}
        for cut in cuts:
            try:
                audio = cut.recording.load_audio()
            except Exception as error:  # left to SpeechDataset, which skips the cut and names the file
                log.warning("not cached, cannot be read: %s (%s)", cut.recording.id, error)
                continue
            self.audio[(cut.recording.id, 1.0)] = audio.mean(axis=0) if audio.ndim == 2 else audio
            self.sample_rate[cut.recording.id] = cut.recording.sampling_rate

    def _clip(self, cut) -> np.ndarray | None:
        recording = getattr(cut, "recording", None)
        if recording is None:
            return None
        # lhotse's perturb_speed and perturb_volume rename the recording (id + "_sp0.9", "_vp0.5")
        # and keep their sources
        recording_id, factor, gain = recording.id, 1.0, 1.0
        for transform in reversed(recording.transforms or []):
            kind = type(transform).__name__
            if kind == "Speed":
                recording_id = recording_id.removesuffix(f"_sp{transform.factor}")
                factor *= transform.factor
            elif kind == "Volume":
                recording_id = recording_id.removesuffix(f"_vp{transform.factor}")
                gain *= transform.factor
            else:
                return None
        if recording_id not in self.sample_rate:
            return None
        key = (recording_id, round(factor, 6))
        if key not in self.audio:
            rate = self.sample_rate[recording_id]
            original = torch.from_numpy(self.audio[(recording_id, 1.0)])
            # speed perturbation = resample, then play at the original rate (Ko et al. 2015)
            self.audio[key] = torchaudio.functional.resample(original, round(rate * factor), rate).numpy()
        rate = self.sample_rate[recording_id]
        start = round(cut.start * rate)
        clip = self.audio[key][start : start + round(cut.duration * rate)]
        return clip if gain == 1.0 else clip * np.float32(gain)

    def render(self, cut) -> tuple[np.ndarray, int] | None:
        """(samples, sample rate) of a cached MonoCut or MixedCut, or None."""
        if not isinstance(cut, lhotse.cut.MixedCut):
            clip = self._clip(cut)
            return None if clip is None else (clip, cut.sampling_rate)
        rate = cut.sampling_rate
        output = np.zeros(round(cut.duration * rate), dtype=np.float32)
        for track in cut.tracks:
            if isinstance(track.cut, lhotse.cut.PaddingCut):
                continue
            clip = self._clip(track.cut)
            if clip is None:
                return None
            start = round(track.offset * rate)
            piece = clip[: len(output) - start]
            output[start : start + len(piece)] += piece
        return output, rate


class SpeechDataset(torch.utils.data.Dataset):
    """Maps a CutSet (one batch, from a lhotse sampler) to a Batch.

    A cut whose audio cannot be loaded is skipped with a warning naming it and counted in
    `Batch.num_skipped`, so one bad file never stops an epoch. With `speaker_ids` (name -> id) the
    batch carries each cut's speaker id, -100 for a speaker not in it or a cut of several speakers.
    """

    def __init__(
        self,
        tokenizer,
        sample_rate: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        cache: AudioCache | None = None,
        speaker_ids: dict[str, int] | None = None,
    ):
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.augment = augment
        self.seed = seed
        self.cache = cache
        self.speaker_ids = speaker_ids

    def load(self, cut) -> np.ndarray:
        rendered = self.cache.render(cut) if self.cache is not None else None
        if rendered is not None:
            wave, rate = rendered
            if rate != self.sample_rate:
                wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, self.sample_rate).numpy()
        else:
            if cut.sampling_rate != self.sample_rate:
                cut = cut.resample(self.sample_rate)
            audio = cut.load_audio()  # (channels, samples)
            wave = audio.mean(axis=0) if audio.ndim == 2 else audio
        if not np.isfinite(wave).all():
            raise ValueError("audio contains NaN or infinite samples")
        wave = limit_peak(wave)  # over-range float audio would overflow the float32 spectrum
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, zlib.crc32(cut.id.encode())])
            wave = augment_waveform(wave, self.augment, rng, self.sample_rate)
        return wave.astype(np.float32)

    def __getitem__(self, cuts: lhotse.CutSet) -> Batch:
        ids, texts, waves, tokens, speakers, skipped = [], [], [], [], [], 0
        for cut in cuts:
            try:
                wave = self.load(cut)
                if len(wave) == 0:
                    raise ValueError("no samples")
            except Exception as error:  # noqa: BLE001 -- any unreadable input is skipped and reported
                log.warning("skipping %s (%s): %s", cut.id, _source_of(cut), error)
                skipped += 1
                continue
            text = cut_text(cut)
            ids.append(cut.id)
            texts.append(text)
            waves.append(torch.from_numpy(wave))
            tokens.append(self.tokenizer.encode(text))
            if self.speaker_ids is not None:
                speakers.append(self.speaker_ids.get(cut_speaker(cut), -100))
        return collate(ids, texts, waves, tokens, skipped, speakers if self.speaker_ids is not None else None)


def _source_of(cut) -> str:
    """The audio file(s) behind a cut, for error messages."""
    cuts = [t.cut for t in cut.tracks] if isinstance(cut, lhotse.cut.MixedCut) else [cut]
    recordings = [c.recording for c in cuts if getattr(c, "recording", None) is not None]
    return ", ".join(sorted({str(s.source) for r in recordings for s in r.sources})) or "no recording"


@dataclass(frozen=True)
class LoaderConfig:
    max_duration: float = 120.0  # seconds of audio per batch
    num_buckets: int = 10  # duration buckets: utterances of similar length share a batch (less padding)
    num_workers: int = 0  # background processes that load audio
    shuffle: bool = True
    drop_last: bool = False


def make_loader(
    cuts: lhotse.CutSet,
    dataset: SpeechDataset,
    config: LoaderConfig,
    seed: int = 0,
    world_size: int = 1,
    rank: int = 0,
    skip_batches: int = 0,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose sampler is lhotse's DynamicBucketingSampler (sharded per rank).

    The batches depend only on (`cuts`, `config`, `seed`, `world_size`, `rank`), and the loader
    draws nothing from torch's global generator, so a run that restores its random states and
    passes `skip_batches` (the batches it had consumed) carries on exactly where it stopped.
    """
    num_buckets = config.num_buckets
    if not cuts.is_lazy:  # lhotse refuses more buckets than cuts (a tiny dev set)
        num_buckets = max(1, min(num_buckets, len(cuts)))
    common = dict(
        shuffle=config.shuffle, drop_last=config.drop_last, world_size=world_size, rank=rank, seed=seed
    )
    if num_buckets < 2:  # bucketing needs two buckets and two cuts: one cut, or a rank's empty dev shard
        sampler = SimpleCutSampler(cuts, max_duration=config.max_duration, **common)
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
            sampler = DynamicBucketingSampler(
                cuts, max_duration=config.max_duration, num_buckets=num_buckets, **common
            )
    return torch.utils.data.DataLoader(
        dataset,
        sampler=SkipBatches(sampler, skip_batches) if skip_batches else sampler,
        # its own generator: DataLoader otherwise draws a seed from the global one for every epoch
        generator=torch.Generator().manual_seed(seed),
        batch_size=None,
        num_workers=config.num_workers,
        persistent_workers=False,
        prefetch_factor=4 if config.num_workers else None,
    )


class SkipBatches:
    """A sampler's batches after its first `num_skipped`: the sampler position of a resumed run.

    Skipping runs the sampler alone (no audio is loaded). The training loop counts the batches it
    consumed, rather than saving lhotse's `sampler.state_dict()`, because DataLoader workers draw
    batches from the sampler ahead of the loop.
    """

    def __init__(self, sampler, num_skipped: int):
        self.sampler = sampler
        self.num_skipped = num_skipped

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.num_skipped, None)
