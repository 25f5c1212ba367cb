"""Training: a tiny model overfits real speech; the whole CLI path runs end to end; bad steps and
full disks never cost the last good checkpoint."""

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import asr.train
from asr.checkpoint import CheckpointError
from asr.corpora.fsdd import DIGIT_WORDS, DigitStrings, StringConfig, fsdd_clips, make_strings, split_clips
from asr.data import LoaderConfig, SpeechDataset
from asr.decoding import DecodingOptions, decode
from asr.features import FeatureConfig, FeatureStatistics
from asr.model import LAS, AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
from asr.model.las import SpeakerAdversaryConfig
from asr.tokenizer import CharTokenizer
from asr.train import OptimizerOptions, TrainerOptions, TrainingError, fit, uses_bf16, warmup_cosine
from tests.conftest import tiny_config

BIN = Path(sys.executable).parent


def test_warmup_cosine_schedule():
    factor = warmup_cosine(warmup_steps=10, total_steps=110, final_ratio=0.1)
    assert factor(0) == 0.1 and factor(9) == 1.0
    assert abs(factor(60) - 0.55) < 1e-9  # half-way down the cosine
    assert abs(factor(110) - 0.1) < 1e-9 and abs(factor(500) - 0.1) < 1e-9


def test_a_tiny_model_overfits_a_few_real_utterances(fsdd_dir):
    """SpeechBrain's integration check: if a model cannot learn four utterances, nothing else matters."""
    torch.manual_seed(0)
    train, _ = split_clips(fsdd_clips(fsdd_dir))
    strings = make_strings(
        train, 4, StringConfig(min_digits=1, max_digits=2, max_pause=0.2), seed=0, prefix="o"
    )
    tokenizer = CharTokenizer.build(DIGIT_WORDS)
    batch = SpeechDataset(tokenizer, 8000)[strings]
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        features=FeatureConfig(sample_rate=8000, num_mel_bins=40, f_max=4000.0),
        encoder=EncoderConfig(input_dim=40, hidden_dim=64, num_layers=0, num_pyramid_levels=3, ctc_level=2),
        attention=AttentionConfig(attention_dim=64),
        decoder=DecoderConfig(embedding_dim=32, hidden_dim=96),
        label_smoothing=0.0,
    )
    model = LAS(config)
    statistics = FeatureStatistics()
    statistics.update(*model.compute_features(batch.waves, batch.wave_lens))
    model.normalization.set_statistics(*statistics.mean_and_std())
    model.spec_augment.config = type(model.spec_augment.config)(num_freq_masks=0, num_time_masks=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(150):
        loss = model(batch.waves, batch.wave_lens, batch.targets, batch.target_lens).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
    assert float(loss.detach()) < 0.1
    model.eval()
    for options in (
        DecodingOptions(beam_size=1, ctc_weight=0.0),
        DecodingOptions(beam_size=4, ctc_weight=0.3),
    ):
        hypotheses = decode(model, batch.waves, batch.wave_lens, options)
        assert [tokenizer.decode(h.tokens) for h in hypotheses] == batch.texts


def run(*command, cwd):
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_prepare_train_transcribe_and_score_from_the_command_line(tmp_path):
    """The recipe's path through the installed commands, run from a folder outside the checkout."""
    data = tmp_path / "data"
    run(BIN / "asr-prepare", "digits", "--out", data, "--num-dev", 4, "--num-test", 6, cwd=tmp_path)
    exp = tmp_path / "exp"
    run(
        BIN / "asr-train",
        "experiment=digits_smoke",
        f"data.dir={data}",
        f"exp_dir={exp}",
        "data.corpus.strings_per_epoch=24",
        cwd=tmp_path,
    )
    assert {"best.pt", "last.pt", "train.log"} <= {p.name for p in exp.iterdir()}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(exp / "tensorboard")).Reload()
    assert {"dev/wer", "dev/loss", "dev_attention/diagonality", "dev_attention/coverage"} <= set(
        events.Tags()["scalars"]
    )
    assert "dev/attention" in events.Tags()["images"]  # the heatmap of one dev utterance per epoch
    hypotheses = tmp_path / "hyp.txt"
    run(
        BIN / "asr-transcribe",
        "--model",
        exp / "best.pt",
        "--beam-size",
        2,
        "--output",
        hypotheses,
        data / "test" / "cuts.jsonl.gz",
        cwd=tmp_path,
    )
    lines = hypotheses.read_text().splitlines()
    assert len(lines) == 6 and all(line.startswith("digits_test_") and "\t" in line for line in lines)
    report = run(
        BIN / "asr-wer", "--ref", data / "test" / "transcripts.txt", "--hyp", hypotheses, cwd=tmp_path
    )
    assert report.startswith("%WER ") and "%CER " in report


