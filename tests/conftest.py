"""Shared fixtures: tiny models and real FSDD clips from the repository's vendored copy."""

from pathlib import Path

import pytest
import torch

from asr.features import FeatureConfig
from asr.model import LAS, AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig

REPO = Path(__file__).resolve().parents[1]
FSDD_DIR = REPO / "recipes" / "digits" / "fsdd"


def tiny_config(
    vocab_size: int = 12, attention: str = "location", cell: str = "lstm", **overrides
) -> ModelConfig:
    """A model small enough for unit tests (a few thousand parameters)."""
    values = dict(
        vocab_size=vocab_size,
        features=FeatureConfig(sample_rate=8000, num_mel_bins=20, f_max=4000.0),
        encoder=EncoderConfig(input_dim=20, hidden_dim=16, num_layers=1, num_pyramid_levels=3, ctc_level=2),
        attention=AttentionConfig(type=attention, attention_dim=16, location_kernel_size=5),
        decoder=DecoderConfig(cell=cell, embedding_dim=8, hidden_dim=16),
    )
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return LAS(tiny_config()).eval()


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: on two shared cores, handing them between threads costs more time
    than it saves (a training step of the test model took 190 ms on 2 threads, 41 ms on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    return FSDD_DIR


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip on machines without CUDA (CI), so `pytest -m gpu` is safe anywhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
