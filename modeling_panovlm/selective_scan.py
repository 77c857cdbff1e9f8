"""Mamba-1 selective scan and causal depthwise convolution, with mamba-ssm's argument layout.

`selective_scan` and `causal_conv1d` dispatch to the fused CUDA kernels of `mamba-ssm` / `causal-conv1d` when those
packages import and the tensors are on CUDA, and otherwise run pure PyTorch. The kernels are optional: they cannot
be installed on CPU-only machines, and a remote-code loader must not require them.

The PyTorch scan is fast enough to train on CPU. It works on blocks of a few sequences by a few time steps, small
enough for the CPU caches: per block it discretises (`exp(delta * A)`, computed as an `exp2`, and `delta * B * u`),
runs the recurrence with one fused op per step and reads out with `C`, inside one custom autograd function whose
backward recomputes the block and runs the recurrence in reverse (as the CUDA kernel does). Autograd therefore never
records `L` small graph nodes, and only the state at each chunk start is kept for the backward pass. For the BiMamba
resampler's forward + backward on a 2-core CPU (`benchmarks/bench_bimamba.py`: 18 sequences of 64 tokens, d_inner
512, d_state 64) this measured ~55x faster than transformers' `MambaMixer` stepping through `L` with plain autograd
(its slow path) and 14-17x faster than its `mambapy` parallel scan, with ~13x less peak memory than the latter.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F


logger = logging.getLogger(__name__)

try:
    from mamba_ssm.ops.selective_scan_interface import (
        selective_scan_fn as _kernel_selective_scan,
    )
except ImportError:
    _kernel_selective_scan = None

try:
    from causal_conv1d import causal_conv1d_fn as _kernel_causal_conv1d
except ImportError:
    _kernel_causal_conv1d = None

# Elements of one block's (steps, sequences, d_inner, d_state) float32 work tensors. At 2 MiB a block stays in the
# CPU caches: on 2 cores, for the 18 sequences of 64 tokens of bench_bimamba (d_inner 512, d_state 64), the scan
# ran fwd+bwd 2x faster than with blocks of all 18 sequences (19 MiB) and ~1.1x faster than with 1 MiB blocks.
_CHUNK_NUMEL = 1 << 19
# exp(x) = exp2(x * log2(e)); torch's float32 exp2 measured ~3x faster than its exp on CPU.
_LOG2_E = 1.4426950408889634


@functools.cache
def _log_backend_once(op: str, backend: str, device_type: str) -> None:
    if backend == "torch" and device_type == "cuda":
        logger.warning(
            "%s runs in pure PyTorch on CUDA (its optional kernel package is not importable, or the shape is not "
            "supported); install `mamba-ssm` and `causal-conv1d` for the fused kernels (much faster).",
            op,
        )
    else:
        logger.info("%s uses the %s implementation on %s.", op, backend, device_type)


def _block_shape(length: int, batch: int, channels: int, d_state: int) -> tuple[int, int]:
    """Time steps and sequences per block of the scan, so that a block's work tensors hold ~`_CHUNK_NUMEL` values.

    At least sqrt(L) steps: when one step alone exceeds the budget, this still bounds both the states kept at chunk
    starts (L / steps per sequence) and a block's work tensors (~steps per sequence) by O(sqrt(L)) states. Then as
    many sequences as fit the budget (at least one).
    """
    per_step = channels * d_state
    steps = max(_CHUNK_NUMEL // (batch * per_step), math.isqrt(length - 1) + 1)
    return steps, min(batch, max(1, _CHUNK_NUMEL // (steps * per_step)))


def _chunk_states(
    dt: torch.Tensor, du: torch.Tensor, A_log2: torch.Tensor, B: torch.Tensor, h0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discretise one block and run the recurrence from the state `h0` that precedes it.

    dt, du: (T, N, D); A_log2 = A * log2(e): (D, S); B: (T, N, S); h0: (N, D, S) -> states (T + 1, N, D, S) with
    `states[0] = h0`, decay (T, N, D, S).
    """
    decay = (dt[..., None] * A_log2).exp2_()
    states = dt.new_empty(dt.shape[0] + 1, *h0.shape)
    states[0] = h0
    torch.mul(du[..., None], B[:, :, None, :], out=states[1:])
    step_states, step_decay = states.unbind(0), decay.unbind(0)
    for t in range(dt.shape[0]):
        step_states[t + 1].addcmul_(step_decay[t], step_states[t])
    return states, decay


