"""BiMamba resampler and the selective scan: numerics against independent references, parameter-name contract,
direction of the two scans, initialisation, gradient checkpointing, and (on a CUDA machine with mamba-ssm) parity
with `mamba_ssm.Mamba`."""

import importlib
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import initialization as init

from configuration_panovlm.configuration_panovlm import PanoVLMResamplerConfig
from modeling_panovlm.resampler_bimamba import (
    BiMambaBlock,
    BiMambaResampler,
    MambaMixer,
)
from modeling_panovlm.selective_scan import (
    selective_scan,
    selective_scan_reference,
    selective_scan_torch,
)


# The module itself (a package `__init__` may re-export the function under the same name), for monkeypatching.
scan_module = importlib.import_module("modeling_panovlm.selective_scan")


# mamba-ssm's own kernel-vs-reference tolerances.
FP32_TOL = {"rtol": 6e-4, "atol": 2e-3}
BF16_TOL = {"rtol": 3e-2, "atol": 5e-2}

requires_cuda_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() or scan_module._kernel_selective_scan is None,
    reason="needs a CUDA device and an importable mamba-ssm",
)


def small_config(**overrides) -> PanoVLMResamplerConfig:
    kwargs = {"resampler_type": "bimamba", "hidden_dim": 32, "depth": 2, "latent_dimension": 24, "d_state": 8}
    kwargs.update({"expand": 1.75, "dropout": 0.0, **overrides})
    return PanoVLMResamplerConfig(**kwargs)


def scan_inputs(batch: int, channels: int, d_state: int, length: int, with_extras: bool) -> dict[str, torch.Tensor]:
    """Random inputs in mamba-ssm's test ranges, all requiring grad."""
    inputs = {
        "u": torch.randn(batch, channels, length),
        "delta": 0.5 * torch.rand(batch, channels, length),
        "A": -0.5 * torch.rand(channels, d_state),
        "B": torch.randn(batch, d_state, length),
        "C": torch.randn(batch, d_state, length),
        "D": torch.randn(channels),
    }
    if with_extras:
        inputs["z"] = torch.randn(batch, channels, length)
        inputs["delta_bias"] = 0.5 * torch.rand(channels)
    return {name: value.requires_grad_() for name, value in inputs.items()}


def output_and_grads(fn, inputs: dict[str, torch.Tensor], grad_out: torch.Tensor):
    out = fn(**inputs)
    return out, dict(zip(inputs, torch.autograd.grad(out, list(inputs.values()), grad_out)))


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    """assert_close after dividing both by `max |expected|`, so that `atol` is relative to the tensor's scale."""
    scale = expected.abs().max().clamp(min=1e-6)
    torch.testing.assert_close(actual.float() / scale, expected.float() / scale, rtol=rtol, atol=atol)


@pytest.mark.parametrize("length", [1, 7, 64])
@pytest.mark.parametrize("d_state", [4, 16])
@pytest.mark.parametrize("with_extras", [True, False])
@pytest.mark.parametrize("small_chunks", [False, True])
def test_fast_scan_matches_reference(length, d_state, with_extras, small_chunks, monkeypatch):
    torch.manual_seed(0)
    batch, channels = 2, 6
    if small_chunks:
        # Chunks of ceil(sqrt(L)) steps (L=7: 3+3+1, L=64: 8x8), to exercise the state hand-over both ways.
        monkeypatch.setattr(scan_module, "_CHUNK_NUMEL", 1)
    inputs = scan_inputs(batch, channels, d_state, length, with_extras)
    grad_out = torch.randn(batch, channels, length)
    out, grads = output_and_grads(selective_scan_torch, inputs, grad_out)
    expected_out, expected_grads = output_and_grads(selective_scan_reference, inputs, grad_out)
    torch.testing.assert_close(out, expected_out, **FP32_TOL)
    for name in inputs:
        torch.testing.assert_close(grads[name], expected_grads[name], **FP32_TOL, msg=f"grad of {name}")


