"""Training-step speed of our LAS on the benchmark contract: the step-by-step reference against the
fast paths, interleaved in one process so that the ratios hold on a shared machine.

    .venv/bin/python benchmarks/train_step.py                         # 5 rounds x 5 steps per variant
    .venv/bin/python benchmarks/train_step.py --rounds 3 --variants reference fast --profile fast
    python benchmarks/train_step.py --device cuda --batch 64     # on a GPU: the variants that apply there

Variants (each its own model, built from the same seed, with its own Adam):
  reference       the training step before issue 7: the decoder as a plain loop of `step`
                  (`forward_by_steps`), each encoder BiLSTM as two calls with the padding bookkeeping
  fast            the default model's teacher-forced path (`forward`): the same function, fewer ops per step
  fast_mkl        the same with the decoder's per-step products on torch's default fp32 GEMM (MKL)
                  instead of oneDNN's (`asr.model.recurrence.USE_ONEDNN_GEMM`)
  fast_unpacked   the same on oneDNN with plain-layout weights, not reordered once per step
                  (`asr.model.recurrence.PACK_WEIGHTS`)
  no_feeding      `input_feeding: false`: a different model whose decoder RNN is one fused LSTM call
  fast_bf16, no_feeding_bf16   the same under torch.autocast(bfloat16)

On `--device cuda` the variants are reference, fast, no_feeding and the bf16 ones (fast_mkl and
fast_unpacked are oneDNN's, CPU only); TF32 stays off, so fp32 means fp32. `--batch` changes the
contract's 16 utterances per step (GPUs are far from busy at 16).

The contract is `../shared/bench/contract.md` (16 x 300 x 80 features, 40-token targets, 12M parameters);
the model is built by `peer_team.contract_model`. Prints one line per round, a table of medians and the
ratio of each variant's utterances/s to the reference's, and `RESULT {json}`.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_team  # noqa: E402  (finds the shared harness; contract_model)
import torch  # noqa: E402

from asr.distributed import DeviceError, resolve_device  # noqa: E402
from asr.model import recurrence  # noqa: E402

VARIANTS = ("reference", "fast", "fast_mkl", "fast_unpacked", "no_feeding", "fast_bf16", "no_feeding_bf16")
CPU_ONLY = ("fast_mkl", "fast_unpacked")


def build(name: str, cfg: dict, batch, device: torch.device):
    """A training step for one variant: () -> loss (a float: on a GPU, the step has finished)."""
    input_feeding = not name.startswith("no_feeding")
    model = peer_team.contract_model(cfg, input_feeding=input_feeding).train().to(device)
    batch = tuple(t.to(device) for t in batch)
    if name == "reference":
        peer_team.use_step_by_step_paths(model)
    # fused as asr-train fuses it, except in the reference (PyTorch's default loop, as before issue 7)
    if name == "reference":
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    else:
        optimizer = peer_team.fused_where_possible(torch.optim.Adam, model.parameters(), lr=cfg["lr"])
    bf16 = name.endswith("_bf16")

    def step():
        recurrence.USE_ONEDNN_GEMM = name != "fast_mkl"
        recurrence.PACK_WEIGHTS = name != "fast_unpacked"
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss_from_features(*batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        return float(loss.detach())

    return step


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, help="(default: all that apply)")
    parser.add_argument("--profile", choices=VARIANTS, help="after timing, profile one step of this variant")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--batch", type=int, help="utterances per step (default: the contract's 16)")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except DeviceError as error:
        parser.error(f"--device {error}")
    on_cpu = device.type == "cpu"
    chosen = [*(args.variants or []), *([args.profile] if args.profile else [])]
    if not on_cpu and set(chosen) & set(CPU_ONLY):
        parser.error(f"{' and '.join(CPU_ONLY)} are oneDNN's CPU paths; not on --device {args.device}")
    variants = args.variants or [name for name in VARIANTS if on_cpu or name not in CPU_ONLY]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    common = peer_team.common
    torch.set_num_threads(args.threads)
    cfg = dict(common.CONTRACT)
    if args.batch:
        cfg["batch"] = args.batch
    batch = common.make_batch(cfg)
    processor = common.cpu_name() if on_cpu else torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {processor}")
    print(f"batch of {cfg['batch']}: {common.batch_checksum(batch)}")
    steps = {name: build(name, cfg, batch, device) for name in variants}
    for name, step in steps.items():
        losses = [step() for _ in range(args.warmup)]
        print(f"  {name}: warm-up losses {', '.join(f'{loss:.4f}' for loss in losses)}")
    times = {name: [] for name in steps}
    for round_index in range(args.rounds):
        with common.BgMonitor() as monitor:
            for name, step in steps.items():
                for _ in range(args.steps):
                    start = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - start)
        medians = "  ".join(f"{name} {statistics.median(t[-args.steps :]):.3f}" for name, t in times.items())
        print(f"round {round_index + 1}: s/step {medians}  (other processes: {monitor.cores:.2f} cores)")
    report(times, cfg["batch"])
    if args.profile:
        step = steps.get(args.profile) or build(args.profile, cfg, batch, device)
        profile(step, device)


def report(times: dict, batch_size: int):
    reference = statistics.median(times["reference"]) if "reference" in times else None
    print("\n| variant | s/step (median) | min-max | utt/s | x reference utt/s |")
    print("|---|---|---|---|---|")
    result = {}
    for name, values in times.items():
        median = statistics.median(values)
        ratio = f"{reference / median:.2f}" if reference else "-"
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"| {name} | {median:.3f} | {spread} | {batch_size / median:.1f} | {ratio} |")
        result[name] = {"step_s": round(median, 4), "utt_per_s": round(batch_size / median, 2)}
    print("RESULT " + json.dumps(result))


def profile(step, device: torch.device):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    step()
    with torch_profile(activities=activities) as prof:
        step()
    print(prof.key_averages().table(sort_by=sort_by, row_limit=25, max_name_column_width=48))


if __name__ == "__main__":
    main()
