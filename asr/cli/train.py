"""`asr-train`: the Hydra application that trains a LAS model.

    asr-train experiment=digits
    asr-train experiment=digits trainer.max_epochs=5 model.attention.type=dot
    torchrun --nproc_per_node 2 -m asr.cli.train experiment=digits    (several processes, see README)

The configs live in `conf/` and are installed with the package as `asr.conf`, so the command
works from any folder after `pip install .`.
"""

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from asr.corpora import build_corpus
from asr.data import AugmentConfig, LoaderConfig
from asr.decoding import DecodingOptions
from asr.model import LAS, ModelConfig
from asr.tokenizer import CharTokenizer
from asr.train import OptimizerOptions, TrainerOptions, fit

log = logging.getLogger("asr.train")


def build_tokenizer(type: str, texts: list[str]):
    if type == "char":
        return CharTokenizer.build(texts)
    raise ValueError(f"unknown tokenizer type {type!r}")


def build_model(model_config: DictConfig, vocab_size: int) -> LAS:
    values = OmegaConf.to_container(model_config, resolve=True)
    return LAS(ModelConfig.from_dict({**values, "vocab_size": vocab_size}))


def run(config: DictConfig) -> dict:
    """Build everything the config describes and train."""
    torch.manual_seed(config.seed)
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    corpus = build_corpus(seed=config.seed, **config.data.corpus)
    tokenizer = build_tokenizer(config.tokenizer.type, corpus.texts())
    model = build_model(config.model, tokenizer.vocab_size)
    trainer = {k: v for k, v in config.trainer.items() if k != "num_threads"}
    optimizer = OmegaConf.to_container(config.optimizer)
    optimizer["betas"] = tuple(optimizer["betas"])
    return fit(
        model,
        tokenizer,
        corpus,
        TrainerOptions(exp_dir=config.exp_dir, **trainer),
        OptimizerOptions(**optimizer),
        LoaderConfig(**config.data.loader),
        AugmentConfig(**config.data.augment) if config.data.augment else None,
        DecodingOptions(**config.validation),
        seed=config.seed,
    )


def config_path() -> str:
    """The checkout's `conf/` when running from a checkout, else the installed copy.

    `python -m asr.cli.train` (and `torchrun -m`) run in a checkout import the package from the
    working folder, where `asr.conf` does not exist as a module; an installed package has it.
    """
    checkout = Path(__file__).resolve().parents[2] / "conf"
    return str(checkout) if (checkout / "train.yaml").is_file() else "pkg://asr.conf"


@hydra.main(version_base="1.3", config_path=config_path(), config_name="train")
def main(config: DictConfig) -> None:
    log.info("config:\n%s", OmegaConf.to_yaml(config))
    run(config)


if __name__ == "__main__":
    main()
