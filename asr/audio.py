"""Audio files in, mono float32 waveforms at the model's sample rate out.

Everything that reads audio (data preparation, training, transcription) goes through
`load_audio`, so a file that is empty, corrupt or full of NaNs fails here, once, with a
message that names the file, instead of as a NaN loss thousands of steps later.

`soundfile` (libsndfile) reads WAV, FLAC, OGG/Vorbis, Opus, MP3, AIFF, AU and NIST SPHERE
and can seek, so a slice of an hours-long recording costs only the slice. Formats it cannot
read (M4A/AAC) fall back to `librosa.load`, which decodes through audioread and needs an
ffmpeg or GStreamer installation on the machine.
"""

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import librosa  # lazy-loading package: scipy and numba are imported on first use only
import numpy as np
import soundfile
import soxr
import torch

# Compared case-insensitively by `find_audio_files`. ".m4a" needs ffmpeg (see module docstring).
AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".wav",
    ".flac",
    ".ogg",
    ".opus",
    ".mp3",
    ".aiff",
    ".aif",
    ".au",
    ".sph",
    ".m4a",
)


class AudioError(Exception):
    """An audio file that cannot be used; the message starts with the file's path."""


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says about an audio file."""

    sample_rate: int  # samples per second per channel, as stored
    num_frames: int  # samples per channel
    num_channels: int
    duration: float  # seconds: num_frames / sample_rate


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read an audio file's sample rate, length and channel count without decoding it.

    Parameters
    ----------
    path : str or os.PathLike
        The audio file.

    Returns
    -------
    AudioInfo

    Raises
    ------
    AudioError
        When the file is missing, empty, unreadable or not audio.
    """
    path = Path(path)
    _check_file(path)
    try:
        info = soundfile.info(str(path))
    except soundfile.LibsndfileError:
        # Only the fallback formats get here; audioread gives no channel count without
        # decoding, so decode the whole file (these are compressed and rare in corpora).
        waveform, sample_rate = _decode_with_librosa(path, offset=0.0, duration=None)
        num_frames = waveform.shape[0]
        return AudioInfo(sample_rate, num_frames, waveform.shape[1], num_frames / sample_rate)
    sample_rate = _checked_rate(path, info.samplerate)
    return AudioInfo(sample_rate, info.frames, info.channels, info.frames / sample_rate)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    *,
    offset: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """Read an audio file as a mono float32 waveform at `sample_rate`.

    Integer PCM is scaled to [-1, 1], channels are averaged and the result is resampled
    (soxr, high quality). Silence and clipped audio are valid; NaN or infinite samples are not.

    Parameters
    ----------
    path : str or os.PathLike
        The audio file.
    sample_rate : int
        Sample rate of the returned waveform, in Hz.
    offset : float
        Seconds to skip from the start of the file; the file is seeked, not read up to here.
    duration : float, optional
        Seconds to read from `offset`; None reads to the end. A slice that runs past the end
        of the file is cut short there.

    Returns
    -------
    torch.Tensor, shape = (num_samples,), dtype = float32

    Raises
    ------
    AudioError
        When the file is missing, empty, unreadable, not audio, holds no samples in the
        requested slice, or holds NaN or infinite samples.
    ValueError
        When `sample_rate`, `offset` or `duration` is out of range.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0 seconds, got {offset}")
    if duration is not None and duration <= 0:
        raise ValueError(f"duration must be > 0 seconds or None, got {duration}")
    path = Path(path)
    _check_file(path)
    try:
        samples, file_rate = _read_with_soundfile(path, offset, duration)
    except soundfile.LibsndfileError:
        samples, file_rate = _decode_with_librosa(path, offset, duration)

    if samples.size == 0:
        where = f" from offset {offset} s" if offset > 0 else ""
        raise AudioError(f"{path}: no audio samples{where} (file holds {_describe_length(path)})")
    # (num_frames, num_channels) -> (num_frames,): average the channels.
    waveform = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    not_finite = ~np.isfinite(waveform)
    if not_finite.any():
        first = int(np.argmax(not_finite))
        raise AudioError(
            f"{path}: {int(not_finite.sum())} of {waveform.size} samples are NaN or infinite "
            f"(first at {offset + first / file_rate:.3f} s)"
        )
    waveform = limit_peak(waveform)
    return torch.from_numpy(np.ascontiguousarray(_resample_array(waveform, file_rate, sample_rate)))


def limit_peak(waveform: np.ndarray) -> np.ndarray:
    """Scale a waveform whose peak exceeds 1 down to peak 1; others are returned unchanged.

    Only float files can exceed the [-1, 1] range of integer PCM. A peak of 1e30 is finite, but
    its float32 power spectrum is not, and the model would meet NaN features; scaling changes
    only the level, which global normalisation and gain augmentation already make irrelevant.
    """
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    return waveform if peak <= 1.0 else (waveform / peak).astype(np.float32)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample a mono waveform with soxr (high quality); the same tensor when the rates match.

    Parameters
    ----------
    waveform : torch.Tensor, shape = (num_samples,)
    orig_rate, new_rate : int
        Sample rates in Hz.

    Returns
    -------
    torch.Tensor, shape = (ceil(num_samples * new_rate / orig_rate),), dtype = float32
        On the CPU (soxr runs there), whatever device `waveform` was on.
    """
    if waveform.dim() != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {tuple(waveform.shape)}")
    if orig_rate == new_rate:
        return waveform
    array = waveform.detach().cpu().numpy().astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(_resample_array(array, orig_rate, new_rate)))


