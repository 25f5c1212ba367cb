"""Recurrent cells for the teacher-forced decoder loop, written so that each step does little work.

Autograd through `nn.LSTMCell` at every step of a loop computes, for each weight matrix W, the
product dL/dy_i^T x_i with the batch as its inner dimension and adds it into W's gradient: per step
a (4H x B) x (B x D) GEMM that writes and then accumulates 4H x D values. `LoopLinear` computes
y_i = x_i W^T with W detached inside the loop and gets dL/dW after the loop, as one
(4H x U*B) x (U*B x D) GEMM over all U steps. The parts of the input that do not depend on the loop
(the embeddings of the teacher-forced tokens) are projected for all steps before it (without
dropout on them, by projecting the embedding table once: V rows instead of U*B), and each cell's
input and recurrent projections are one GEMM per step ([x, h] against [W_ih | W_hh]).

The cells compute what `nn.LSTMCell` and `nn.GRUCell` compute, up to floating-point rounding
(`tests/test_speed_paths.py`), and read those modules' own parameters.
"""

import contextlib
import functools
import warnings
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary


def record_step(recorded: list[torch.Tensor], step: int, x: torch.Tensor, name: str) -> None:
    """Keep step `step`'s input (detached) for a gradient after the loop; steps must come in order."""
    if len(recorded) != step:
        raise RuntimeError(f"{name} expected step {len(recorded)}, got {step}")
    recorded.append(x.detach())


def recorded_inputs(inputs: list[torch.Tensor], grad: torch.Tensor, name: str) -> torch.Tensor:
    """The (B, D) inputs a loop recorded at each of its steps, stacked to (U*B, D) in `grad`'s dtype;
    `grad` (U, B, out) says how many steps there were, and every one must have run."""
    if len(inputs) != grad.shape[0]:
        raise RuntimeError(f"{name} was called for {len(inputs)} of {grad.shape[0]} steps")
    return torch.stack(inputs).flatten(0, 1).to(grad.dtype)


class _DeferredWeightGradient(torch.autograd.Function):
    """offsets -> a copy of offsets; backward also returns dL/dW = sum_i dL/dy_i^T x_i in one GEMM.

    `inputs` is the list of per-step inputs x_i (B, D), filled by the loop after this node is
    created; autograd runs this backward after every step's, when the list is complete.
    """

    @staticmethod
    def forward(ctx, offsets, weight, inputs):
        ctx.inputs, ctx.weight_dtype = inputs, weight.dtype
        return offsets.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        # (U, B, out) x (U, B, in) -> (out, in): the sum over steps and batch is one GEMM
        inputs = recorded_inputs(ctx.inputs, grad, "LoopLinear")
        if onednn_gemm_available(grad):  # (out, U*B) x (U*B, in) as a linear over the U*B axis
            weight_grad = onednn_linear(grad.flatten(0, 1).t().contiguous(), inputs.t().contiguous())
        else:
            weight_grad = grad.flatten(0, 1).t().mm(inputs)
        return grad, weight_grad.to(ctx.weight_dtype), None


USE_ONEDNN_GEMM = True  # False: torch's default GEMM (benchmarks/train_step.py times both in one run)