def test_scan_matches_hand_computed_recurrence():
    # d_inner = 1, d_state = 2, L = 3, no softplus, no gate.
    u = torch.tensor([[[1.0, 2.0, -1.0]]])
    delta = torch.tensor([[[0.5, 1.0, 0.25]]])
    A = torch.tensor([[-1.0, -2.0]])
    B = torch.tensor([[[1.0, 0.0, 2.0], [0.5, 1.0, -1.0]]])
    C = torch.tensor([[[1.0, 1.0, 1.0], [2.0, 0.0, 1.0]]])
    D = torch.tensor([0.5])
    # t=0: h = dt*B*u = (0.5, 0.25)                                   y = 0.5 + 2*0.25 + 0.5*1
    # t=1: h = (0.5 e^-1, 0.25 e^-2 + 2)                               y = 0.5 e^-1 + 0.5*2
    # t=2: h = (0.5 e^-1.25 - 0.5, (0.25 e^-2 + 2) e^-0.5 + 0.25)     y = h1 + h2 + 0.5*(-1)
    e = math.exp
    h2 = (0.5 * e(-1.25) - 0.5, (0.25 * e(-2) + 2) * e(-0.5) + 0.25)
    expected = torch.tensor([[[1.5, 0.5 * e(-1) + 1.0, h2[0] + h2[1] - 0.5]]])
    for fn in (selective_scan_torch, selective_scan_reference, selective_scan):
        torch.testing.assert_close(fn(u, delta, A, B, C, D, delta_softplus=False), expected, rtol=1e-6, atol=1e-6)


def test_backend_is_logged_once(caplog):
    scan_module._log_backend_once.cache_clear()
    inputs = {k: v.detach() for k, v in scan_inputs(1, 2, 4, 5, with_extras=False).items()}
    with caplog.at_level("INFO", logger=scan_module.__name__):
        for _ in range(3):
            selective_scan(**inputs)
    assert [r.getMessage() for r in caplog.records] == ["selective_scan uses the torch implementation on cpu."]


def mamba_by_hand(mixer: MambaMixer, x: torch.Tensor) -> torch.Tensor:
    """mamba-ssm's `Mamba.forward` written out step by step from its formulas, using `mixer`'s parameters."""
    d_inner, d_state, dt_rank = mixer.d_inner, mixer.d_state, mixer.dt_rank
    projected = x @ mixer.in_proj.weight.T
    x_in, gate = projected[..., :d_inner], projected[..., d_inner:]
    taps = mixer.conv1d.weight[:, 0, :]
    width, length = taps.shape[1], x.shape[1]
    conv = []
    for t in range(length):
        acc = mixer.conv1d.bias.expand(x.shape[0], -1)
        for j in range(width):
            source = t - (width - 1) + j
            if source >= 0:
                acc = acc + taps[:, j] * x_in[:, source]
        conv.append(acc)
    x_in = F.silu(torch.stack(conv, dim=1))
    x_dbl = x_in @ mixer.x_proj.weight.T
    dt_low, B, C = x_dbl[..., :dt_rank], x_dbl[..., dt_rank : dt_rank + d_state], x_dbl[..., dt_rank + d_state :]
    dt = F.softplus(dt_low @ mixer.dt_proj.weight.T + mixer.dt_proj.bias)
    A = -torch.exp(mixer.A_log)
    h = x.new_zeros(x.shape[0], d_inner, d_state)
    outputs = []
    for t in range(length):
        h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * B[:, t, None, :] * x_in[:, t, :, None]
        y = (h * C[:, t, None, :]).sum(-1) + mixer.D * x_in[:, t]
        outputs.append(y * F.silu(gate[:, t]))
    return torch.stack(outputs, dim=1) @ mixer.out_proj.weight.T


@pytest.mark.parametrize("length", [1, 9])
def test_mixer_matches_hand_written_mamba(length):
    torch.manual_seed(0)
    mixer = MambaMixer(small_config())
    x = torch.randn(3, length, 32, requires_grad=True)
    grad_out = torch.randn(3, length, 32)
    tensors = [x, *mixer.parameters()]
    out = mixer(x)
    grads = torch.autograd.grad(out, tensors, grad_out)
    expected = mamba_by_hand(mixer, x)
    expected_grads = torch.autograd.grad(expected, tensors, grad_out)
    torch.testing.assert_close(out, expected, **FP32_TOL)
    for (name, _), grad, expected_grad in zip([("input", x), *mixer.named_parameters()], grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, **FP32_TOL, msg=f"grad of {name}")


