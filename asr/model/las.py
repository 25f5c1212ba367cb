"""Listen, Attend and Spell (Chan et al. 2016) with a joint CTC head (Kim et al. 2017).

    waves -> log-mel -> [tempo and frequency warps] -> global normalisation -> [SpecAugment masks]
          -> pyramidal BiLSTM  ([...]: training only)
          -> attention decoder (cross-entropy with label smoothing)
          -> CTC head on the encoder level whose frame rate exceeds the label rate
          -> [speaker classifier behind a gradient reversal, on the encoder output]

The model knows only tensors: no files, no config framework, no logging.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from asr.features import (
    FeatureConfig,
    GlobalNormalization,
    LogMelFeatures,
    SpecAugment,
    SpecAugmentConfig,
    sequence_mask,
)
from asr.model.attention import AttentionConfig, build_attention
from asr.model.decoder import AttentionDecoder, DecoderConfig
from asr.model.encoder import EncoderConfig, EncoderOutput, PyramidalEncoder

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SpeakerAdversaryConfig:
    """Speaker-invariant training (Ganin & Lempitsky 2015; Meng et al. 2018, "Speaker-invariant
    training via adversarial learning"): a classifier learns to tell the training speakers apart from
    each encoder output frame, and the encoder gets its gradient reversed and scaled by `weight`, so
    that it learns to hide who is speaking. Training only; recognition never runs the classifier."""

    weight: float = 0.0  # the reversed gradient's scale in the encoder; 0 builds no classifier
    num_speakers: int = 0  # set by asr-train from the training data's speakers
    hidden_dim: int = 256


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class SpeakerAdversary(nn.Module):
    """Frame-level speaker classifier behind a gradient reversal layer."""

    def __init__(self, config: SpeakerAdversaryConfig, input_dim: int):
        super().__init__()
        self.weight = config.weight
        self.classifier = nn.Sequential(
            nn.Linear(input_dim, config.hidden_dim),
            nn.ReLU(),
            nn.Linear(config.hidden_dim, config.num_speakers),
        )

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the speaker over every valid frame (B, T, D) of the utterances whose
        speaker is known (`speakers` (B,), IGNORE_INDEX where not)."""
        logits = self.classifier(_ReverseGradient.apply(frames, self.weight)).float()
        mask = sequence_mask(lengths, frames.shape[1]) & (speakers != IGNORE_INDEX)[:, None]
        labels = speakers[:, None].expand(-1, frames.shape[1]).masked_fill(~mask, IGNORE_INDEX)
        if not bool(mask.any()):
            return logits.sum() * 0.0  # keeps the classifier in the graph (DDP needs every gradient)
        return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # including <blank> (0), <unk> (1) and <sos/eos> (vocab_size - 1)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    speaker_adversary: SpeakerAdversaryConfig = field(default_factory=SpeakerAdversaryConfig)
    ctc_weight: float = 0.3  # loss = (1 - w) * attention cross-entropy + w * CTC
    label_smoothing: float = 0.1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Inverse of `to_dict`; unknown keys are an error (a config typo must not pass silently)."""
        nested = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in nested:
                raise ValueError(f"unknown model config key {key!r}")
            section = {
                "features": FeatureConfig,
                "spec_augment": SpecAugmentConfig,
                "encoder": EncoderConfig,
                "attention": AttentionConfig,
                "decoder": DecoderConfig,
                "speaker_adversary": SpeakerAdversaryConfig,
            }.get(key)
            kwargs[key] = section(**value) if section else value
        return cls(**kwargs)


class LossOutput(NamedTuple):
    loss: torch.Tensor  # the training objective
    attention_loss: torch.Tensor  # label-smoothed cross-entropy per token
    ctc_loss: torch.Tensor  # CTC per target token (0 when ctc_weight is 0)
    num_tokens: torch.Tensor  # target tokens in the batch, eos included
    speaker_loss: torch.Tensor  # the speaker classifier's cross-entropy per frame (0 without one)


def add_sos_eos(targets, target_lens, sos_eos_id: int):
    """targets (B, U) padded -> decoder inputs [sos, y] and outputs [y, eos] (B, U+1).

    Output padding is IGNORE_INDEX so the loss skips it.
    """
    batch = targets.shape[0]
    sos = targets.new_full((batch, 1), sos_eos_id)
    tokens_in = torch.cat([sos, targets], dim=1)
    tokens_out = torch.cat([targets, targets.new_full((batch, 1), IGNORE_INDEX)], dim=1)
    tokens_out[torch.arange(batch, device=targets.device), target_lens] = sos_eos_id
    valid = sequence_mask(target_lens + 1, tokens_out.shape[1])
    return tokens_in.masked_fill(
        ~sequence_mask(target_lens + 1, tokens_in.shape[1]), sos_eos_id
    ), tokens_out.masked_fill(~valid, IGNORE_INDEX)


class LAS(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if config.encoder.input_dim != config.features.num_mel_bins:
            raise ValueError(
                f"encoder.input_dim ({config.encoder.input_dim}) must equal "
                f"features.num_mel_bins ({config.features.num_mel_bins})"
            )
        self.features = LogMelFeatures(config.features)
        self.normalization = GlobalNormalization(config.features.num_mel_bins)
        self.spec_augment = SpecAugment(config.spec_augment, config.features)
        self.encoder = PyramidalEncoder(config.encoder)
        memory_dim = self.encoder.output_dim
        attention = build_attention(config.attention, config.decoder.hidden_dim, memory_dim)
        self.decoder = AttentionDecoder(config.decoder, config.vocab_size, memory_dim, attention)
        self.ctc_head = nn.Linear(memory_dim, config.vocab_size)
        adversary = config.speaker_adversary
        self.speaker_adversary = None
        if adversary.weight > 0:
            if adversary.num_speakers < 2:
                raise ValueError(
                    f"speaker_adversary.weight={adversary.weight} needs two speakers or more in the "
                    f"training data (num_speakers={adversary.num_speakers})"
                )
            self.speaker_adversary = SpeakerAdversary(adversary, memory_dim)

    @property
    def sos_eos_id(self) -> int:
        return self.config.vocab_size - 1

    def compute_features(self, waves, wave_lens):
        """Raw log-mel frames (before normalisation), always in fp32."""
        with torch.autocast(waves.device.type, enabled=False):
            return self.features(waves, wave_lens)

    def encode_features(self, feats, feat_lens) -> EncoderOutput:
        """Normalise, augment (training only) and encode log-mel frames (B, T, F)."""
        with torch.autocast(feats.device.type, enabled=False):
            feats, feat_lens = self.spec_augment.warp(feats.float(), feat_lens)
            feats = self.spec_augment(self.normalization(feats, feat_lens), feat_lens)
        return self.encoder(feats, feat_lens)

    def encode(self, waves: torch.Tensor, wave_lens: torch.Tensor) -> EncoderOutput:
        """waves (B, S) at `config.features.sample_rate`, zero-padded -> EncoderOutput."""
        return self.encode_features(*self.compute_features(waves, wave_lens))

    def ctc_log_probs(self, encoder_output: EncoderOutput) -> torch.Tensor:
        """(B, T_ctc, V) log-probabilities in fp32."""
        with torch.autocast(encoder_output.ctc_output.device.type, enabled=False):
            return torch.log_softmax(self.ctc_head(encoder_output.ctc_output.float()), dim=-1)

    def loss_from_features(self, feats, feat_lens, targets, target_lens, speakers=None) -> LossOutput:
        return self._loss(self.encode_features(feats, feat_lens), targets, target_lens, speakers)

    def forward(self, waves, wave_lens, targets, target_lens, speakers=None) -> LossOutput:
        """
        waves : (B, S) float; wave_lens : (B,)
        targets : (B, U) token ids without sos/eos, zero-padded; target_lens : (B,)
        speakers : (B,) speaker ids for the speaker adversary (IGNORE_INDEX: unknown), or None
        """
        return self._loss(self.encode(waves, wave_lens), targets, target_lens, speakers)

    def _loss(self, encoded: EncoderOutput, targets, target_lens, speakers=None) -> LossOutput:
        tokens_in, tokens_out = add_sos_eos(targets, target_lens, self.sos_eos_id)
        logits, _ = self.decoder(tokens_in, encoded.output, encoded.lengths)
        attention_loss = nn.functional.cross_entropy(
            logits.flatten(0, 1).float(),
            tokens_out.flatten(),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.config.label_smoothing,
        )
        ctc_weight = self.config.ctc_weight
        ctc_loss = attention_loss.new_zeros(())
        if ctc_weight > 0:
            # reduction="mean" divides each utterance's loss by its target length, then averages,
            # which puts CTC on the same per-token scale as the cross-entropy.
            ctc_loss = nn.functional.ctc_loss(
                self.ctc_log_probs(encoded).transpose(0, 1),
                targets,
                encoded.ctc_lengths,
                target_lens,
                blank=0,
                reduction="mean",
                zero_infinity=True,
            )
        loss = (1 - ctc_weight) * attention_loss + ctc_weight * ctc_loss
        speaker_loss = attention_loss.new_zeros(())
        if self.speaker_adversary is not None and speakers is not None and self.training:
            # the classifier minimises it; the reversed gradient makes the encoder maximise it
            speaker_loss = self.speaker_adversary(encoded.output, encoded.lengths, speakers)
            loss = loss + speaker_loss
        return LossOutput(
            loss, attention_loss.detach(), ctc_loss.detach(), (target_lens + 1).sum(), speaker_loss.detach()
        )