def onednn_gemm_available(weight: torch.Tensor) -> bool:
    """Whether oneDNN's fp32 GEMM can run x W^T for this weight (CPU, float32, not under autocast).

    On the CPUs this project measures, PyTorch sends fp32 `addmm` to MKL's AVX2 kernels, which run a
    decoder step's (16 x 1024) x (1024 x 2048) product at about half the rate of oneDNN, the
    library behind the fused LSTM (`benchmarks/train_step.py` times a step with each: `fast_mkl`).
    """
    return (
        USE_ONEDNN_GEMM
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def onednn_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (B, in) W^T through oneDNN's GEMM; weight (out, in), both contiguous float32 on the CPU."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


PACK_WEIGHTS = True  # False: plain weights (benchmarks/train_step.py can time both)


def pack_for_onednn(weight: torch.Tensor, batch: int | None) -> torch.Tensor:
    """`weight` (out, in), detached, reordered once into oneDNN's blocked layout for `onednn_linear`
    on about `batch` rows (None: no hint); contiguous in plain layout where packing is off.

    A loop multiplies by the same weight at every step; with a plain-layout weight oneDNN's GEMM runs
    (16 x 1024) x (1024 x 2048) in 0.46 ms, with the packed one in 0.33 (W^T, as in backward: 0.57
    against 0.32), and the reordering costs 1.4-3.4 ms once, so it pays from a few steps on.
    """
    weight = weight.detach().contiguous()
    if not PACK_WEIGHTS or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return weight
    return torch.ops.mkldnn._reorder_linear_weight(weight, batch)


class _OneDNNStepLinear(torch.autograd.Function):
    """offset + x W^T with W constant (LoopLinear gets dL/dW after the loop): both products on oneDNN."""

    @staticmethod
    def forward(ctx, offset, x, weight, weight_t):
        ctx.weight_t = weight_t  # (in, out), contiguous: dL/dx = dL/dy W = linear(dL/dy, W^T)
        return onednn_linear(x.contiguous(), weight).add_(offset)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grad_x = onednn_linear(grad.contiguous(), ctx.weight_t) if ctx.needs_input_grad[1] else None
        return grad, grad_x, None, None


class LoopLinear:
    """y_i = offsets_i + x_i W^T at step i of a loop, with dL/dW computed once after the loop.

    weight : (out, in); offsets : (U, B, out), the part of y_i known before the loop (biases,
    projections of inputs that do not depend on it). On the CPU in fp32 the per-step products
    (forward, and dL/dx in backward) run on oneDNN's GEMM (`onednn_gemm_available`).
    """

    def __init__(self, weight: torch.Tensor, offsets: torch.Tensor):
        self.weight_t = weight.detach().t()
        self.onednn = onednn_gemm_available(weight)
        if self.onednn:
            batch = offsets.shape[1]
            self.weight = pack_for_onednn(weight, batch)
            self.weight_t = pack_for_onednn(self.weight_t, batch)
        device = weight.device.type
        if torch.is_autocast_enabled(device):  # cast once, not at every step (autocast caches only leaves)
            self.weight_t = self.weight_t.to(torch.get_autocast_dtype(device))
        self.inputs: list[torch.Tensor] | None = None
        if torch.is_grad_enabled() and weight.requires_grad:
            self.inputs = []
            offsets = _DeferredWeightGradient.apply(offsets, weight, self.inputs)
        self.offsets = offsets.unbind(0)  # one backward node for all steps, not one per index

    @classmethod
    def from_linear(cls, linear: nn.Linear, steps: int, batch: int) -> "LoopLinear":
        bias = linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
        return cls(linear.weight, bias.expand(steps, batch, -1))

    def __call__(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """x : (B, in), the input of step `step` (steps must come in order) -> (B, out)."""
        if self.inputs is not None:
            record_step(self.inputs, step, x, "LoopLinear")
        if self.onednn and x.dtype == torch.float32:
            return _OneDNNStepLinear.apply(self.offsets[step], x, self.weight, self.weight_t)
        return torch.addmm(self.offsets[step], x, self.weight_t)


class _DeferredMemoryGradient(torch.autograd.Function):
    """memory (B, T, E) -> zeros (U, B, E), which step i's context adds; backward returns
    dL/dmemory = sum_i w_i^T dL/dc_i for all U steps in one batched product.

    `weights` is the list of per-step weights w_i (B, T), filled by the loop after this node is
    created (as `_DeferredWeightGradient`'s inputs).
    """

    @staticmethod
    def forward(ctx, memory, steps, weights):
        ctx.weights, ctx.memory_dtype = weights, memory.dtype
        return memory.new_zeros(steps, memory.shape[0], memory.shape[2])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        steps = len(ctx.weights)
        if steps != grad.shape[0]:
            raise RuntimeError(f"LoopContexts was called for {steps} of {grad.shape[0]} steps")
        weights = torch.stack(ctx.weights, dim=2).to(grad.dtype)  # (B, T, U)
        return torch.bmm(weights, grad.transpose(0, 1)).to(ctx.memory_dtype), None, None


class LoopContexts:
    """c_i = sum_t w_i[t] memory[t] at step i of a loop, with dL/dmemory computed once after it.

    Autograd through a per-step (B, 1, T) x (B, T, E) product computes, at every step, the outer
    product w_i^T dL/dc_i, (B, T, E), and adds it into memory's gradient: two passes over a
    (B, T, E) buffer per step. Here memory is detached inside the loop and its gradient is one
    (B, T, U) x (B, U, E) product after it. The contexts are the same sums.
    """

    def __init__(self, memory: torch.Tensor, steps: int):
        self.memory = memory.detach()
        device = memory.device.type
        if torch.is_autocast_enabled(device):
            # autocast would cast memory at every step's product: the contract's decoder forward and
            # backward under CPU bf16 autocast took 151 against 170 ms (2 threads, 2026-12-07)
            self.memory = self.memory.to(torch.get_autocast_dtype(device))
        self.weights: list[torch.Tensor] | None = None
        offsets = None
        if torch.is_grad_enabled() and memory.requires_grad:
            self.weights = []
            offsets = _DeferredMemoryGradient.apply(memory, steps, self.weights).unbind(0)
        self.offsets = offsets

    def __call__(self, step: int, weights: torch.Tensor) -> torch.Tensor:
        """weights : (B, T), step `step`'s attention weights (steps in order) -> contexts (B, E)."""
        if self.weights is None:
            return torch.bmm(weights.unsqueeze(1), self.memory).squeeze(1)
        record_step(self.weights, step, weights, "LoopContexts")
        return torch.baddbmm(self.offsets[step].unsqueeze(1), weights.unsqueeze(1), self.memory).squeeze(1)


def lstm_pointwise(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.LSTMCell's nonlinearities. gates : (B, 4H) in PyTorch's order i, f, g, o; cell : (B, H)."""
    input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
    return torch.sigmoid(output_gate) * torch.tanh(cell), cell


def known_share(weight: torch.Tensor, bias: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """bias + known W[:, :D]^T: (N, D) inputs known before a loop (or a table of them) -> (N, out),
    their share of the projection by W (out, D + ...), whose first D columns read them."""
    return torch.addmm(bias, known, weight[:, : known.shape[-1]].t())


def step_weight(cell: nn.LSTMCell, known_dim: int) -> torch.Tensor:
    """[W_ih's columns after the first known_dim | W_hh]: a step's input and recurrent projections
    as one GEMM of [x, h], when the first known_dim input columns are projected before the loop."""
    return torch.cat([cell.weight_ih[:, known_dim:], cell.weight_hh], dim=1)


def lstm_pointwise_in_place(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`lstm_pointwise` without autograd, overwriting `gates`: one sigmoid for all four gates.

    tanh(x) = 2 sigmoid(2x) - 1, and PyTorch's CPU sigmoid is vectorised where its tanh is not: on
    160 rows x 256 (a beam search step of 16 utterances) 111 us against 240, the same at 10 rows.
    The two forms differ by rounding, a few 1e-7 (fp32).
    """
    input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=1)
    candidate.mul_(2)
    gates.sigmoid_()
    cell = torch.addcmul(forget_gate * cell, input_gate, candidate.mul_(2).sub_(1))
    return torch.sigmoid(2 * cell).mul_(2).sub_(1).mul_(output_gate), cell


# LSTM cell -> (its tensors' (data pointer, version), (known, packed weight)): see
# `search_lstm_weights`. Weak, and outside the modules, so that a model can still be copied and
# pickled (an opaque oneDNN tensor cannot)
_SEARCH_WEIGHTS = WeakIdKeyDictionary()


def search_lstm_weights(
    cell: nn.LSTMCell, embedding: nn.Embedding | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A search step's LSTM cell as one GEMM: (known, W) with gates = known + [inputs, h] W^T.

    With `embedding` (the first cell, whose input starts with the token's embedding), known is the
    (V, 4H) table E W_ih[:, :D]^T + b_ih + b_hh, one row per token, and W = [W_ih[:, D:], W_hh]; else
    known is the summed bias (4H,) and W = [W_ih, W_hh]. W is packed for oneDNN
    (`pack_for_onednn`). Made once and reused (every step of a search) until a weight changes: an
    optimiser step or a loaded state bumps its version. Only for inference (no dropout on the
    embeddings).
    """
    tensors = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    if embedding is not None:
        tensors.append(embedding.weight)
    key = tuple((t.data_ptr(), t._version) for t in tensors)
    cached = _SEARCH_WEIGHTS.get(cell)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            bias = cell.bias_ih + cell.bias_hh
            known = bias if embedding is None else known_share(cell.weight_ih, bias, embedding.weight)
            skip = 0 if embedding is None else embedding.embedding_dim
            weight = pack_for_onednn(step_weight(cell, skip), None)
        cached = _SEARCH_WEIGHTS[cell] = (key, (known, weight))
    return cached[1]


def gru_pointwise(
    input_gates: torch.Tensor, hidden_gates: torch.Tensor, hidden: torch.Tensor
) -> torch.Tensor:
    """nn.GRUCell's nonlinearities. gates : (B, 3H) in PyTorch's order r, z, n; hidden : (B, H)."""
    input_reset, input_update, input_new = input_gates.chunk(3, dim=1)
    hidden_reset, hidden_update, hidden_new = hidden_gates.chunk(3, dim=1)
    reset = torch.sigmoid(input_reset + hidden_reset)
    update = torch.sigmoid(input_update + hidden_update)
    new = torch.tanh(input_new + reset * hidden_new)
    return new + update * (hidden - new)  # = (1 - z) n + z h


def _known_projection(weight, bias, known: torch.Tensor | None, steps: int, batch: int):
    """(U, B, out): bias plus the known inputs' share of the projection, for all steps in one GEMM."""
    if known is None:
        return bias.expand(steps, batch, -1)
    return known_share(weight, bias, known.flatten(0, 1)).view(steps, batch, -1)


class Embedded(NamedTuple):
    """Token embeddings without dropout, as ids and the table: a loop cell whose known input this is
    projects the table once (V rows) instead of every step's embedding (U x B rows)."""

    tokens: torch.Tensor  # (U, B) ids
    weight: torch.Tensor  # (V, D0) the embedding table

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.tokens.shape, self.weight.shape[1])


class _LoopLSTMCellGradients(torch.autograd.Function):
    """(known, W_ih, W_hh, b_ih, b_hh) -> offsets (U, B, 4H) = b_ih + b_hh + known_i W_ih[:, :D0]^T,
    the part of every step's gates known before the loop; backward returns every parameter's
    gradient over all U steps at once.

    The loop's steps multiply [x_i, h_i] by the detached [W_ih[:, D0:] | W_hh] and append [x_i, h_i]
    to `inputs`; all of a step's gates get the same gradient as its offsets, so with
    G = dL/dgates (U*B, 4H) and X = [known, x, h] stacked over steps (U*B, D0 + Dx + H):

        dW_ih = G^T X[:, :D0 + Dx]     dW_hh = G^T X[:, D0 + Dx:]     db_ih = db_hh = sum G
        dknown = G W_ih[:, :D0]

    two GEMMs on column slices of X (BLAS reads them in place), so nothing is transposed or copied,
    and each weight's gradient comes out whole: autograd through slices and a concatenation of the
    weights zero-filled a (4H, D0 + Dx) buffer per slice and added them.

    Where the known input is token embeddings without dropout (`Embedded`: ids and table E), the
    known part is a row of P = E W_ih[:, :D0]^T (V, 4H) per token, and the gradients of that part
    come from dP = sum of G's rows by token (V, 4H): dE = dP W_ih[:, :D0], dW_ih[:, :D0] = dP^T E,
    products with V rows instead of U x B.
    """

    @staticmethod
    def forward(ctx, known, embedding, tokens, weight_ih, weight_hh, bias_ih, bias_hh, inputs, steps_batch):
        ctx.inputs = inputs
        ctx.dtypes = (weight_ih.dtype, weight_hh.dtype, bias_ih.dtype, bias_hh.dtype)
        ctx.save_for_backward(known, embedding, tokens, weight_ih)
        bias = bias_ih + bias_hh
        if embedding is not None:
            return known_share(weight_ih, bias, embedding)[tokens]  # a (V, 4H) table, looked up
        return _known_projection(weight_ih, bias, known, *steps_batch)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        known, embedding, tokens, weight_ih = ctx.saved_tensors
        dtype = grad.dtype
        gates_grad = grad.flatten(0, 1)  # (U*B, 4H)
        inputs = recorded_inputs(ctx.inputs, grad, "LoopLSTMCell")  # (U*B, Dx + H)
        if known is not None:
            inputs = torch.cat([known.flatten(0, 1).to(dtype), inputs], dim=1)
        known_dim = embedding.shape[1] if embedding is not None else 0  # columns not in `inputs`
        split = weight_ih.shape[1] - known_dim  # W_ih's columns in `inputs`, then W_hh's
        weight_ih_grad = gates_grad.t().mm(inputs[:, :split])
        weight_hh_grad = gates_grad.t().mm(inputs[:, split:])
        known_grad = embedding_grad = None
        if embedding is not None:
            table_grad = gates_grad.new_zeros(embedding.shape[0], gates_grad.shape[1])
            table_grad.index_add_(0, tokens.flatten(), gates_grad)  # (V, 4H)
            known_weight = weight_ih[:, :known_dim].to(dtype)
            weight_ih_grad = torch.cat([table_grad.t().mm(embedding.to(dtype)), weight_ih_grad], dim=1)
            if ctx.needs_input_grad[1]:
                embedding_grad = table_grad.mm(known_weight).to(embedding.dtype)
        elif known is not None and ctx.needs_input_grad[0]:
            known_grad = gates_grad.mm(weight_ih[:, : known.shape[-1]].to(dtype)).view_as(known)
        bias_grad = gates_grad.sum(0)
        dtypes = ctx.dtypes
        return (
            known_grad,
            embedding_grad,
            None,
            weight_ih_grad.to(dtypes[0]),
            weight_hh_grad.to(dtypes[1]),
            bias_grad.to(dtypes[2]),
            bias_grad.to(dtypes[3]),
            None,
            None,
        )


class LoopLSTMCell:
    """An nn.LSTMCell whose input at step i is [known_i, x_i]: known (U, B, D0) for all steps at once,
    a tensor or `Embedded` tokens.

    Each step's input and recurrent projections are one GEMM ([x, h] against [W_ih's columns for x |
    W_hh], detached); the weights' gradients come after the loop (`_LoopLSTMCellGradients`).
    """

    def __init__(self, cell: nn.LSTMCell, known, steps: int, batch: int):
        known_dim = 0 if known is None else known.shape[-1]
        self.inputs: list[torch.Tensor] = []
        embedding, tokens = (known.weight, known.tokens) if isinstance(known, Embedded) else (None, None)
        known = None if isinstance(known, Embedded) else known
        parameters = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        offsets = _LoopLSTMCellGradients.apply(
            known, embedding, tokens, *parameters, self.inputs, (steps, batch)
        )
        self.recording = offsets.requires_grad
        weight = step_weight(cell, known_dim).detach()
        self.gates = LoopLinear(weight, offsets)

    def __call__(
        self, step: int, x: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        """x : (B, D - D0); state : (h, c) -> (h, c)."""
        hidden, cell = state
        inputs = torch.cat([x, hidden], dim=1)
        if self.recording:
            record_step(self.inputs, step, inputs, "LoopLSTMCell")
        return lstm_pointwise(self.gates(step, inputs), cell)


class LoopGRUCell:
    """An nn.GRUCell whose input at step i is [known_i, x_i] (the reset gate keeps W_hh h apart)."""

    def __init__(self, cell: nn.GRUCell, known: torch.Tensor | None, steps: int, batch: int):
        known_dim = 0 if known is None else known.shape[-1]
        offsets = _known_projection(cell.weight_ih, cell.bias_ih, known, steps, batch)
        self.input_gates = LoopLinear(cell.weight_ih[:, known_dim:], offsets)
        self.hidden_gates = LoopLinear(cell.weight_hh, cell.bias_hh.expand(steps, batch, -1))

    def __call__(
        self, step: int, x: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        """x : (B, D - D0); state : (h,) -> (h,)."""
        (hidden,) = state
        return (gru_pointwise(self.input_gates(step, x), self.hidden_gates(step, hidden), hidden),)


def loop_cell(cell: nn.Module, known: "torch.Tensor | Embedded | None", steps: int, batch: int):
    if isinstance(cell, nn.LSTMCell):
        return LoopLSTMCell(cell, known, steps, batch)
    if isinstance(cell, nn.GRUCell):
        if isinstance(known, Embedded):
            known = nn.functional.embedding(known.tokens, known.weight)
        return LoopGRUCell(cell, known, steps, batch)
    raise TypeError(f"no loop form for {type(cell).__name__}")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX), not by emulation."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def rnn_precision(x: torch.Tensor):
    """(context, x) for an LSTM/GRU call on `x`: CPU bf16 autocast sends recurrent layers to oneDNN
    in bf16, which a CPU without bf16 instructions (no AVX-512) cannot run ("could not create a
    primitive descriptor for the LSTM forward propagation primitive"); there they run in fp32."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not cpu_has_fast_bf16():
        return torch.autocast("cpu", enabled=False), x.float()
    return contextlib.nullcontext(), x


def run_cells(cells: nn.ModuleList, inputs: torch.Tensor, states, dropout: float, training: bool):
    """Step a stack of LSTM or GRU cells over a whole sequence in one fused nn.LSTM/nn.GRU call.

    inputs : (U, B, D); states : per layer (h,) or (h, c), each (B, H) -> outputs (U, B, H).
    Dropout (training only) is applied between layers, as nn.LSTM does, never after the last.
    The call reads the cells' own parameters, so it computes what a loop over them computes.
    """
    weights = [p for cell in cells for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
    precision, inputs = rnn_precision(inputs)
    hidden = torch.stack([state[0] for state in states]).to(inputs.dtype)  # (layers, B, H)
    with precision, warnings.catch_warnings():
        # cuDNN copies the cells' separate weights into one buffer at every call, and warns each time
        warnings.filterwarnings("ignore", message=".*single contiguous chunk of memory.*")
        if isinstance(cells[0], nn.LSTMCell):
            cell = torch.stack([state[1] for state in states]).to(inputs.dtype)
            outputs, _, _ = torch._VF.lstm(
                inputs, (hidden, cell), weights, True, len(cells), dropout, training, False, False
            )
        else:
            outputs, _ = torch._VF.gru(
                inputs, hidden, weights, True, len(cells), dropout, training, False, False
            )
    return outputs