def _resample_array(waveform: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """`resample` on the NumPy array `load_audio` holds, saving two tensor conversions."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return waveform
    # what librosa.resample(res_type="soxr_hq") computes: soxr's high-quality mode, zero-padded or
    # cut to ceil(n * new / old) samples, without the 2 s that librosa's first resample spends
    # importing scipy.signal and numba (a 1-sample file at 44.1 kHz still gives 1 sample at 16 kHz)
    size = int(np.ceil(waveform.shape[-1] * (float(new_rate) / orig_rate)))
    resampled = soxr.resample(waveform, orig_rate, new_rate, quality="HQ").astype(np.float32, copy=False)
    if resampled.shape[-1] < size:
        return np.pad(resampled, (0, size - resampled.shape[-1]))
    return resampled[:size]


def find_audio_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a list of audio files.

    Files are kept in the order given, whatever their extension (the user named them).
    Folders are searched recursively for `AUDIO_EXTENSIONS` (any case) and their files
    sorted; hidden files and folders (".name", e.g. macOS "._x.wav" resource forks) are skipped.

    Parameters
    ----------
    inputs : iterable of str or os.PathLike
        Files and folders; a single path is accepted too.

    Returns
    -------
    list of Path

    Raises
    ------
    AudioError
        When an input does not exist.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]  # a bare string would otherwise be iterated one character at a time
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(_audio_files_under(path))
        elif path.exists():
            found.append(path)
        else:
            raise AudioError(f"{path}: no such file or directory")
    return found


def _audio_files_under(folder: Path) -> list[Path]:
    files = []
    for root, folder_names, file_names in os.walk(folder):
        folder_names[:] = [name for name in folder_names if not name.startswith(".")]
        for name in file_names:
            if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                files.append(Path(root, name))
    return sorted(files)


def _check_file(path: Path) -> None:
    """Turn the problems that precede decoding into messages a user can act on."""
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except PermissionError:
        raise AudioError(f"{path}: permission denied") from None
    except OSError as error:
        raise AudioError(f"{path}: cannot open ({error.strerror})") from None
    if size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")


def _read_with_soundfile(path: Path, offset: float, duration: float | None) -> tuple[np.ndarray, int]:
    """Seek to `offset` and read `duration` seconds; returns (samples (frames, channels), rate)."""
    with soundfile.SoundFile(str(path)) as audio_file:
        rate = _checked_rate(path, audio_file.samplerate)
        start = round(offset * rate)
        if audio_file.frames > 0 and start >= audio_file.frames:
            raise AudioError(
                f"{path}: offset {offset} s is at or past the end of the audio "
                f"({audio_file.frames / rate:.3f} s)"
            )
        num_frames = audio_file.frames - start if duration is None else max(round(duration * rate), 1)
        try:
            if start > 0:
                audio_file.seek(start)
            samples = _read_blocks(audio_file, num_frames)
        except soundfile.LibsndfileError as error:
            # the header was read, the data was not: no other decoder will do better
            raise AudioError(
                f"{path}: audio data is truncated or corrupt ({error.error_string.rstrip('.')})"
            ) from None
    return samples, rate


# Samples (all channels) read at a time: 64 MiB of float32.
_BLOCK_SAMPLES = 2**24


def _read_blocks(audio_file: soundfile.SoundFile, num_frames: int) -> np.ndarray:
    """Up to `num_frames` frames from the current position, (frames, channels) float32.

    Read a block at a time, so memory follows the data that is there: a damaged header that
    claims 4 billion frames (or 65535 channels) would otherwise allocate tens of GiB up front.
    """
    block_frames = max(1, _BLOCK_SAMPLES // audio_file.channels)
    blocks = []
    while num_frames > 0:
        block = audio_file.read(min(num_frames, block_frames), dtype="float32", always_2d=True)
        if not len(block):
            break
        blocks.append(block)
        num_frames -= len(block)
    if len(blocks) == 1:
        return blocks[0]
    return np.concatenate(blocks) if blocks else np.zeros((0, audio_file.channels), np.float32)


def _decode_with_librosa(path: Path, offset: float, duration: float | None) -> tuple[np.ndarray, int]:
    """Decode what libsndfile cannot (M4A/AAC) through audioread; (samples (frames, channels), rate)."""
    try:
        with warnings.catch_warnings():
            # librosa warns that soundfile failed and that audioread is deprecated; we know both.
            warnings.simplefilter("ignore")
            samples, rate = librosa.load(path, sr=None, mono=False, offset=offset, duration=duration)
    except Exception as error:  # audioread raises its own classes per backend
        reason = _soundfile_reason(path)
        raise AudioError(f"{path}: not a readable audio file ({reason})") from error
    # librosa returns (num_samples,) for mono and (num_channels, num_samples) otherwise.
    samples = np.atleast_2d(samples).T.astype(np.float32, copy=False)
    return samples, _checked_rate(path, int(rate))


def _checked_rate(path: Path, rate: int) -> int:
    """A header's sample rate, refused when it is not positive (a damaged or hand-made header)."""
    if rate <= 0:
        raise AudioError(f"{path}: the header gives a sample rate of {rate} Hz")
    return rate


def _soundfile_reason(path: Path) -> str:
    """libsndfile's explanation (e.g. "Format not recognised"), the clearest one available."""
    try:
        soundfile.info(str(path))
    except soundfile.LibsndfileError as error:
        reason = error.error_string.rstrip(".")  # e.g. "Format not recognised"
        # _check_file has seen a regular file; libsndfile says this of MP3 data it cannot parse
        return "Format not recognised" if reason.startswith("File does not exist") else reason
    except Exception as error:  # whatever else goes wrong is still the best explanation
        return str(error)
    return "unsupported format"


def _describe_length(path: Path) -> str:
    try:
        info = soundfile.info(str(path))
    except Exception:  # only enriches an error message; never hide the original error
        return "an unknown length"
    return f"{info.frames} samples, {info.frames / info.samplerate:.3f} s"