def test_state_dict_names_and_shapes():
    config = small_config()
    hidden, d_inner, d_state, rank = 32, int(1.75 * 32), 8, math.ceil(32 / 16)
    assert config.d_inner == d_inner == 56 and config.dt_rank == rank
    resampler = BiMambaResampler(config, input_dim=40)
    mixer_shapes = {
        "in_proj.weight": (2 * d_inner, hidden),
        "conv1d.weight": (d_inner, 1, config.d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (hidden, d_inner),
    }
    expected = {
        "input_proj.weight": (hidden, 40),
        "input_proj.bias": (hidden,),
        "final_norm.weight": (hidden,),
        "final_norm.bias": (hidden,),
        "output_proj.weight": (24, hidden),
        "output_proj.bias": (24,),
    }
    for i in range(2):
        expected[f"blocks.{i}.norm.weight"] = expected[f"blocks.{i}.norm.bias"] = (hidden,)
        for direction in ("forward_block", "backward_block"):
            for name, shape in mixer_shapes.items():
                expected[f"blocks.{i}.{direction}.{name}"] = shape
    assert {name: tuple(value.shape) for name, value in resampler.state_dict().items()} == expected
    assert resampler(torch.randn(3, 10, 40)).shape == (3, 10, 24)


def test_forward_mixer_is_causal():
    torch.manual_seed(0)
    mixer = MambaMixer(small_config())
    length = 8
    for t in range(length):
        x = torch.randn(2, length, 32, requires_grad=True)
        (grad,) = torch.autograd.grad(mixer(x)[:, t].sum(), x)
        assert torch.equal(grad[:, t + 1 :], torch.zeros_like(grad[:, t + 1 :])), f"position {t} sees the future"
        assert grad[:, t].abs().sum() > 0


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_block_directions(direction):
    """With one mixer silenced, output `t` depends only on inputs `<= t` (forward) or `>= t` (backward)."""
    torch.manual_seed(0)
    block = BiMambaBlock(small_config()).eval()
    silenced = block.backward_block if direction == "forward" else block.forward_block
    with torch.no_grad():
        silenced.out_proj.weight.zero_()
    length = 8
    for t in range(length):
        x = torch.randn(2, length, 32, requires_grad=True)
        (grad,) = torch.autograd.grad(block(x)[:, t].sum(), x)
        unseen, seen = (grad[:, t + 1 :], grad[:, :t]) if direction == "forward" else (grad[:, :t], grad[:, t + 1 :])
        assert torch.equal(unseen, torch.zeros_like(unseen))
        if seen.shape[1]:
            assert seen.abs().sum() > 0


def test_block_with_shared_weights_commutes_with_reversal():
    torch.manual_seed(0)
    block = BiMambaBlock(small_config()).eval()
    block.backward_block.load_state_dict(block.forward_block.state_dict())
    x = torch.randn(2, 11, 32)
    torch.testing.assert_close(block(x.flip(1)), block(x).flip(1), **FP32_TOL)


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_formula(norm_first):
    torch.manual_seed(0)
    block = BiMambaBlock(small_config(norm_first=norm_first)).eval()
    x = torch.randn(2, 9, 32)
    u = block.norm(x) if norm_first else x
    mixed = x + 0.5 * (block.forward_block(u) + block.backward_block(u.flip(1)).flip(1))
    torch.testing.assert_close(block(x), mixed if norm_first else block.norm(mixed))


def test_post_norm_resampler_trains():
    torch.manual_seed(0)
    resampler = BiMambaResampler(small_config(norm_first=False, dropout=0.1), input_dim=40).train()
    out = resampler(torch.randn(3, 10, 40))
    out.square().mean().backward()
    assert out.shape == (3, 10, 24)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in resampler.parameters())


def test_bf16_scan_math_is_float32():
    torch.manual_seed(0)
    inputs = {k: v.detach().bfloat16() for k, v in scan_inputs(2, 6, 8, 33, with_extras=True).items()}
    inputs["A"], inputs["D"], inputs["delta_bias"] = (inputs[k].float() for k in ("A", "D", "delta_bias"))
    out = selective_scan_torch(**inputs)
    assert out.dtype == torch.bfloat16
    # Same rounded inputs in float32: identical bits once the result is rounded, so nothing ran in bf16.
    as_float = {k: v.float() for k, v in inputs.items()}
    assert torch.equal(out, selective_scan_torch(**as_float).bfloat16())
    torch.testing.assert_close(out.float(), selective_scan_reference(**as_float), **BF16_TOL)


