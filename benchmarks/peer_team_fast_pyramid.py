"""The fast configuration with the encoder of this toolkit's recipes: its own row, another model.

`peer_team_fast.py`'s changes (no input feeding; bf16 autocast on a CPU with native bf16), and the
listener without the contract's full-rate BiLSTM (`model.encoder.num_layers=0`): the first pyramid
level reads pairs of feature frames (2 x 80) at 150 frames, then two more levels, so the output is
the same 37 frames of 512, from three BiLSTM layers instead of four (8.5 M parameters against 11.0 M,
half the contract's FLOPs). The digits and Kathleen recipes' encoders have this shape, and the
README gives the digits WER with and without the full-rate layer. Options as `peer_team_fast.py`:

    python3 run_all.py --impl \
        team_fast_pyramid=$PWD/.venv/bin/python:$PWD/benchmarks/peer_team_fast_pyramid.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_team_fast  # noqa: E402

if __name__ == "__main__":
    peer_team_fast.main("team_fast_pyramid", full_rate_layers=0)
