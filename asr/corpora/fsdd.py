"""The Free Spoken Digit Dataset as connected-digit strings.

FSDD holds isolated digits (`recordings/{digit}_{speaker}_{index}.wav|flac`, 8 kHz). The digits
recipe trains on strings of 1-15 recordings (`max_digits`) of one speaker joined with random pauses,
made afresh every epoch from the train split (take index 5-49), and is scored on fixed strings built
from the test split (take index 0-4), written as real audio files and lhotse manifests.
"""

import logging
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from lhotse import CutSet

from asr.corpora.manifest import load_cuts, whole_recording_cut
from asr.data import AudioCache

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_INDICES = range(0, 5)  # FSDD's official split: takes 0-4 are test, 5-49 train
FILE_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.(wav|flac)$", re.IGNORECASE)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StringConfig:
    """How digit strings are put together (training strings and the fixed dev/test strings)."""

    min_digits: int = 1
    max_digits: int = 7
    min_pause: float = 0.0  # seconds of silence between digits
    max_pause: float = 0.5
    max_edge_silence: float = 0.3  # seconds of silence before the first and after the last digit
    # chance that an end gets no silence at all, as in FSDD's own clips, which are cut close to the
    # speech: a model that never heard speech start at the first frame misheard such clips
    bare_edge_probability: float = 0.0
    speed_factors: tuple[float, ...] = (1.0,)  # one is drawn per string (speed perturbation)
    speed_per_digit: bool = False  # a factor per digit instead: speaking rate varies within a string
    # chance that a string is a single recording, as FSDD ships them (otherwise min_digits to
    # max_digits are drawn uniformly)
    single_clip_probability: float = 0.0
    # chance that a training string takes each digit from any speaker, not one: the model cannot
    # lean on who is speaking (one voice per string, and each voice on its own equipment) to
    # decide what is said
    mixed_speaker_probability: float = 0.0
    # each digit's level changed by its own gain, drawn from +-this many dB: within one recording a
    # speaker moves or another one speaks at another level, which a model trained on strings of even
    # level misheard (recipes/digits/README.md, "Word times")
    level_jitter_db: float = 0.0


def fsdd_clips(fsdd_dir: str | Path) -> CutSet:
    """One cut per FSDD recording, with the digit word as its supervision and speaker/take in `custom`.

    Accepts this repository's FLAC copy and an upstream checkout (WAV); both name files the same way.
    """
    folder = Path(fsdd_dir)
    folder = folder / "recordings" if (folder / "recordings").is_dir() else folder
    paths = sorted(p for p in folder.iterdir() if FILE_NAME.match(p.name)) if folder.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"{fsdd_dir}: no FSDD recordings named like 7_jackson_32.wav found")
    cuts = []
    for path in paths:
        digit, speaker, index, _ = FILE_NAME.match(path.name).groups()
        cut = whole_recording_cut(path, path.stem, DIGIT_WORDS[int(digit)], speaker=speaker)
        cut.custom = {"speaker": speaker, "take": int(index)}
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def split_clips(clips: CutSet) -> tuple[CutSet, CutSet]:
    """(train, test) by FSDD's take index."""
    test = clips.filter(lambda c: c.custom["take"] in TEST_INDICES).to_eager()
    train = clips.filter(lambda c: c.custom["take"] not in TEST_INDICES).to_eager()
    return train, test


def _by_speaker(clips: CutSet) -> dict[str, list]:
    groups = defaultdict(list)
    for cut in clips:
        groups[cut.custom["speaker"]].append(cut)
    return dict(sorted(groups.items()))


def make_string(clips: list, rng: random.Random, config: StringConfig, cut_id: str):
    """A MixedCut of min_digits to max_digits clips (one with `single_clip_probability`) with silences
    between them, one speed factor for the whole string (or one per digit with `speed_per_digit`)."""
    single = _chance(rng, config.single_clip_probability)
    count = 1 if single else rng.randint(config.min_digits, config.max_digits)
    return join_clips([rng.choice(clips) for _ in range(count)], rng, config, cut_id)


