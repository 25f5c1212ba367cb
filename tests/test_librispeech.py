"""The LibriSpeech recipe on a tiny folder in LibriSpeech's own layout, with generated audio.

prepare (lhotse's recipe) -> manifests; then recipes/librispeech/run.sh as written (prepare, two
short epochs of a tiny BPE model, asr-average, asr-evaluate on test-other), and asr-transcribe on
the averaged model.
"""

import os
import subprocess
import sys
from pathlib import Path

import lhotse
import numpy as np
import pytest
import soundfile
import torch

from asr.checkpoint import load_checkpoint, load_model
from asr.cli.transcribe import main as transcribe
from asr.corpora.librispeech import prepare_librispeech
from asr.sentencepiece_tokenizer import SentencePieceTokenizer

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "log", "red", "blue"]
# LibriSpeech's parts have disjoint speakers: (part, speaker, chapter, utterances)
CHAPTERS = [
    ("train-clean-100", 19, 198, 4),
    ("train-clean-100", 26, 495, 4),
    ("dev-clean", 84, 121123, 2),
    ("test-clean", 1089, 134686, 2),
    ("test-other", 1688, 142285, 2),
]
# A model of about 40,000 parameters, so two epochs take seconds on one CPU core.
TINY = [
    "model.encoder.hidden_dim=16",
    "model.encoder.num_layers=0",
    "model.encoder.num_pyramid_levels=2",
    "model.encoder.ctc_level=2",
    "model.attention.attention_dim=16",
    "model.attention.location_kernel_size=5",
    "model.decoder.embedding_dim=8",
    "model.decoder.hidden_dim=16",
    "tokenizer.vocab_size=40",
    "trainer.max_epochs=2",
    "trainer.keep_epoch_checkpoints=2",
    "trainer.device=cpu",
    "trainer.num_threads=1",
    "trainer.stats_batches=1",
    "data.loader.max_duration=8",
    "data.loader.num_workers=0",
]


def write_librispeech(root: Path, chapters=CHAPTERS) -> dict[str, str]:
    """`root/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` with one
    `<speaker>-<chapter>.trans.txt` per chapter (upper case, as LibriSpeech's); returns {id: text}."""
    rng = np.random.default_rng(0)
    texts = {}
    for part, speaker, chapter, count in chapters:
        folder = root / "LibriSpeech" / part / str(speaker) / str(chapter)
        folder.mkdir(parents=True)
        lines = []
        for index in range(count):
            utterance_id = f"{speaker}-{chapter}-{index:04d}"
            words = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(2, 5)))]
            # one tone a word, a pitch a word: something for the encoder to hear
            tones = [
                0.3 * np.sin(2 * np.pi * (200 + 60 * WORDS.index(w)) * np.arange(4000) / 16000) for w in words
            ]
            audio = np.concatenate(tones) + 0.01 * rng.standard_normal(4000 * len(words))
            soundfile.write(folder / f"{utterance_id}.flac", audio.astype(np.float32), 16000)
            texts[utterance_id] = " ".join(words).upper()
            lines.append(f"{utterance_id} {texts[utterance_id]}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return texts


def test_prepare_writes_cut_manifests_with_absolute_paths(tmp_path, monkeypatch):
    texts = write_librispeech(tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)  # a relative --librispeech-dir must still give paths that work anywhere
    paths = prepare_librispeech("corpus", tmp_path / "data", subset="train-clean-100", num_jobs=1)
    assert {p.name for p in paths.values()} == {
        "train_cuts.jsonl.gz",
        "dev_cuts.jsonl.gz",
        "test_clean_cuts.jsonl.gz",
        "test_other_cuts.jsonl.gz",
    }
    train = lhotse.load_manifest(paths["train"])
    assert sorted(c.id for c in train) == sorted(i for i in texts if i.split("-")[0] in ("19", "26"))
    for cut in train:
        assert (
            cut.supervisions[0].text == texts[cut.id] and cut.supervisions[0].speaker == cut.id.split("-")[0]
        )
        assert Path(cut.recording.sources[0].source).is_absolute() and cut.sampling_rate == 16000
    assert [c.id for c in lhotse.load_manifest(paths["test-other"])] == [
        "1688-142285-0000",
        "1688-142285-0001",
    ]
    # the parent of LibriSpeech/ or the folder itself; a second run reads lhotse's cached manifests
    again = prepare_librispeech(tmp_path / "corpus" / "LibriSpeech", tmp_path / "data", num_jobs=1)
    assert len(lhotse.load_manifest(again["dev"])) == 2


def test_a_missing_training_part_is_named(tmp_path):
    write_librispeech(tmp_path / "corpus", [c for c in CHAPTERS if c[0] != "dev-clean"])
    with pytest.raises(FileNotFoundError, match="no dev-clean folder"):
        prepare_librispeech(tmp_path / "corpus", tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="no train-clean-5, dev-clean-2 folder"):
        prepare_librispeech(tmp_path / "corpus", tmp_path / "data", subset="mini_librispeech")


def test_the_recipe_runs_end_to_end_on_a_tiny_librispeech(tmp_path):
    """run.sh as documented (LIBRISPEECH_DIR set), shrunk by Hydra overrides; then asr-transcribe."""
    texts = write_librispeech(tmp_path / "corpus")
    data, exp = tmp_path / "data", tmp_path / "exp"
    env = {**os.environ, "LIBRISPEECH_DIR": str(tmp_path / "corpus"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    env["OMP_NUM_THREADS"] = "1"  # tiny tensors: more threads only wait for the busy cores
    command = ["bash", REPO / "recipes" / "librispeech" / "run.sh", "--exp-dir", exp, "--data-dir", data]
    command += ["--average", "2", "--beam-size", "2", "--test-sets", "test_other", "--", *TINY]
    result = subprocess.run(
        [str(c) for c in command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"run.sh failed:\n{result.stdout}\n{result.stderr}"
    assert {"epoch_0.pt", "epoch_1.pt", "avg2.pt", "best.pt", "last.pt"} <= {p.name for p in exp.iterdir()}
    assert "test_other: %WER" in result.stdout  # test_clean is left to asr-transcribe below
    averaged = load_checkpoint(exp / "avg2.pt")
    assert averaged["tokenizer"] == load_checkpoint(exp / "epoch_1.pt")["tokenizer"]
    model, tokenizer = load_model(exp / "avg2.pt")
    assert isinstance(tokenizer, SentencePieceTokenizer)
    epochs = [load_checkpoint(exp / f"epoch_{n}.pt")["model"] for n in (0, 1)]
    name = "ctc_head.weight"
    torch.testing.assert_close(model.state_dict()[name], (epochs[0][name] + epochs[1][name]) / 2)

    hypotheses = tmp_path / "hyp.txt"
    test_clean = data / "test_clean_cuts.jsonl.gz"
    assert transcribe(["--model", str(exp / "avg2.pt"), "--output", str(hypotheses), str(test_clean)]) == 0
    lines = [line.split("\t") for line in hypotheses.read_text().splitlines()]
    assert [line[0] for line in lines] == [i for i in texts if i.startswith("1089-")]
