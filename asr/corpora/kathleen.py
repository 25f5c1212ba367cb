"""The Kathleen voice dataset: one US-English speaker reading the CMU ARCTIC prompts (CC0).

Two layouts are accepted:

- upstream (`rhasspy/dataset-voice-cathy`): `<utt_id>.wav` (48 kHz, 2 channels) beside `<utt_id>.txt`
  in one folder, where utt_id is `arctic_<prompt>_<timestamp>`;
- converted: `transcripts.tsv` (columns `utt_id`, `prompt_id`, `split`, `text`, tab-separated, with a
  header) and `audio/<utt_id>.flac` (16 kHz mono), as `convert_upstream` writes it.

An upstream folder is converted first (channel mean, resampled to 16 kHz, FLAC), so training reads
small files at the model's rate. Splits go by prompt id, so no sentence is shared between them:
train a0001-a0593 and b0001-b0399, dev b0400-b0469, test b0470-b0539 (ARCTIC's last prompts).
"""

import csv
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import soundfile
from lhotse import CutSet

from asr.audio import AudioError, load_audio
from asr.corpora.manifest import whole_recording_cut

log = logging.getLogger(__name__)

UPSTREAM_COMMIT = "c51cb971036a127359b43c621f26ca5081eab13e"
UPSTREAM_URL = f"https://github.com/rhasspy/dataset-voice-cathy/archive/{UPSTREAM_COMMIT}.tar.gz"
SAMPLE_RATE = 16000
UTTERANCE = re.compile(r"^(arctic_[ab]\d{4})_\w+$")
COLUMNS = ("utt_id", "prompt_id", "split", "text")
SPLITS = ("train", "dev", "test")


def split_of(prompt_id: str) -> str:
    """train, dev or test for an ARCTIC prompt id such as `arctic_b0412`."""
    match = re.fullmatch(r"arctic_([ab])(\d{4})", prompt_id)
    if match is None:
        raise ValueError(f"not an ARCTIC prompt id: {prompt_id!r}")
    part, number = match.group(1), int(match.group(2))
    if part == "a" or number < 400:
        return "train"
    return "dev" if number < 470 else "test"


def read_transcripts(folder: Path) -> list[dict]:
    """The rows of a converted folder's transcripts.tsv, checked: audio files exist, texts are not empty."""
    path = folder / "transcripts.tsv"
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file, delimiter="\t")
        missing = [c for c in ("utt_id", "text") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (has {reader.fieldnames})")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        if not (row["text"] or "").strip():
            raise ValueError(f"{path}, line {line}: empty transcript for {row['utt_id']}")
        if not (folder / "audio" / f"{row['utt_id']}.flac").is_file():
            raise FileNotFoundError(f"{path}, line {line}: audio/{row['utt_id']}.flac not found")
        prompt = row.get("prompt_id") or UTTERANCE.match(row["utt_id"]).group(1)
        row["prompt_id"], row["split"] = prompt, row.get("split") or split_of(prompt)
    return rows


def convert_upstream(source: Path, out_dir: Path) -> Path:
    """Write the converted layout of an upstream folder under `out_dir` (idempotent: done files stay)."""
    wavs = sorted(p for p in source.glob("arctic_*.wav") if UTTERANCE.match(p.stem))
    if not wavs:
        raise FileNotFoundError(f"{source}: no Kathleen recordings (arctic_a0001_<n>.wav) found")
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for wav in wavs:
        text_path = wav.with_suffix(".txt")
        text = text_path.read_text(encoding="utf-8").strip() if text_path.is_file() else ""
        if not text:
            skipped.append(f"{wav.name} (no transcript)")
            continue
        flac = audio_dir / f"{wav.stem}.flac"
        if not flac.is_file():
            try:
                waveform = load_audio(wav, SAMPLE_RATE).numpy()  # channel mean, soxr resampling
            except AudioError as error:
                skipped.append(f"{wav.name} ({error})")
                continue
            partial = flac.with_suffix(".part.flac")
            soundfile.write(partial, np.clip(waveform, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
            os.replace(partial, flac)  # an interrupted conversion leaves no half file behind
        prompt = UTTERANCE.match(wav.stem).group(1)
        rows.append({"utt_id": wav.stem, "prompt_id": prompt, "split": split_of(prompt), "text": text})
    for reason in skipped:
        log.warning("skipped %s", reason)
    table = out_dir / "transcripts.tsv"
    with open(table.with_suffix(".tsv.part"), "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(table.with_suffix(".tsv.part"), table)
    log.info("converted %d recordings of %s into %s (%d skipped)", len(rows), source, out_dir, len(skipped))
    return out_dir


def download(out_dir: Path, url: str = UPSTREAM_URL) -> Path:
    """Download and unpack the upstream repository snapshot (about 300 MB); returns its folder."""
    target = out_dir / "upstream"
    if any(target.glob("arctic_*.wav")):
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / "dataset-voice-cathy.tar.gz"
    if not archive.is_file():
        log.info("downloading %s", url)
        with (
            tempfile.NamedTemporaryFile(dir=out_dir, suffix=".part", delete=False) as partial,
            urllib.request.urlopen(url, timeout=60) as response,
        ):
            shutil.copyfileobj(response, partial)
        os.replace(partial.name, archive)
    unpacked = out_dir / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    (top,) = [p for p in unpacked.iterdir() if p.is_dir()]
    os.replace(top, target)
    shutil.rmtree(unpacked)
    return target


def find_source(kathleen_dir: str | Path | None, work_dir: Path) -> Path:
    """A folder in the converted layout: `kathleen_dir` as it is, converted, or downloaded and converted."""
    if kathleen_dir is None:
        return convert_upstream(download(work_dir), work_dir / "converted")
    folder = Path(kathleen_dir)
    if (folder / "transcripts.tsv").is_file() and (folder / "audio").is_dir():
        return folder
    if folder.is_dir() and any(folder.glob("arctic_*.wav")):
        return convert_upstream(folder, work_dir / "converted")
    raise FileNotFoundError(
        f"{folder}: not a Kathleen folder (expected transcripts.tsv with audio/*.flac, "
        "or the upstream arctic_*.wav with .txt transcripts)"
    )


def prepare_kathleen(kathleen_dir: str | Path | None, out_dir: str | Path) -> dict[str, Path]:
    """Write `{train,dev,test}_cuts.jsonl.gz` under `out_dir` (test only when the copy has it).

    `kathleen_dir` None downloads the upstream snapshot into `out_dir` first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = find_source(kathleen_dir, out_dir)
    rows = read_transcripts(source)
    paths = {}
    for split in SPLITS:
        chosen = [r for r in rows if r["split"] == split]
        if not chosen:
            if split != "test":
                raise ValueError(f"{source}: no {split} utterances")
            continue
        cuts = CutSet.from_cuts(
            whole_recording_cut(source / "audio" / f"{r['utt_id']}.flac", r["utt_id"], r["text"], "kathleen")
            for r in chosen
        )
        paths[split] = out_dir / f"{split}_cuts.jsonl.gz"
        cuts.to_file(paths[split])
        log.info("%s: %d utterances, %.2f h", split, len(cuts), sum(c.duration for c in cuts) / 3600)
    return paths