def make_strings(clips: CutSet, num_strings: int, config: StringConfig, seed: int, prefix: str) -> CutSet:
    """`num_strings` strings, speakers taken in turn (with `mixed_speaker_probability`, a string draws
    from every speaker's clips); the same seed always gives the same strings."""
    rng = random.Random(seed)
    speakers = _by_speaker(clips)
    names = list(speakers)
    every_clip = [cut for name in names for cut in speakers[name]]
    strings = []
    for i in range(num_strings):
        name = names[i % len(names)]
        if _chance(rng, config.mixed_speaker_probability):
            strings.append(make_string(every_clip, rng, config, f"{prefix}{i:05d}_mixed"))
        else:
            strings.append(make_string(speakers[name], rng, config, f"{prefix}{i:05d}_{name}"))
    return CutSet.from_cuts(strings)


def join_clips(chosen: list, rng: random.Random, config: StringConfig, cut_id: str):
    """The clips in order as one MixedCut: speed factors, pauses and edge silences drawn from `rng`."""
    if config.speed_per_digit:
        speeds = [rng.choice(config.speed_factors) for _ in chosen]
    else:
        speeds = [rng.choice(config.speed_factors)] * len(chosen)
    chosen = [c.perturb_speed(speed) if speed != 1.0 else c for c, speed in zip(chosen, speeds, strict=True)]
    if config.level_jitter_db > 0:
        jitter = config.level_jitter_db
        chosen = [c.perturb_volume(round(10 ** (rng.uniform(-jitter, jitter) / 20), 4)) for c in chosen]
    string = chosen[0].pad(duration=chosen[0].duration + _edge_silence(rng, config), direction="left")
    for clip in chosen[1:]:
        string = string.pad(duration=string.duration + rng.uniform(config.min_pause, config.max_pause))
        string = string.append(clip)
    string = string.pad(duration=string.duration + _edge_silence(rng, config))
    return string.with_id(cut_id)


def _chance(rng: random.Random, probability: float) -> bool:
    """True with `probability`. At 0 no number is drawn, so options that are off leave the random
    sequence, and with it the fixed dev and test strings, as they were."""
    return probability > 0 and rng.random() < probability


def _edge_silence(rng: random.Random, config: StringConfig) -> float:
    """Seconds of silence at one end of a string (none with `bare_edge_probability`)."""
    if _chance(rng, config.bare_edge_probability):
        return 0.0
    return rng.uniform(0, config.max_edge_silence)


def speaker_strings(clips: list, config: StringConfig, seed: int, prefix: str) -> CutSet:
    """Strings that use each of `clips` (one speaker's recordings, both splits) exactly once.

    For a speaker left out of training (`exclude_speakers`): its 500 recordings measure an unseen voice
    with far less noise than its 30 test-split ones, which the test strings reuse, so that one
    misheard recording moves that speaker's test WER by several points (recipes/digits/README.md).
    """
    rng = random.Random(seed)
    order = sorted(clips, key=lambda clip: clip.id)
    rng.shuffle(order)
    strings, start = [], 0
    while start < len(order):
        count = rng.randint(config.min_digits, config.max_digits)
        string = join_clips(order[start : start + count], rng, config, f"{prefix}{len(strings):05d}")
        strings.append(string)
        start += count
    return CutSet.from_cuts(strings)


def write_strings(strings: CutSet, out_dir: Path) -> CutSet:
    """Render strings to FLAC files plus `transcripts.txt`, and return cuts over those files."""
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    cuts = []
    with open(
        out_dir / "transcripts.txt", "w", encoding="utf-8"
    ) as transcripts:  # utt_id<TAB>text, as asr-wer reads
        for string in strings:
            text = " ".join(s.text for s in sorted(string.supervisions, key=lambda s: s.start))
            path = audio_dir / f"{string.id}.flac"
            audio = string.load_audio()[0]
            soundfile.write(path, np.clip(audio, -1, 1), string.sampling_rate, subtype="PCM_16")
            transcripts.write(f"{string.id}\t{text}\n")
            cuts.append(whole_recording_cut(path, string.id, text))
    cut_set = CutSet.from_cuts(cuts)
    cut_set.to_file(out_dir / "cuts.jsonl.gz")
    return cut_set


