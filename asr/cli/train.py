"""`asr-train`: the Hydra application that trains a LAS model.

    asr-train experiment=digits
    asr-train experiment=digits trainer.max_epochs=5 model.attention.type=dot
    asr-train experiment=digits trainer.resume=true                    (carry on from last.pt)
    torchrun --nproc_per_node 2 -m asr.cli.train experiment=digits    (several processes, see README)

The configs live in `conf/` and are installed with the package as `asr.conf`, so the command
works from any folder after `pip install .`.

Exit status: 0 when training finished; 1 with a one-line message when it cannot go on (an
unwritable exp_dir, a full disk, data that cannot be read, non-finite steps in a row); 128 + the
signal number after SIGTERM or SIGINT, once last.pt is written.
"""

import logging
import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from asr import distributed
from asr.checkpoint import CheckpointError, check_writable, load_checkpoint
from asr.corpora import build_corpus
from asr.data import AugmentConfig, LoaderConfig
from asr.decoding import DecodingOptions
from asr.distributed import DeviceError
from asr.model import LAS, ModelConfig
from asr.phone_tokenizer import PhoneTokenizer
from asr.sentencepiece_tokenizer import SentencePieceTokenizer
from asr.tokenizer import CharTokenizer, tokenizer_from_dict
from asr.train import OptimizerOptions, Stopped, TrainerOptions, TrainingError, fit

log = logging.getLogger("asr.train")


def build_tokenizer(texts: list[str], type: str = "char", vocab_size: int = 500, model_type: str = "bpe"):
    """Characters, sentencepiece pieces trained on `texts` (`vocab_size`, `model_type` bpe | unigram), or
    CMUdict phones (English; words come back through the pronunciation lexicon)."""
    if type == "char":
        return CharTokenizer.build(texts)
    if type == "phones":
        return PhoneTokenizer.build(texts)
    if type == "sentencepiece":
        return SentencePieceTokenizer.train(texts, vocab_size=vocab_size, model_type=model_type)
    raise ValueError(f"unknown tokenizer type {type!r}; expected 'char', 'sentencepiece' or 'phones'")


def resumed_tokenizer(config: DictConfig):
    """The tokenizer of the run being resumed (None when starting afresh): never rebuilt, never different."""
    last = Path(config.exp_dir) / "last.pt"
    if not (config.trainer.resume and last.exists()):
        return None
    return tokenizer_from_dict(load_checkpoint(last)["tokenizer"])


def build_model(model_config: DictConfig, vocab_size: int, speakers: list[str] = ()) -> LAS:
    """The model the config describes; the speaker adversary (when on) has one output per speaker."""
    values = OmegaConf.to_container(model_config, resolve=True)
    adversary = values.get("speaker_adversary")
    if adversary and adversary.get("weight", 0) > 0:
        values["speaker_adversary"] = {**adversary, "num_speakers": len(speakers)}
    return LAS(ModelConfig.from_dict({**values, "vocab_size": vocab_size}))


def run(config: DictConfig) -> dict:
    """Build everything the config describes and train (as one rank of a group under torchrun)."""
    process = distributed.start(config.trainer.device)
    try:
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        if config.trainer.num_threads:
            torch.set_num_threads(config.trainer.num_threads)
        try:
            corpus = build_corpus(seed=config.seed, **config.data.corpus)
        except (OSError, ValueError) as error:  # a missing or unreadable manifest, text that is not UTF-8
            manifests = [str(v) for k, v in config.data.corpus.items() if k.endswith(("_cuts", "_clips"))]
            raise TrainingError(f"cannot read the training data ({', '.join(manifests)}): {error}") from error
        tokenizer = resumed_tokenizer(config) or build_tokenizer(corpus.texts(), **config.tokenizer)
        model = build_model(config.model, tokenizer.vocab_size, corpus.speakers())
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
            process=process,
        )
    finally:
        distributed.stop(process)


def config_path() -> str:
    """The checkout's `conf/` when running from a checkout, else the installed copy.

    `python -m asr.cli.train` (and `torchrun -m`) run in a checkout import the package from the
    working folder, where `asr.conf` does not exist as a module; an installed package has it.
    """
    checkout = Path(__file__).resolve().parents[2] / "conf"
    return str(checkout) if (checkout / "train.yaml").is_file() else "pkg://asr.conf"


class CheckExpDir(Callback):
    """Before Hydra creates exp_dir for its log file, check that it can: one line if not, not a traceback.

    Named in conf/train.yaml (hydra.callbacks); Hydra would otherwise fail in its own set-up.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        exp_dir = OmegaConf.select(config, "exp_dir", throw_on_missing=False)
        if exp_dir is not None:  # every rank: Hydra creates the folder on each
            try:
                check_writable(exp_dir)
            except CheckpointError as error:
                print(f"asr-train: error: {error}", file=sys.stderr)
                sys.exit(1)


def quiet_other_ranks() -> None:
    """Under torchrun only rank 0 logs progress (and writes train.log); other ranks say only warnings."""
    if int(os.environ.get("RANK", "0")) > 0:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
        logging.getLogger("asr").setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path=config_path(), config_name="train")
def main(config: DictConfig) -> None:
    quiet_other_ranks()
    log.info("config:\n%s", OmegaConf.to_yaml(config))
    try:
        run(config)
    except Stopped as stopped:
        log.warning("%s", stopped)
        sys.exit(128 + stopped.signal_number)
    except DeviceError as error:  # the message starts with the device's name
        log.error("trainer.device=%s", error)
        sys.exit(1)
    except (CheckpointError, TrainingError) as error:
        # the message names the file and the problem; a traceback would only bury it
        log.error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
