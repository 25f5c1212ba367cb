"""The optimiser and learning-rate schedule that asr-train and asr-train-lm share.

A module of its own, without the trainer's imports (TensorBoard, the data pipeline), so that the
benchmark scripts can build the same optimiser at the memory cost of torch alone.
"""

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptimizerOptions:
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 500  # linear warmup from 0
    final_lr_ratio: float = 0.02  # cosine decay to lr * final_lr_ratio at the last step

    def adamw(self, parameters) -> torch.optim.AdamW:
        """AdamW with these options, its update fused into one operation where PyTorch has the
        kernel (floating-point parameters on the CPU or a CUDA GPU): `use_fused_optimizer`."""
        parameters = list(parameters)
        return fused_where_possible(
            torch.optim.AdamW,
            parameters,
            lr=self.lr,
            betas=self.betas,
            weight_decay=self.weight_decay,
        )


def use_fused_optimizer(parameters) -> bool:
    """Whether Adam(W)'s fused kernels apply: the same update, to rounding, in one operation
    instead of PyTorch's default loop of a dozen element-wise operations per parameter on the CPU.
    On the benchmark contract's 12M parameters (2 CPU threads) a step of Adam took 6.5 ms fused
    against 27.6 ms (README, "Performance")."""
    parameters = list(parameters)
    return bool(parameters) and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters
    )


def fused_where_possible(optimizer_class, parameters, **options) -> torch.optim.Optimizer:
    """`optimizer_class(parameters, fused=..., **options)`, fused where `use_fused_optimizer` says so.

    PyTorch's fused kernels update the parameters in place without bumping their version counters
    (torch 2.14: `p._version` stays the same across `step()`), and the search's caches of packed
    weights and location matrices (`asr.model.recurrence.search_lstm_weights`,
    `asr.model.attention.location_matrix`) are keyed on the version: without a bump, validation
    during training would decode with the first epoch's weights. A hook after each step bumps
    every parameter's version by multiplying one of its values by 1 in place (no value changes).
    """
    parameters = list(parameters)
    fused = use_fused_optimizer(parameters)
    optimizer = optimizer_class(parameters, fused=fused, **options)
    if fused:
        optimizer.register_step_post_hook(_bump_versions)
    return optimizer


@torch.no_grad()
def _bump_versions(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if parameter.numel():  # one element, a view sharing the parameter's version counter
                parameter.detach()[(0,) * parameter.dim()].mul_(1)


def warmup_cosine(warmup_steps: int, total_steps: int, final_ratio: float):
    """LambdaLR factor: linear warmup, then cosine decay that ends exactly at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