@pytest.fixture(scope="module")
def small_corpus(fsdd_dir):
    """Eight short training strings from 40 clips of one speaker, and two dev strings."""
    train, test = split_clips(fsdd_clips(fsdd_dir))
    clips = train.filter(lambda c: c.custom["speaker"] == "jackson").subset(first=40).to_eager()
    config = StringConfig(min_digits=1, max_digits=2, max_pause=0.1, max_edge_silence=0.1)
    dev = make_strings(test.subset(first=10).to_eager(), 2, config, seed=1, prefix="dev")
    return DigitStrings(clips, dev.to_eager(), strings_per_epoch=8, config=config, seed=0)


def fit_small(corpus, exp_dir, model_options=None, **trainer):
    tokenizer = CharTokenizer.build(DIGIT_WORDS)
    torch.manual_seed(0)
    model = LAS(tiny_config(vocab_size=tokenizer.vocab_size, **(model_options or {})))
    options = dict(
        exp_dir=str(exp_dir), max_epochs=1, device="cpu", stats_batches=2, checkpoint_every_steps=1
    )
    return fit(
        model,
        tokenizer,
        corpus,
        TrainerOptions(**{**options, **trainer}),
        OptimizerOptions(warmup_steps=2),
        LoaderConfig(max_duration=3.0, num_buckets=2),
        None,
        DecodingOptions(beam_size=1),
    )


def poison_batches(monkeypatch, poisoned) -> None:
    """NaN into the waveforms of training batch n (1 = the first) when `poisoned(n)`, past the data checks."""
    real = asr.train.forward_backward
    calls = 0

    def forward_backward(model, batch, *args):
        nonlocal calls
        calls += 1
        if poisoned(calls):
            batch.waves[0, :100] = float("nan")
        return real(model, batch, *args)

    monkeypatch.setattr(asr.train, "forward_backward", forward_backward)


def saved(exp_dir: Path) -> dict:
    return torch.load(exp_dir / "last.pt", weights_only=True)


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(tensor).all() for tensor in state["model"].values())


def test_a_nan_batch_is_skipped_logged_and_kept_out_of_checkpoints(
    small_corpus, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="asr")
    poison_batches(monkeypatch, lambda batch: batch == 2)
    fit_small(small_corpus, tmp_path)
    state = saved(tmp_path)
    assert all_finite(state) and all_finite(torch.load(tmp_path / "best.pt", weights_only=True))
    assert "non-finite loss or gradient" in caplog.text and "1 non-finite" in caplog.text
    progress = state["progress"]
    assert progress["epoch"] == 1 and progress["step"] >= 2  # the other batches trained


def test_non_finite_steps_in_a_row_stop_with_the_last_good_checkpoint(small_corpus, tmp_path, monkeypatch):
    poison_batches(monkeypatch, lambda batch: batch >= 3)
    with pytest.raises(TrainingError, match="2 non-finite steps in a row"):
        fit_small(small_corpus, tmp_path, max_nonfinite_steps=2)
    state = saved(tmp_path)
    assert all_finite(state)
    assert state["progress"]["step"] == 2  # the two good updates, none of the bad ones


