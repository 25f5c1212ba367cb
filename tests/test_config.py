"""Every config composes, every key maps onto a builder argument, and every model builds."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asr.cli.train import build_model
from asr.data import AugmentConfig, LoaderConfig
from asr.decoding import DecodingOptions
from asr.train import OptimizerOptions, TrainerOptions

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def check_builds(config):
    OmegaConf.resolve(config)
    trainer = {k: v for k, v in config.trainer.items() if k != "num_threads"}
    TrainerOptions(exp_dir=config.exp_dir, **trainer)
    optimizer = OmegaConf.to_container(config.optimizer)
    OptimizerOptions(**{**optimizer, "betas": tuple(optimizer["betas"])})
    LoaderConfig(**config.data.loader)
    if config.data.augment:
        AugmentConfig(**config.data.augment)
    DecodingOptions(**config.validation)
    model = build_model(config.model, vocab_size=30)
    waves = torch.randn(2, config.model.features.sample_rate)
    output = model(
        waves,
        torch.tensor([waves.shape[1], waves.shape[1] // 2]),
        torch.randint(2, 29, (2, 5)),
        torch.tensor([5, 3]),
    )
    assert torch.isfinite(output.loss)


def test_the_package_ships_every_config():
    assert EXPERIMENTS and MODELS
    assert "digits" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment):
    config = compose_train([f"experiment={experiment}"])
    assert config.exp_dir != "???"
    check_builds(config)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_builds(model):
    check_builds(compose_train([f"model={model}", "exp_dir=unused"]))


def test_digits_experiment_settings():
    config = compose_train(["experiment=digits"])
    assert config.model.features.sample_rate == 8000
    assert config.model.encoder.num_pyramid_levels == 3 and config.model.encoder.ctc_level == 2
    assert config.data.corpus.type == "digit_strings"


def test_the_speaker_adversary_gets_one_output_per_training_speaker():
    """`model.speaker_adversary.weight` turns it on; asr-train sizes it from the corpus's speakers."""
    config = compose_train(["experiment=digits", "model.speaker_adversary.weight=0.3"])
    model = build_model(config.model, vocab_size=30, speakers=["george", "jackson", "lucas"])
    assert model.config.speaker_adversary.num_speakers == 3
    assert model.speaker_adversary.classifier[-1].out_features == 3
    assert build_model(compose_train(["experiment=digits"]).model, vocab_size=30).speaker_adversary is None
