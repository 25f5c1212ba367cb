"""Model code: tensors in, tensors out (no files, no config framework, no logging)."""

from asr.model.attention import AttentionConfig
from asr.model.decoder import DecoderConfig, DecoderState
from asr.model.encoder import EncoderConfig, EncoderOutput
from asr.model.las import LAS, LossOutput, ModelConfig

__all__ = [
    "LAS",
    "AttentionConfig",
    "DecoderConfig",
    "DecoderState",
    "EncoderConfig",
    "EncoderOutput",
    "LossOutput",
    "ModelConfig",
]
