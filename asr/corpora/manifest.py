"""A corpus given as lhotse cut manifests (Kathleen, LibriSpeech, or any user's data)."""

import random
from pathlib import Path

import lhotse
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

from asr.data import AudioCache


def load_cuts(path: str | Path) -> CutSet:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run the recipe's prepare stage first)")
    return lhotse.load_manifest(path)


def whole_recording_cut(path: Path, cut_id: str, text: str, speaker: str | None = None) -> MonoCut:
    """A cut over a whole audio file (absolute path, so manifests work from any folder) with its text."""
    recording = Recording.from_file(path.resolve(), recording_id=cut_id)
    supervision = SupervisionSegment(
        id=cut_id, recording_id=cut_id, start=0.0, duration=recording.duration, text=text, speaker=speaker
    )
    return MonoCut(
        id=cut_id,
        start=0.0,
        duration=recording.duration,
        channel=0,
        recording=recording,
        supervisions=[supervision],
    )


class ManifestCorpus:
    """Training and dev cuts from lhotse manifests.

    Speed perturbation (Ko et al. 2015) draws one factor from `speed_factors` per utterance and per
    epoch, so an epoch keeps the corpus's size while the model hears every utterance at every speed
    over the run. `cache_audio` decodes the training audio once into memory (about 230 MB per hour
    at 16 kHz), which saves decoding FLAC every epoch.
    """

    def __init__(
        self,
        train_cuts: str,
        dev_cuts: str,
        speed_factors=(1.0,),
        max_duration_seconds: float = 20.0,
        cache_audio: bool = False,
        seed: int = 0,
    ):
        self._cuts = load_cuts(train_cuts).filter(lambda c: 0 < c.duration <= max_duration_seconds).to_eager()
        if len(self._cuts) == 0:
            raise ValueError(f"{train_cuts}: no utterance between 0 and {max_duration_seconds} s")
        self.speed_factors = tuple(speed_factors)
        self.seed = seed
        self._dev = load_cuts(dev_cuts).to_eager()
        self._texts = [s.text or "" for cut in self._cuts for s in cut.supervisions]
        self.cache = AudioCache(self._cuts) if cache_audio else None
        self.max_utterance_seconds = max(c.duration for c in self._cuts) / min(self.speed_factors)

    def train_cuts(self, epoch: int) -> CutSet:
        if self.speed_factors == (1.0,):
            return self._cuts
        rng = random.Random(self.seed * 1_000_003 + epoch)
        factors = [rng.choice(self.speed_factors) for _ in range(len(self._cuts))]
        return CutSet.from_cuts(
            cut if factor == 1.0 else cut.perturb_speed(factor)
            for cut, factor in zip(self._cuts, factors, strict=True)
        )

    def dev_cuts(self) -> CutSet:
        return self._dev

    def texts(self) -> list[str]:
        return self._texts

    def speakers(self) -> list[str]:
        return sorted({s.speaker for cut in self._cuts for s in cut.supervisions if s.speaker})
