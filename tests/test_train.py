"""Training: a tiny model overfits real speech; the whole CLI path runs end to end."""

import subprocess
import sys
from pathlib import Path

import torch

from asr.corpora.fsdd import DIGIT_WORDS, StringConfig, fsdd_clips, make_strings, split_clips
from asr.data import SpeechDataset
from asr.decoding import DecodingOptions, decode
from asr.features import FeatureConfig, FeatureStatistics
from asr.model import LAS, AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
from asr.tokenizer import CharTokenizer
from asr.train import warmup_cosine

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
    assert any((exp / "tensorboard").iterdir())
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