def test_a_full_disk_fails_clearly_and_keeps_the_previous_checkpoint(small_corpus, tmp_path, monkeypatch):
    real_save, calls = torch.save, 0

    def save(*args, **kwargs):  # the third checkpoint meets a full disk
        nonlocal calls
        calls += 1
        if calls >= 3:
            raise OSError(28, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError, match="No space left on device.*unchanged"):
        fit_small(small_corpus, tmp_path)
    state = saved(tmp_path)  # still the second one, whole
    assert state["progress"]["batches_done"] == 2 and all_finite(state)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []


def test_bf16_cpu_trains_under_autocast(small_corpus, tmp_path, monkeypatch):
    """trainer.bf16_cpu: the fast configuration of issue 7 autocasts on CPU, whatever trainer.bf16
    (CUDA's switch) says: the digits recipe sets bf16 false for its GPU runs, and bf16_cpu=true
    used to do nothing there."""
    flags, real = [], asr.train.forward_backward

    def forward_backward(model, batch, grad_clip, autocast):
        flags.append(autocast)
        return real(model, batch, grad_clip, autocast)

    monkeypatch.setattr(asr.train, "forward_backward", forward_backward)
    fit_small(small_corpus, tmp_path, bf16_cpu=True, bf16=False)
    assert flags and all(flags)
    assert all_finite(saved(tmp_path))


def test_each_device_has_its_own_bf16_switch():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert uses_bf16(bf16=True, bf16_cpu=False, device=cuda)
    assert not uses_bf16(bf16=False, bf16_cpu=True, device=cuda)
    assert uses_bf16(bf16=False, bf16_cpu=True, device=cpu)
    assert not uses_bf16(bf16=True, bf16_cpu=False, device=cpu)


def test_the_speaker_adversary_learns_the_training_speakers(fsdd_dir, tmp_path, monkeypatch, caplog):
    """With the adversary on, every training batch carries its strings' speaker ids in the corpus's
    sorted order, the classifier trains, and its output count must match the corpus's speakers."""
    train, test = split_clips(fsdd_clips(fsdd_dir))
    chosen = ("george", "lucas")
    clips = train.filter(lambda c: c.custom["speaker"] in chosen and c.custom["take"] < 12).to_eager()
    config = StringConfig(min_digits=1, max_digits=2, max_pause=0.1, max_edge_silence=0.1)
    dev = make_strings(test.subset(first=10).to_eager(), 2, config, seed=1, prefix="dev")
    corpus = DigitStrings(clips, dev.to_eager(), strings_per_epoch=8, config=config, seed=0)
    assert corpus.speakers() == ["george", "lucas"]
    seen, real = [], asr.train.forward_backward

    def forward_backward(model, batch, grad_clip, autocast):
        names = [cut_id.rsplit("_", 1)[1] for cut_id in batch.ids]
        seen.append((batch.speakers.tolist(), [chosen.index(name) for name in names]))
        return real(model, batch, grad_clip, autocast)

    monkeypatch.setattr(asr.train, "forward_backward", forward_backward)
    adversary = SpeakerAdversaryConfig(weight=0.5, num_speakers=2, hidden_dim=8)
    caplog.set_level(logging.INFO, logger="asr")
    fit_small(corpus, tmp_path, model_options={"speaker_adversary": adversary})
    assert re.search(r"epoch 0: train loss [\d.]+ \(att [\d.]+, ctc [\d.]+, speaker [\d.]+\)", caplog.text)
    assert seen and all(ids == expected for ids, expected in seen)
    assert set(sum((ids for ids, _ in seen), [])) == {0, 1}
    state = saved(tmp_path)["model"]
    assert "speaker_adversary.classifier.0.weight" in state and all_finite(saved(tmp_path))
    with pytest.raises(TrainingError, match="3 outputs but the training data has 2 speakers"):
        three = SpeakerAdversaryConfig(weight=0.5, num_speakers=3, hidden_dim=8)
        fit_small(corpus, tmp_path / "three", model_options={"speaker_adversary": three})
