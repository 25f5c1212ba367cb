"""LibriSpeech (Panayotov et al. 2015; CC BY 4.0): read English audiobooks, 16 kHz FLAC.

Preparation goes through lhotse's own recipe (`lhotse.recipes.librispeech`), which reads the
official layout `LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` with one
`<speaker>-<chapter>.trans.txt` per chapter, and writes recordings and supervisions per part; this
module joins them into the cut manifests that `ManifestCorpus` (data.corpus.type=manifests) and
`asr-evaluate` read. Three training subsets, named as lhotse names its downloads:

- `mini_librispeech`: train-clean-5 (5 h), dev-clean-2 for validation; a smoke run.
- `train-clean-100`: 100 h, dev-clean for validation.
- `librispeech`: all 960 h (train-clean-100, train-clean-360, train-other-500), dev-clean.

Every subset is scored on test-clean and test-other (and dev-other is prepared too when present).
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lhotse import CutSet, MonoCut
from lhotse.recipes import download_librispeech
from lhotse.recipes import prepare_librispeech as lhotse_prepare_librispeech

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subset:
    train: tuple[str, ...]  # parts whose utterances are trained on
    dev: str  # the part validated on after every epoch (best.pt, the dev WER in train.log)


SUBSETS = {
    "mini_librispeech": Subset(train=("train-clean-5",), dev="dev-clean-2"),
    "train-clean-100": Subset(train=("train-clean-100",), dev="dev-clean"),
    "librispeech": Subset(train=("train-clean-100", "train-clean-360", "train-other-500"), dev="dev-clean"),
}
# Scored by the recipe's last stage; the standard LibriSpeech results table has all four.
EVALUATION_PARTS = ("test-clean", "test-other", "dev-other")
REQUIRED_EVALUATION_PARTS = ("test-clean", "test-other")


def manifest_name(part: str) -> str:
    """`test-clean` -> `test_clean_cuts.jsonl.gz`: the evaluation sets' manifests in the output folder."""
    return f"{part.replace('-', '_')}_cuts.jsonl.gz"


def find_corpus(librispeech_dir: str | Path) -> Path:
    """The folder holding the parts: `librispeech_dir` itself or its `LibriSpeech/` (absolute)."""
    folder = Path(librispeech_dir).resolve()  # recordings keep absolute paths: manifests work from anywhere
    if (folder / "LibriSpeech").is_dir():
        folder = folder / "LibriSpeech"
    if not folder.is_dir():
        raise FileNotFoundError(f"{librispeech_dir}: no such folder")
    return folder


def check_parts(corpus_dir: Path, subset: Subset) -> list[str]:
    """The parts to prepare; a missing training or dev part is an error, a missing test part a warning."""
    missing = [p for p in (*subset.train, subset.dev) if not (corpus_dir / p).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{corpus_dir}: no {', '.join(missing)} folder (expected LibriSpeech/<part>/<speaker>/<chapter>/)"
        )
    evaluation = [p for p in EVALUATION_PARTS if (corpus_dir / p).is_dir()]
    for part in REQUIRED_EVALUATION_PARTS:
        if part not in evaluation:
            log.warning("%s: no %s folder; the recipe's evaluation stage needs it", corpus_dir, part)
    return [*subset.train, subset.dev, *evaluation]


def utterance_cuts(part: dict) -> Iterator[MonoCut]:
    """A part's utterances as cuts named by utterance id (`CutSet.from_manifests` appends a number)."""
    # one lookup table: SupervisionSet looks an id up by a linear search
    supervisions = {s.recording_id: s for s in part["supervisions"]}
    for recording in part["recordings"]:
        yield MonoCut(
            id=recording.id,
            start=0.0,
            duration=recording.duration,
            channel=0,
            recording=recording,
            supervisions=[supervisions[recording.id]],
        )


def prepare_librispeech(
    librispeech_dir: str | Path | None,
    out_dir: str | Path,
    subset: str = "train-clean-100",
    num_jobs: int = 4,
) -> dict[str, Path]:
    """Write `train_cuts.jsonl.gz`, `dev_cuts.jsonl.gz` and `test_clean_cuts.jsonl.gz` etc. under `out_dir`.

    `librispeech_dir` None downloads the subset's parts and test-clean/test-other from openslr.org
    into `out_dir` first (6.3 GB for train-clean-100, about 60 GB for all 960 h). lhotse's
    per-part manifests are kept in `out_dir/lhotse`, so a second run reads them instead of every
    audio header again.
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown LibriSpeech subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    chosen, out_dir = SUBSETS[subset], Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if librispeech_dir is None:
        parts = [*chosen.train, chosen.dev, *REQUIRED_EVALUATION_PARTS]
        log.info("downloading %s into %s", ", ".join(parts), out_dir)
        librispeech_dir = download_librispeech(out_dir, dataset_parts=parts)
    corpus_dir = find_corpus(librispeech_dir)
    parts = check_parts(corpus_dir, chosen)
    manifests = lhotse_prepare_librispeech(
        corpus_dir, dataset_parts=parts, output_dir=out_dir / "lhotse", num_jobs=num_jobs
    )

    def cuts_of(names) -> CutSet:
        return CutSet.from_cuts(cut for name in names for cut in utterance_cuts(manifests[name]))

    outputs = {"train": (chosen.train, "train_cuts.jsonl.gz"), "dev": ((chosen.dev,), "dev_cuts.jsonl.gz")}
    outputs |= {part: ((part,), manifest_name(part)) for part in parts if part in EVALUATION_PARTS}
    paths = {}
    for name, (names, file_name) in outputs.items():
        cuts = cuts_of(names)
        if len(cuts) == 0:
            raise ValueError(f"{corpus_dir}: no utterances in {', '.join(names)}")
        paths[name] = out_dir / file_name
        cuts.to_file(paths[name])
        log.info("%s: %d utterances, %.2f h", name, len(cuts), sum(c.duration for c in cuts) / 3600)
    return paths
