"""Synthetic voices for the digits recipe: the ten digit words spoken by eSpeak NG in many voices.

    .venv/bin/pip install espeakng-loader   # eSpeak NG's library and voice data (GPL-3.0-or-later)
    .venv/bin/python recipes/digits/synthetic/make_voices.py --out recipes/digits/synthetic/recordings

FSDD has five speakers, and a model trained on four of them misheard a fifth voice's words four
to five times as often as those of the voices it trained on (recipes/digits/README.md, "Synthetic
voices"). eSpeak NG is a formant synthesiser: it sounds robotic, but each of its accents and
variants (male, female, old, young, breathy, Klatt-style) puts the formants, pitch and speaking
rate elsewhere, which is the variation four voices cannot show a model.

Each clip is one digit word in a voice drawn from 8 English accents x 63 variants, at a speaking
rate of 110-230 words per minute, a base pitch of 10-90 and a pitch range of 10-90 (eSpeak's
scales), drawn from a seeded generator; then resampled to FSDD's 8 kHz (soxr), cut to the speech
plus 5 ms at each end (as FSDD's clips are cut close to it), and scaled to a peak of 0.3-0.9.
Files are named like FSDD's, `{digit}_synth_{take}.flac`, with takes 5 and up: FSDD's training
split, so `asr-prepare digits` never puts them in a dev or test set. The same arguments draw the
same voices and settings, and every file has the same length, but eSpeak NG adds random noise to
its breathy voices: 93 to 365 of the 900 files differed in it between the runs compared (2026-12-07).
`recordings/` holds the run the recipe was measured with.
"""

import argparse
import ctypes
import os
import random
from pathlib import Path

import espeakng_loader
import librosa
import numpy as np
import soundfile

from asr.corpora.fsdd import DIGIT_WORDS, TEST_INDICES

ACCENTS = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
# eSpeak NG's voice variants (espeak-ng-data/voices/!v) less those that are not meant to sound human
# (robots, whisper, "Demonic", "Tweaky")
# fmt: off
VARIANTS = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Gene", "Henrique", "Hugo", "Jacky", "Lee",
    "Michael", "Mike", "Reed", "Storm", "adam", "anika", "aunty", "belinda", "benjamin", "boris",
    "caleb", "david", "ed", "edward", "f1", "f2", "f3", "f4", "f5", "gustave", "ian", "iven", "john",
    "klatt", "klatt2", "klatt3", "klatt4", "linda", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "max", "michel", "norbert", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph",
    "travis", "victor", "zac", "grandma", "grandpa",
)
# fmt: on
SAMPLE_RATE = 8000  # FSDD's
FIRST_TAKE = TEST_INDICES.stop  # FSDD's takes 0-4 are its test split
EDGE_SAMPLES = 40  # kept around the detected speech: 5 ms at 8 kHz
AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT in speak_lib.h
RATE, PITCH, PITCH_RANGE = 1, 3, 4  # espeak_PARAMETER


class Synthesiser:
    """eSpeak NG through its C API (`speak_lib.h`), returning 16-bit samples at its own rate."""

    def __init__(self):
        self.library = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data_parent = os.path.dirname(espeakng_loader.get_data_path())  # the folder holding espeak-ng-data
        self.sample_rate = self.library.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(), 0
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"eSpeak NG did not start (data in {data_parent})")
        self.chunks = []
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
        )
        self.callback = callback_type(self._collect)  # kept alive as long as the library may call it
        self.library.espeak_SetSynthCallback(self.callback)

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # go on

    def speak(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> np.ndarray:
        if self.library.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        for parameter, value in ((RATE, rate), (PITCH, pitch), (PITCH_RANGE, pitch_range)):
            self.library.espeak_SetParameter(parameter, value, 0)
        self.chunks.clear()
        encoded = text.encode() + b"\0"
        self.library.espeak_Synth(encoded, len(encoded), 0, 0, 0, 0, None, None)
        self.library.espeak_Synchronize()
        return np.concatenate(self.chunks).astype(np.float32) / 32768


def close_cut(samples: np.ndarray) -> np.ndarray:
    """The speech (within 40 dB of the loudest part) and EDGE_SAMPLES around it."""
    _, (start, end) = librosa.effects.trim(samples, top_db=40, frame_length=256, hop_length=64)
    return samples[max(0, start - EDGE_SAMPLES) : min(len(samples), end + EDGE_SAMPLES)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the FLAC files")
    parser.add_argument("--takes", type=int, default=90, help="clips per digit (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    synthesiser = Synthesiser()
    rng = random.Random(args.seed)
    clips = {}
    for take in range(FIRST_TAKE, FIRST_TAKE + args.takes):
        for digit, word in enumerate(DIGIT_WORDS):
            voice = f"{rng.choice(ACCENTS)}+{rng.choice(VARIANTS)}"
            rate, pitch, pitch_range = rng.randint(110, 230), rng.randint(10, 90), rng.randint(10, 90)
            samples = synthesiser.speak(word, voice, rate, pitch, pitch_range)
            samples = librosa.resample(
                samples, orig_sr=synthesiser.sample_rate, target_sr=SAMPLE_RATE, res_type="soxr_hq"
            )
            clips[f"{digit}_synth_{take}"] = close_cut(samples)
    # peaks of 0.3-0.9, each drawn from a generator seeded by the file's rank in name order
    for rank, name in enumerate(sorted(clips)):
        samples = clips[name]
        peak = np.random.default_rng(rank).uniform(0.3, 0.9)
        samples = samples / max(1e-6, float(np.abs(samples).max())) * peak
        pcm = np.clip(np.floor(samples * 32768), -32768, 32767).astype(np.int16)  # as libsndfile writes WAV
        soundfile.write(out / f"{name}.flac", pcm, SAMPLE_RATE, subtype="PCM_16")
    print(f"wrote {len(clips)} clips to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
