"""A corpus given as lhotse cut manifests (Kathleen, LibriSpeech, or any user's data)."""

from pathlib import Path

import lhotse
from lhotse import CutSet


def load_cuts(path: str | Path) -> CutSet:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run the recipe's prepare stage first)")
    return lhotse.load_manifest(path)


class ManifestCorpus:
    """Training cuts from a manifest, optionally with speed-perturbed copies (Ko et al. 2015)."""

    def __init__(
        self,
        train_cuts: str,
        dev_cuts: str,
        speed_factors=(1.0,),
        max_duration_seconds: float = 20.0,
        seed: int = 0,
    ):
        cuts = load_cuts(train_cuts).filter(lambda c: 0 < c.duration <= max_duration_seconds).to_eager()
        copies = [cuts if factor == 1.0 else cuts.perturb_speed(factor) for factor in speed_factors]
        self._train = CutSet.from_cuts(cut for copy in copies for cut in copy).to_eager()
        self._dev = load_cuts(dev_cuts).to_eager()
        self._texts = [s.text or "" for cut in cuts for s in cut.supervisions]
        self.cache = None
        self.max_utterance_seconds = max((c.duration for c in self._train), default=0.0)

    def train_cuts(self, epoch: int) -> CutSet:
        return self._train

    def dev_cuts(self) -> CutSet:
        return self._dev

    def texts(self) -> list[str]:
        return self._texts