def test_autocast_does_not_lower_the_scan():
    torch.manual_seed(0)
    inputs = scan_inputs(2, 6, 8, 33, with_extras=True)
    grad_out = torch.randn(2, 6, 33)
    out, grads = output_and_grads(selective_scan_torch, inputs, grad_out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_out, autocast_grads = output_and_grads(selective_scan_torch, inputs, grad_out)
    assert autocast_out.dtype == torch.float32 and torch.equal(autocast_out, out)
    for name in inputs:
        assert torch.equal(autocast_grads[name], grads[name]), name


def test_bf16_resampler_runs():
    torch.manual_seed(0)
    resampler = BiMambaResampler(small_config(), input_dim=40).eval()
    x = torch.randn(2, 12, 40)
    expected = resampler(x)
    out = resampler.to(torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert_close_to_scale(out, expected, **BF16_TOL)


def test_gradient_checkpointing_matches():
    config = small_config(dropout=0.1)
    torch.manual_seed(0)
    resampler = BiMambaResampler(config, input_dim=40).train()
    x = torch.randn(2, 10, 40)
    calls = []
    resampler.blocks[0].forward_block.register_forward_hook(lambda *_: calls.append(1))

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        for block in resampler.blocks:
            block.gradient_checkpointing = checkpointing
            block._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        x_in = x.clone().requires_grad_()
        torch.manual_seed(1)  # same dropout masks in both runs (checkpoint replays the RNG state)
        resampler(x_in).square().sum().backward()
        result = [x_in.grad, *(p.grad.clone() for p in resampler.parameters())]
        resampler.zero_grad()
        return result

    plain = grads(False)
    assert len(calls) == 1
    checkpointed = grads(True)
    assert len(calls) == 3, "the checkpointed block was not recomputed in backward"
    for grad, expected in zip(checkpointed, plain):
        torch.testing.assert_close(grad, expected)


def test_init_weights_follows_mamba_ssm():
    torch.manual_seed(0)
    config = small_config(hidden_dim=256, d_state=16)
    mixer = MambaMixer(config)
    # What PanoVLMPreTrainedModel does first: the generic transformers init.
    for module in mixer.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
    in_proj_before = mixer.in_proj.weight.clone()
    mixer.init_weights_(0.02)

    torch.testing.assert_close(mixer.A_log, torch.log(torch.arange(1.0, 17.0)).expand(config.d_inner, -1))
    assert torch.equal(mixer.D, torch.ones(config.d_inner))
    bound = config.dt_rank**-0.5
    assert mixer.dt_proj.weight.abs().max() <= bound and mixer.dt_proj.weight.abs().max() > 0.8 * bound
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= config.dt_min * (1 - 1e-4) and dt.max() <= config.dt_max * (1 + 1e-4)
    assert dt.min() < 3 * config.dt_min and dt.max() > config.dt_max / 3  # log-uniform over the whole range
    assert mixer.conv1d.weight.abs().max() <= config.d_conv**-0.5
    assert mixer.conv1d.weight.std() > 0.1  # not the normal(0, 0.02) draw
    assert torch.equal(mixer.in_proj.weight, in_proj_before)


def test_init_weights_keeps_loaded_tensors():
    torch.manual_seed(0)
    mixer = MambaMixer(small_config())
    loaded = {"A_log": mixer.A_log, "dt_proj.bias": mixer.dt_proj.bias, "conv1d.weight": mixer.conv1d.weight}
    with torch.no_grad():
        for tensor in loaded.values():
            tensor.fill_(0.25)
            tensor._is_hf_initialized = True
        mixer.D.fill_(3.0)
    mixer.init_weights_(0.02)
    for name, tensor in loaded.items():
        assert torch.all(tensor == 0.25), f"{name} was re-initialised"
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))


def test_standalone_resampler_is_initialised():
    resampler = BiMambaResampler(small_config(), input_dim=40)
    mixer = resampler.blocks[1].backward_block
    torch.testing.assert_close(mixer.A_log[3], torch.log(torch.arange(1.0, 9.0)))
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))


@requires_cuda_kernels
@pytest.mark.parametrize("length", [1, 7, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixer_matches_mamba_ssm_on_cuda(length, dtype, monkeypatch):
    """Kernel path and PyTorch path on CUDA against `mamba_ssm.Mamba` with the same state dict."""
    from mamba_ssm import Mamba

    torch.manual_seed(0)
    d_model, d_state = 64, 16
    reference = Mamba(d_model=d_model, d_state=d_state, d_conv=4, expand=2).cuda()
    config = PanoVLMResamplerConfig(resampler_type="bimamba", hidden_dim=d_model, d_state=d_state, d_conv=4, expand=2)
    ours = MambaMixer(config).cuda()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, length, d_model, device="cuda")
    grad_out = torch.randn(2, length, d_model, device="cuda")
    tol = FP32_TOL if dtype is torch.float32 else BF16_TOL

    def run(module: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_in = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
            out = module(x_in)
        names, params = zip(*module.named_parameters())
        grads = torch.autograd.grad(out, [x_in, *params], grad_out.to(out.dtype))
        return out.float(), dict(zip(("input", *names), grads))

    expected_out, expected_grads = run(reference)
    kernel_run = run(ours)
    monkeypatch.setattr(scan_module, "_kernel_selective_scan", None)
    monkeypatch.setattr(scan_module, "_kernel_causal_conv1d", None)
    torch_run = run(ours)
    for out, grads in (kernel_run, torch_run):
        torch.testing.assert_close(out, expected_out, **tol)
        for name, expected_grad in expected_grads.items():
            assert_close_to_scale(grads[name], expected_grad, **tol)