class _SelectiveScanCore(torch.autograd.Function):
    """`h_t = exp(dt_t * A) * h_{t-1} + du_t * B_t` from a zero state and `y_t = <C_t, h_t>`, in float32 and
    time-major: dt, du (L, N, D); A (D, S); B, C (L, N, S) -> y (L, N, D).

    The sequences are scanned a few at a time and in chunks of time steps (blocks sized by `_block_shape`). The
    forward keeps only the state before each chunk; the backward recomputes a chunk's states from it, so the memory
    held between forward and backward is L / chunk states per sequence instead of L.
    """

    @staticmethod
    def forward(
        ctx, dt: torch.Tensor, du: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
    ) -> torch.Tensor:
        length, batch, channels = dt.shape
        steps, sequences = _block_shape(length, batch, channels, A.shape[1])
        A_log2 = A * _LOG2_E
        chunk_h0 = dt.new_empty(-(-length // steps), batch, channels, A.shape[1])
        y = dt.new_empty(length, batch, channels)
        for n0 in range(0, batch, sequences):
            n1 = min(n0 + sequences, batch)
            h = dt.new_zeros(n1 - n0, channels, A.shape[1])
            for i, t0 in enumerate(range(0, length, steps)):
                block = (slice(t0, t0 + steps), slice(n0, n1))
                chunk_h0[i, n0:n1] = h
                states, _ = _chunk_states(dt[block], du[block], A_log2, B[block], h)
                # Multiply-and-sum beats a batched mat-vec (bmm) for these small inner sizes.
                torch.sum(states[1:] * C[block].unsqueeze(2), dim=-1, out=y[block])
                h = states[-1]
        ctx.save_for_backward(dt, du, A, B, C, chunk_h0)
        ctx.block_shape = steps, sequences
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dt, du, A, B, C, chunk_h0 = ctx.saved_tensors
        steps, sequences = ctx.block_shape
        batch = dt.shape[1]
        A_log2 = A * _LOG2_E
        grad_y = grad_y.contiguous()
        grad_dt, grad_du = torch.empty_like(dt), torch.empty_like(du)
        grad_B, grad_C, grad_A = torch.empty_like(B), torch.empty_like(C), torch.zeros_like(A)
        for n0 in range(0, batch, sequences):
            n1 = min(n0 + sequences, batch)
            # exp(dt_{t1} * A) * dLoss/dh_{t1} for the first step t1 after the current chunk.
            carry = None
            for i in reversed(range(chunk_h0.shape[0])):
                block = (slice(i * steps, (i + 1) * steps), slice(n0, n1))
                dt_b, du_b, B_b, grad_y_b = dt[block], du[block], B[block], grad_y[block]
                states, decay = _chunk_states(dt_b, du_b, A_log2, B_b, chunk_h0[i, n0:n1])
                torch.matmul(grad_y_b.unsqueeze(2), states[1:], out=grad_C[block].unsqueeze(2))
                # dLoss/dh_t = grad_y_t * C_t + exp(dt_{t+1} * A) * dLoss/dh_{t+1}: the recurrence run backwards.
                grad_h = grad_y_b.unsqueeze(3) * C[block].unsqueeze(2)
                if carry is not None:
                    grad_h[-1] += carry
                step_grad, step_decay = grad_h.unbind(0), decay.unbind(0)
                for t in range(grad_h.shape[0] - 2, -1, -1):
                    step_grad[t].addcmul_(step_decay[t + 1], step_grad[t + 1])
                carry = decay[0] * grad_h[0]
                torch.sum(grad_h * B_b.unsqueeze(2), dim=-1, out=grad_du[block])
                torch.matmul(du_b.unsqueeze(2), grad_h, out=grad_B[block].unsqueeze(2))
                # Gradient wrt the exponent dt_t * A, written over grad_h, which is not needed any more.
                grad_exponent = grad_h.mul_(states[:-1]).mul_(decay)
                grad_A += (grad_exponent * dt_b.unsqueeze(3)).sum((0, 1))
                torch.sum(grad_exponent.mul_(A), dim=-1, out=grad_dt[block])
        return grad_dt, grad_du, grad_A, grad_B, grad_C


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Pure-PyTorch selective scan (chunked, custom backward); same contract as `selective_scan`."""
    input_dtype = u.dtype
    # Like the kernel, compute in float32 whatever the input dtype. (No op below is one that autocast lowers.)
    u, delta, A, B, C = u.float(), delta.float(), A.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # Time-major so that every step of the recurrence reads one contiguous (N, d_inner, d_state) block.
    dt = delta.permute(2, 0, 1).contiguous()
    du = (dt * u.permute(2, 0, 1)).contiguous()
    B, C = B.permute(2, 0, 1).contiguous(), C.permute(2, 0, 1).contiguous()
    y = _SelectiveScanCore.apply(dt, du, A, B, C).permute(1, 2, 0)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(input_dtype)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Step-by-step selective scan with plain autograd, for tests only (slow). Same contract as `selective_scan`."""
    input_dtype = u.dtype
    u, delta, A, B, C = u.float(), delta.float(), A.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    outputs = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)
        drive = delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        state = decay * state + drive
        outputs.append((state * C[:, None, :, t]).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(input_dtype)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Mamba-1 selective scan (`mamba_ssm.ops.selective_scan_interface.selective_scan_fn` semantics).

    With `delta = softplus(delta + delta_bias)` (no softplus when `delta_softplus=False`), a zero initial state,
    and for every channel and time step `t`:

        h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t          (h_t: (d_state,))
        y_t = <C_t, h_t> + D * u_t;  y_t *= silu(z_t) when `z` is given

    The recurrence runs in float32; the result has `u`'s dtype. Uses the mamba-ssm CUDA kernel when it is
    importable and `u` is on CUDA, else `selective_scan_torch`.

    Args:
        u (`torch.Tensor` of shape `(N, d_inner, L)`): input sequence.
        delta (`torch.Tensor` of shape `(N, d_inner, L)`): step sizes before bias and softplus.
        A (`torch.Tensor` of shape `(d_inner, d_state)`): state matrix (negative for a stable scan).
        B, C (`torch.Tensor` of shape `(N, d_state, L)`): input-dependent input and read-out vectors.
        D (`torch.Tensor` of shape `(d_inner,)`, *optional*): skip connection.
        z (`torch.Tensor` of shape `(N, d_inner, L)`, *optional*): gate.
        delta_bias (`torch.Tensor` of shape `(d_inner,)`, *optional*): added to `delta` before the softplus.
        delta_softplus (`bool`): apply softplus to `delta`.

    Returns:
        `torch.Tensor` of shape `(N, d_inner, L)`.
    """
    use_kernel = _kernel_selective_scan is not None and u.is_cuda
    _log_backend_once("selective_scan", "mamba-ssm CUDA" if use_kernel else "torch", u.device.type)
    if use_kernel:
        return _kernel_selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    return selective_scan_torch(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal depthwise convolution followed by SiLU (`causal_conv1d.causal_conv1d_fn(..., activation="silu")`).

    Output `t` of a channel sees inputs `t - width + 1 .. t` of that channel only (zero left padding). Uses the
    causal-conv1d CUDA kernel when it is importable, `x` is on CUDA and `2 <= width <= 4`.

    Args:
        x (`torch.Tensor` of shape `(N, channels, L)`): input.
        weight (`torch.Tensor` of shape `(channels, width)`): one filter per channel.
        bias (`torch.Tensor` of shape `(channels,)`, *optional*).

    Returns:
        `torch.Tensor` of shape `(N, channels, L)`.
    """
    use_kernel = _kernel_causal_conv1d is not None and x.is_cuda and 2 <= weight.shape[-1] <= 4
    _log_backend_once("causal_conv1d", "causal-conv1d CUDA" if use_kernel else "torch", x.device.type)
    if use_kernel:
        return _kernel_causal_conv1d(x.contiguous(), weight, bias, activation="silu")
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1, groups=x.shape[1])
    return F.silu(out[..., : x.shape[-1]])
