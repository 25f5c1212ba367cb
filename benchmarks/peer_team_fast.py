"""Our fast configuration on the shared LAS benchmark contract: not the contract model, its own row.

The decoder without input feeding (`model.decoder.input_feeding=false`: attention on top of the
decoder LSTM, which then trains as one fused nn.LSTM call) and bf16 autocast (the harness's `--bf16`:
matmuls, LSTMs and convolutions in bfloat16, weights and optimiser in fp32). Everything else is
`peer_team.py`'s:

    python3 run_all.py --impl team_fast=$PWD/.venv/bin/python:$PWD/benchmarks/peer_team_fast.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_team  # noqa: E402

if __name__ == "__main__":
    if "--bf16" not in sys.argv:
        sys.argv.append("--bf16")
    peer_team.main("team_fast", input_feeding=False)
