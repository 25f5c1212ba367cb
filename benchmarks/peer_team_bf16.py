"""The contract's model with input feeding kept, under bf16 autocast: its own row.

`peer_team_fast.py` without its decoder change: the exact model's architecture (input feeding), with
only the precision changed (on a CPU with native bf16, AVX512-BF16 or AMX: `trainer.bf16_cpu=true`;
fp32 elsewhere, as `peer_team_fast.py`). `peer_team_bf16_pyramid.py` adds the recipes' encoder.

    python3 run_all.py --impl team_bf16=$PWD/.venv/bin/python:$PWD/benchmarks/peer_team_bf16.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_team_fast  # noqa: E402

if __name__ == "__main__":
    peer_team_fast.main("team_bf16", input_feeding=True)