def write_clip_transcripts(clips: CutSet, path: Path) -> None:
    """`utt_id<TAB>digit word` for each clip, as asr-wer reads them."""
    with open(path, "w", encoding="utf-8") as transcripts:
        transcripts.writelines(f"{clip.id}\t{clip.supervisions[0].text}\n" for clip in clips)


def prepare_digits(
    fsdd_dir: str | Path,
    out_dir: str | Path,
    num_dev: int = 100,
    num_test: int = 200,
    num_long: int = 50,
    seed: int = 20261125,
    held_out: tuple[str, ...] = (),
    synthetic_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Write the clip manifests and the fixed dev, test and long-test strings of the digits recipe.

    Dev strings use test-split takes 0-1, test strings takes 2-4, so the strings a model is selected
    on never share a recording with the strings it is scored on. Pauses between digits are digital
    silence of 50-400 ms, as in recordings made by concatenating clips. The long set (takes 2-4,
    20-40 digits, 10-25 s) is longer than any training string: it measures how attention copes with
    lengths it never saw. For each speaker named in `held_out`, `held_out_<speaker>` holds strings
    that use all of that speaker's recordings once (`speaker_strings`), to score a model trained
    without the speaker, and `clips.jsonl.gz` with `clips.txt` the same recordings one by one.
    `fsdd_test_clips.txt` holds the words of the 250 test-split clips: FSDD's clips are cut close
    to the speech, which strings with pauses around every digit do not test. With `synthetic_dir`
    (clips named like FSDD's, of voices that are not FSDD's: recipes/digits/synthetic),
    `synthetic_train_clips.jsonl.gz` lists them all, for training only.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = fsdd_clips(fsdd_dir)
    speakers = _by_speaker(clips)
    unknown = sorted(set(held_out) - set(speakers))
    if unknown:
        raise ValueError(
            f"{fsdd_dir}: no recordings of {', '.join(unknown)} (speakers: {', '.join(speakers)})"
        )
    train, test = split_clips(clips)
    train.to_file(out_dir / "fsdd_train_clips.jsonl.gz")
    test.to_file(out_dir / "fsdd_test_clips.jsonl.gz")
    write_clip_transcripts(test, out_dir / "fsdd_test_clips.txt")
    normal = StringConfig(min_pause=0.05, max_pause=0.4, max_edge_silence=0.3)
    long = StringConfig(min_digits=20, max_digits=40, min_pause=0.05, max_pause=0.25, max_edge_silence=0.3)
    paths = {"train_clips": out_dir / "fsdd_train_clips.jsonl.gz"}
    if synthetic_dir is not None:
        synthetic = fsdd_clips(synthetic_dir)
        shared = sorted({c.custom["speaker"] for c in synthetic} & set(speakers))
        if shared:
            raise ValueError(
                f"{synthetic_dir}: speaker names {', '.join(shared)} are also FSDD's in {fsdd_dir}"
            )
        paths["synthetic_train_clips"] = out_dir / "synthetic_train_clips.jsonl.gz"
        synthetic.to_file(paths["synthetic_train_clips"])
        log.info("listed %d synthetic clips of %s for training", len(synthetic), synthetic_dir)
    sets = (
        ("dev", (0, 1), num_dev, normal, 1),
        ("test", (2, 3, 4), num_test, normal, 2),
        ("long", (2, 3, 4), num_long, long, 3),
    )
    for name, takes, count, config, offset in sets:
        if not count:
            continue
        clips = test.filter(lambda c, takes=takes: c.custom["take"] in takes).to_eager()
        strings = make_strings(clips, count, config, seed + offset, prefix=f"digits_{name}_")
        write_strings(strings, out_dir / name)
        paths[name] = out_dir / name / "cuts.jsonl.gz"
        log.info(
            "wrote %d %s strings (%.1f min) to %s",
            count,
            name,
            sum(c.duration for c in strings) / 60,
            out_dir / name,
        )
    for speaker in held_out:
        strings = speaker_strings(speakers[speaker], normal, seed + 4, prefix=f"digits_heldout_{speaker}_")
        write_strings(strings, out_dir / f"held_out_{speaker}")
        # the same recordings one by one, cut close to the speech as FSDD ships them
        clips_of_speaker = CutSet.from_cuts(speakers[speaker])
        clips_of_speaker.to_file(out_dir / f"held_out_{speaker}" / "clips.jsonl.gz")
        write_clip_transcripts(clips_of_speaker, out_dir / f"held_out_{speaker}" / "clips.txt")
        paths[f"held_out_{speaker}"] = out_dir / f"held_out_{speaker}" / "cuts.jsonl.gz"
        log.info("wrote %d strings of all %d recordings of %s", len(strings), len(speakers[speaker]), speaker)
    return paths


class DigitStrings:
    """The digits recipe's corpus: fresh training strings every epoch, deterministic in (seed, epoch)."""

    def __init__(
        self, clips: CutSet, dev: CutSet, strings_per_epoch: int, config: StringConfig, seed: int = 0
    ):
        self.clips = clips
        self.dev = dev
        self.strings_per_epoch = strings_per_epoch
        self.config = config
        self.seed = seed
        self.cache = AudioCache(clips)
        # what the model sees at most in training; asr-transcribe splits longer audio at pauses
        self.max_utterance_seconds = max(c.duration for c in self.train_cuts(0))

    @classmethod
    def from_options(
        cls,
        train_clips: str,
        dev_cuts: str,
        strings_per_epoch: int,
        seed: int = 0,
        exclude_speakers=(),
        extra_train_clips: str | None = None,
        **string_options,
    ):
        """`exclude_speakers` leaves voices out of training (leave-one-speaker-out experiments).

        `extra_train_clips`: a second clip manifest for training, such as the synthetic voices
        `asr-prepare digits` lists; each of its speakers joins the rotation of voices that training
        strings are made from (`make_strings`). None: FSDD's clips alone.
        """
        if "speed_factors" in string_options:
            string_options["speed_factors"] = tuple(string_options["speed_factors"])
        excluded = set(exclude_speakers or ())
        clips = load_cuts(train_clips)
        if extra_train_clips is not None:
            if not Path(extra_train_clips).is_file():
                raise FileNotFoundError(
                    f"{extra_train_clips}: no such manifest; `asr-prepare digits` writes the synthetic "
                    "voices' one (run it again), or set data.corpus.extra_train_clips=null to train on "
                    "FSDD alone"
                )
            clips = CutSet.from_cuts(list(clips) + list(load_cuts(extra_train_clips)))
        clips = clips.filter(lambda c: c.custom["speaker"] not in excluded).to_eager()
        dev = load_cuts(dev_cuts).filter(lambda c: c.id.rsplit("_", 1)[-1] not in excluded).to_eager()
        return cls(clips, dev, strings_per_epoch, StringConfig(**string_options), seed)

    def train_cuts(self, epoch: int) -> CutSet:
        return make_strings(
            self.clips,
            self.strings_per_epoch,
            self.config,
            seed=self.seed * 100_003 + epoch,
            prefix=f"train_e{epoch:03d}_",
        )

    def dev_cuts(self) -> CutSet:
        return self.dev

    def speakers(self) -> list[str]:
        return sorted({cut.custom["speaker"] for cut in self.clips})

    def texts(self) -> list[str]:
        return [s.text for c in self.clips for s in c.supervisions]
