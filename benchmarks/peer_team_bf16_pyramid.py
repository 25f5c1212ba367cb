"""The digits recipe's model under bf16 autocast on the contract's workload: its own row.

Input feeding kept (the default decoder, as `experiment=digits` trains it), bf16 autocast on a CPU
with native bf16 (`trainer.bf16_cpu=true`), and the listener of this toolkit's recipes
(`model.encoder.num_layers=0`: no full-rate BiLSTM, as `peer_team_fast_pyramid.py`), so half the
contract's FLOPs: a smaller model than the contract's, reported as one.

    python3 run_all.py --impl \
        team_bf16_pyramid=$PWD/.venv/bin/python:$PWD/benchmarks/peer_team_bf16_pyramid.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_team_fast  # noqa: E402

if __name__ == "__main__":
    peer_team_fast.main("team_bf16_pyramid", full_rate_layers=0, input_feeding=True)
