"""Kathleen preparation (both layouts), the sentencepiece tokenizer, and per-epoch speed perturbation."""

import csv
import io
import subprocess
import sys

import lhotse
import numpy as np
import pytest
import soundfile
import torch

from asr.checkpoint import load_model, model_state, save_checkpoint
from asr.cli.prepare import main as prepare_main
from asr.cli.transcribe import main as transcribe_main
from asr.corpora import ManifestCorpus
from asr.corpora.kathleen import prepare_kathleen, read_transcripts, split_of
from asr.decoding import DecodingOptions, decode
from asr.metrics import word_errors
from asr.model import LAS
from asr.sentencepiece_tokenizer import SentencePieceTokenizer
from asr.text import normalize_text
from asr.tokenizer import CharTokenizer, tokenizer_from_dict
from tests.conftest import REPO, tiny_config

SENTENCES = {
    "arctic_a0001": "Author of the danger trail, Philip Steels, etc.",
    "arctic_b0001": "Not at this particular case, Tom, apologized Whittemore.",
    "arctic_b0412": "For the twentieth time that evening the two men shook hands.",
    "arctic_b0500": "Lord, but I'm glad to see you again, Phil.",
}


def _tone(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = 0.2 * rng.standard_normal(round(seconds * rate)).astype(np.float32)
    return np.stack([signal, signal], axis=1) if channels == 2 else signal


def _upstream(folder):
    """Upstream layout: 48 kHz stereo WAV beside a .txt; two takes of one prompt, one take untranscribed."""
    folder.mkdir()
    takes = [(p, f"{p}_159274{k}") for k, p in enumerate(SENTENCES)] + [
        ("arctic_a0001", "arctic_a0001_1592749999")
    ]
    for seed, (prompt, utt) in enumerate(takes):
        soundfile.write(folder / f"{utt}.wav", _tone(0.5, 48000, channels=2, seed=seed), 48000)
        (folder / f"{utt}.txt").write_text(SENTENCES[prompt] + "\n")
    soundfile.write(folder / "arctic_b0002_1592740000.wav", _tone(0.5, 48000, channels=2), 48000)  # no .txt
    return folder


def test_splits_go_by_prompt_id():
    assert split_of("arctic_a0593") == "train"
    assert split_of("arctic_b0399") == "train"
    assert split_of("arctic_b0400") == "dev"
    assert split_of("arctic_b0469") == "dev"
    assert split_of("arctic_b0470") == "test"
    assert split_of("arctic_b0539") == "test"
    with pytest.raises(ValueError, match="ARCTIC"):
        split_of("arctic_c0001")


def test_upstream_layout_is_converted_to_16k_mono_flac(tmp_path):
    paths = prepare_kathleen(_upstream(tmp_path / "upstream"), tmp_path / "data")
    assert set(paths) == {"train", "dev", "test"}
    converted = tmp_path / "data" / "converted"
    rows = read_transcripts(converted)
    assert len(rows) == 5  # the untranscribed take is skipped
    assert {r["split"] for r in rows} == {"train", "dev", "test"}
    info = soundfile.info(converted / "audio" / f"{rows[0]['utt_id']}.flac")
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert info.duration == pytest.approx(0.5, abs=1e-3)
    train = lhotse.load_manifest(paths["train"])
    assert len(train) == 3 and {c.supervisions[0].text for c in train} == {
        SENTENCES["arctic_a0001"],
        SENTENCES["arctic_b0001"],
    }
    # converting again reuses the finished files and gives the same manifests
    again = prepare_kathleen(tmp_path / "upstream", tmp_path / "data")
    assert [c.id for c in lhotse.load_manifest(again["dev"])] == [
        c.id for c in lhotse.load_manifest(paths["dev"])
    ]


def _converted(folder, rows):
    (folder / "audio").mkdir(parents=True)
    with open(folder / "transcripts.tsv", "w", newline="") as file:
        writer = csv.writer(file, delimiter="\t")
        writer.writerow(["utt_id", "prompt_id", "split", "duration_s", "text"])
        for utt, prompt, split, text in rows:
            writer.writerow([utt, prompt, split, "0.5", text])
            soundfile.write(folder / "audio" / f"{utt}.flac", _tone(0.5, 16000), 16000)
    return folder


def test_converted_layout_without_test_split(tmp_path):
    source = _converted(
        tmp_path / "kathleen",
        [
            ("arctic_a0001_1", "arctic_a0001", "train", SENTENCES["arctic_a0001"]),
            ("arctic_b0412_1", "arctic_b0412", "dev", SENTENCES["arctic_b0412"]),
        ],
    )
    paths = prepare_kathleen(source, tmp_path / "data")
    assert set(paths) == {"train", "dev"}  # the shared copy withholds test
    (cut,) = lhotse.load_manifest(paths["dev"])
    assert cut.recording.sources[0].source == str((source / "audio" / "arctic_b0412_1.flac").resolve())
    assert not (tmp_path / "data" / "converted").exists()  # used in place, not copied


def test_bad_folders_name_the_file_and_the_problem(tmp_path, capsys):
    source = _converted(tmp_path / "k", [("arctic_a0001_1", "arctic_a0001", "train", "")])
    with pytest.raises(ValueError, match=r"transcripts.tsv, line 2: empty transcript for arctic_a0001_1"):
        read_transcripts(source)
    source = _converted(tmp_path / "k2", [("arctic_a0001_1", "arctic_a0001", "train", "hello")])
    (source / "audio" / "arctic_a0001_1.flac").unlink()
    with pytest.raises(FileNotFoundError, match=r"line 2: audio/arctic_a0001_1.flac not found"):
        read_transcripts(source)
    (tmp_path / "empty").mkdir()
    assert (
        prepare_main(["kathleen", "--kathleen-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "not a Kathleen folder" in capsys.readouterr().err


TEXTS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a bird in the hand is worth two in the bush",
    "don't count your chickens before they hatch",
] * 10


def test_sentencepiece_ids_follow_the_shared_layout():
    tokenizer = SentencePieceTokenizer.train(TEXTS, vocab_size=40)
    assert tokenizer.symbols[0] == "<blank>" and tokenizer.symbols[1] == "<unk>"
    assert tokenizer.symbols[-1] == "<sos/eos>" == tokenizer.symbols[tokenizer.sos_id]
    for text in TEXTS[:4] + ["The Dog's hand, sat!"]:
        ids = tokenizer.encode(text)
        assert all(2 <= i < tokenizer.vocab_size - 1 for i in ids)
        assert tokenizer.decode(ids) == normalize_text(text)
    # a character never seen in training is <unk>, and dropped from the text
    ids = tokenizer.encode("the zebra")
    assert tokenizer.unk_id in ids
    assert tokenizer.decode([0, *tokenizer.encode("the cat"), tokenizer.eos_id]) == "the cat"


def test_sentencepiece_is_deterministic_and_serialises():
    first = SentencePieceTokenizer.train(TEXTS, vocab_size=40)
    assert SentencePieceTokenizer.train(TEXTS, vocab_size=40).model_proto == first.model_proto
    buffer = io.BytesIO()
    torch.save({"tokenizer": first.to_dict()}, buffer)
    buffer.seek(0)
    again = tokenizer_from_dict(torch.load(buffer, weights_only=True)["tokenizer"])
    assert again.symbols == first.symbols
    assert again.encode(TEXTS[2]) == first.encode(TEXTS[2])
    with pytest.raises(ValueError, match="no training text"):
        SentencePieceTokenizer.train(["", " ,. "])


def test_a_bpe_model_transcribes_like_a_character_model(tmp_path, capsys):
    tokenizer = SentencePieceTokenizer.train(TEXTS, vocab_size=40)
    torch.manual_seed(0)
    model = LAS(tiny_config(vocab_size=tokenizer.vocab_size))
    with torch.no_grad():
        model.decoder.output.bias[tokenizer.eos_id] += 3.0  # keep the random model's outputs short
    save_checkpoint(model_state(model, tokenizer), tmp_path / "bpe.pt")
    _, loaded = load_model(tmp_path / "bpe.pt")
    assert isinstance(loaded, SentencePieceTokenizer) and loaded.symbols == tokenizer.symbols
    soundfile.write(tmp_path / "a.flac", _tone(1.0, 8000), 8000)
    status = transcribe_main(
        ["--model", str(tmp_path / "bpe.pt"), "--beam-size", "2", str(tmp_path / "a.flac")]
    )
    out = capsys.readouterr().out
    assert status == 0
    ((name, text),) = [line.split("\t") for line in out.splitlines()]
    assert name.endswith("a.flac") or name == "a"
    assert text == normalize_text(text)  # detokenised pieces: words, not "▁" marks


def test_speed_perturbation_draws_one_factor_per_utterance_and_epoch(tmp_path):
    source = _converted(
        tmp_path / "k",
        [(f"arctic_a{i:04d}_1", f"arctic_a{i:04d}", "train", f"sentence {i}") for i in range(1, 41)]
        + [("arctic_b0412_1", "arctic_b0412", "dev", "dev sentence")],
    )
    paths = prepare_kathleen(source, tmp_path / "data")
    corpus = ManifestCorpus(str(paths["train"]), str(paths["dev"]), speed_factors=(0.9, 1.0, 1.1), seed=3)
    epochs = [list(corpus.train_cuts(epoch)) for epoch in range(3)]
    assert all(len(cuts) == 40 for cuts in epochs)  # an epoch keeps the corpus's size
    durations = [sorted(round(c.duration, 3) for c in cuts) for cuts in epochs]
    assert {round(d, 3) for ds in durations for d in ds} == {round(0.5 / f, 3) for f in (0.9, 1.0, 1.1)}
    assert durations[0] != durations[1]  # factors are drawn afresh each epoch
    assert [c.id for c in corpus.train_cuts(1)] == [c.id for c in epochs[1]]  # and reproducibly
    assert corpus.max_utterance_seconds == pytest.approx(0.5 / 0.9)


def test_tune_decoding_prints_one_line_per_setting_with_the_wer_of_that_search(tmp_path):
    source = _converted(
        tmp_path / "kathleen",
        [(f"arctic_b04{i}_1", f"arctic_b04{i}", "dev", text) for i, text in enumerate(SENTENCES.values(), 10)]
        + [("arctic_a0001_1", "arctic_a0001", "train", "one training sentence")],
    )
    paths = prepare_kathleen(source, tmp_path / "data")
    tokenizer = CharTokenizer.build(SENTENCES.values())
    torch.manual_seed(0)
    model = LAS(tiny_config(vocab_size=tokenizer.vocab_size))
    with torch.no_grad():
        model.decoder.output.bias[tokenizer.eos_id] += 2.0  # short outputs from a random model
    save_checkpoint(model_state(model, tokenizer), tmp_path / "model.pt")
    script = REPO / "recipes" / "kathleen" / "tune_decoding.py"
    arguments = ["--model", str(tmp_path / "model.pt"), "--cuts", str(paths["dev"]), "--threads", "1"]
    result = subprocess.run(
        [sys.executable, script, *arguments, "--beam-size", "1,2", "--ctc-weight", "0,0.5"],
        capture_output=True,
        text=True,
        check=True,
    )
    header, *rows, best = result.stdout.splitlines()
    assert header.startswith("beam\tctc") and len(rows) == 4 and best.startswith("best:")
    settings = [tuple(row.split("\t")[:2]) for row in rows]
    assert settings == [("1", "0.0"), ("1", "0.5"), ("2", "0.0"), ("2", "0.5")]
    # greedy attention-only: the WER of decoding the same audio directly
    model, _ = load_model(tmp_path / "model.pt")
    cuts = sorted(lhotse.load_manifest(paths["dev"]), key=lambda cut: cut.duration)
    waves = [torch.from_numpy(cut.resample(8000).load_audio()).mean(0) for cut in cuts]
    lengths = torch.tensor([wave.numel() for wave in waves])
    found = decode(
        model, torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths, DecodingOptions(1, 0.0)
    )
    references = [normalize_text(cut.supervisions[0].text) for cut in cuts]
    expected = word_errors(references, [tokenizer.decode(h.tokens) for h in found]).error_rate
    assert float(rows[0].split("\t")[6]) == pytest.approx(100 * expected, abs=0.01)
