"""Time this toolkit's LAS on the shared LAS benchmark contract, through the peers' own harness.

The contract (a fixed 16 x 300 x 80 batch, 40-character targets, a 12M-parameter LAS with
location-aware attention) and the harness (`common.py`: timing, memory, FLOPs, RESULT line) live in
the benchmark folder beside the ESPnet and SpeechBrain peers, so `run_all.py` can put us in the same
table:

    python3 run_all.py --impl team=$PWD/.venv/bin/python:$PWD/benchmarks/peer_team.py
    .venv/bin/python benchmarks/peer_team.py --bench-dir ../shared/bench    # alone

The folder is found from --bench-dir, $LAS_BENCH_DIR, or ../shared/bench beside the checkout.
The model is built with our own blocks at the contract's sizes; it is fed the contract's features
directly (`loss_from_features`), with identity normalisation and no SpecAugment or dropout.
"""

import contextlib
import os
import sys
from pathlib import Path


def bench_dir() -> Path:
    for index, argument in enumerate(sys.argv):
        if argument == "--bench-dir":
            folder = sys.argv[index + 1]
            del sys.argv[index : index + 2]
            return Path(folder)
    default = Path(__file__).resolve().parents[2] / "shared" / "bench"
    return Path(os.environ.get("LAS_BENCH_DIR", default))


sys.path.insert(0, str(bench_dir()))
import common  # noqa: E402  (the shared harness)
import torch  # noqa: E402

import asr  # noqa: E402
from asr.decoding import DecodingOptions, search  # noqa: E402
from asr.features import FeatureConfig, SpecAugmentConfig  # noqa: E402
from asr.model import LAS, AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig  # noqa: E402
from asr.model.encoder import BiLSTM  # noqa: E402
from asr.optimizer import fused_where_possible  # noqa: E402


def contract_model(
    cfg, input_feeding: bool = True, pyramid_projection: int = 0, full_rate_layers: int = 1
) -> LAS:
    """Our LAS at the contract's sizes (contract.md section 2); the defaults are the contract's model.

    input_feeding=False, pyramid_projection > 0 and full_rate_layers=0 are the fast configurations'
    changes (other models).
    """
    torch.manual_seed(cfg["model_seed"])
    config = ModelConfig(
        vocab_size=cfg["vocab"],  # 0 blank, 1..V-2 units, V-1 sos/eos: the contract's layout
        features=FeatureConfig(num_mel_bins=cfg["feat_dim"]),
        spec_augment=SpecAugmentConfig(num_freq_masks=0, num_time_masks=0),
        encoder=EncoderConfig(
            input_dim=cfg["feat_dim"],
            hidden_dim=cfg["enc_hidden"],
            num_layers=full_rate_layers,
            num_pyramid_levels=cfg["enc_pyramid"],
            ctc_level=2,
            dropout=0.0,
            pyramid_projection=pyramid_projection,
        ),
        attention=AttentionConfig(
            type="location",
            attention_dim=cfg["att_dim"],
            location_channels=cfg["att_conv_ch"],
            location_kernel_size=cfg["att_conv_k"],
        ),
        decoder=DecoderConfig(
            cell="lstm",
            embedding_dim=cfg["emb_dim"],
            hidden_dim=cfg["dec_hidden"],
            num_layers=cfg["dec_layers"],
            dropout=0.0,
            input_feeding=input_feeding,
        ),
        ctc_weight=cfg["ctc_weight"],
        label_smoothing=0.0,
    )
    return LAS(config)


def use_step_by_step_paths(model: LAS):
    """The model as before issue 7: the decoder as a loop of `step`, each BiLSTM as two calls.

    The same function through every module's own `forward`, where the harness's FLOP hooks see each
    GEMM (the fused calls bypass them), and the baseline of `train_step.py`. Undo: `use_fast_paths`.
    """
    model.decoder.forward = model.decoder.forward_by_steps
    for layer in [*model.encoder.layers, *model.encoder.pyramid]:
        layer.forward = lambda x, lengths, full_length=False, layer=layer: BiLSTM.forward(layer, x, lengths)


def use_fast_paths(model: LAS):
    for module in [model.decoder, *model.encoder.layers, *model.encoder.pyramid]:
        module.__dict__.pop("forward", None)


@contextlib.contextmanager
def step_by_step_paths(model: LAS):
    use_step_by_step_paths(model)
    try:
        yield
    finally:
        use_fast_paths(model)


def build_train(cfg, batch, **variant):
    model = contract_model(cfg, **variant).train()
    # the contract's Adam, fused as asr-train fuses its AdamW (`asr.optimizer.fused_where_possible`)
    optimizer = fused_where_possible(torch.optim.Adam, model.parameters(), lr=cfg["lr"])
    feats, feat_lens, text, text_lens = batch

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss_from_features(feats, feat_lens, text, text_lens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        return float(loss.detach())

    return dict(
        step=step,
        fwd=lambda: count_flops_forward(model, batch),
        roots=[model],
        params=sum(p.numel() for p in model.parameters()),
        note=" ".join(["asr.model.LAS", *(f"{key}={value}" for key, value in variant.items())]),
    )


def count_flops_forward(model: LAS, batch):
    with step_by_step_paths(model):
        return model.loss_from_features(*batch)


def build_decoders(cfg, feats, **variant):
    model = contract_model(cfg, **variant).eval()
    with torch.no_grad():
        model.decoder.output.bias[cfg["sos_eos"]] = -1e4  # untrained: never stop early (contract section 4)
    lengths = torch.tensor([feats.shape[1]])
    encoder_frames = int(model.encoder.output_lengths(lengths)[0])
    ratio = cfg["decode_steps"] / encoder_frames  # floor(ratio * T) = exactly decode_steps tokens

    def run(beam):
        options = DecodingOptions(beam_size=beam, ctc_weight=0.0, max_length_ratio=ratio, eos_threshold=1e9)
        with torch.inference_mode():
            hypotheses = search(model, model.encode_features(feats, lengths), options)
        return len(hypotheses[0][0].tokens)

    def encode():
        with torch.inference_mode():
            model.encode_features(feats, lengths)

    return dict(encode=encode, greedy=lambda: run(1), beam=lambda: run(cfg["beam"]), note="")


def main(name: str = "team", **variant):
    """variant: keyword arguments of `contract_model` (none: the contract's model)."""
    arguments = common.parse_args("this toolkit's LAS (asr.model.LAS)")
    common.run_peer(
        name,
        {"asr": asr.__version__, "torch": torch.__version__},
        arguments,
        lambda cfg, batch: build_train(cfg, batch, **variant),
        lambda cfg, feats: build_decoders(cfg, feats, **variant),
    )


if __name__ == "__main__":
    main()
