"""Our fast configuration on the shared LAS benchmark contract: not the contract model, its own row.

Each change is a Hydra option of the toolkit, and its digits WER is in the README beside the default's:

- the decoder without input feeding (`model.decoder.input_feeding=false`: attention on top of the
  decoder LSTM, which then trains as one fused nn.LSTM call);
- on a CPU with native bf16 (AVX512-BF16 or AMX), bf16 autocast (the harness's `--bf16`: matmuls,
  LSTMs and convolutions in bfloat16, weights and optimiser in fp32; `trainer.bf16_cpu=true`).
  Without it oneDNN emulates bf16 and a step takes about 3x longer than in fp32, so it runs in fp32.

`--projection N` adds `model.encoder.pyramid_projection=N` (256 here: the pyramid levels project
their 1024-wide concatenated frames to 256 first). It is faster but not part of the fast
configuration, because it cost digits WER (README). `--fp32` and `--bf16` force the precision:

    python3 run_all.py --impl team_fast=$PWD/.venv/bin/python:$PWD/benchmarks/peer_team_fast.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_team  # noqa: E402

from asr.model.recurrence import cpu_has_fast_bf16  # noqa: E402


def take_option(name: str, default: str | None) -> str | None:
    """Remove `name VALUE` (or a bare flag, default None) from sys.argv before the harness parses it."""
    if name not in sys.argv:
        return default
    index = sys.argv.index(name)
    if default is None:
        del sys.argv[index]
        return "yes"
    value = sys.argv[index + 1]
    del sys.argv[index : index + 2]
    return value


def main(name: str = "team_fast", full_rate_layers: int = 1, input_feeding: bool = False):
    projection = int(take_option("--projection", "0"))
    fp32 = take_option("--fp32", None) is not None
    if not fp32 and "--bf16" not in sys.argv and cpu_has_fast_bf16():
        sys.argv.append("--bf16")
    peer_team.main(
        name, input_feeding=input_feeding, pyramid_projection=projection, full_rate_layers=full_rate_layers
    )


if __name__ == "__main__":
    main()
