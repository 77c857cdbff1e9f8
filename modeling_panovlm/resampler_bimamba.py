"""Bidirectional Mamba resampler (PanoLLaVA's `BidirectionalMambaResampler`).

Each view's tokens, in the vision tower's raster order, form one sequence; every block runs one Mamba-1 mixer over
it left to right and an independent one right to left and averages the two:

    x: (N, S, input_dim) -> input_proj -> depth x BiMambaBlock -> final_norm -> output_proj -> (N, S, latent_dimension)

`MambaMixer` has exactly the parameters (names and shapes) of `mamba_ssm.modules.mamba_simple.Mamba`, so PanoLLaVA
checkpoints and mamba-ssm state dicts load without renaming. On CUDA it uses the mamba-ssm / causal-conv1d kernels
when they are installed; elsewhere a pure-PyTorch scan (see `selective_scan`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from configuration_panovlm.configuration_panovlm import PanoVLMResamplerConfig

from .selective_scan import causal_conv1d, selective_scan


class MambaMixer(nn.Module):
    """Mamba-1 mixer with mamba-ssm's `Mamba` parameters (`bias=False`, `conv_bias=True`, SiLU).

    `d_model = config.hidden_dim`, `d_inner = config.d_inner`. For `hidden_states` `x`:

        x_in, z = in_proj(x).chunk(2)                                   (N, d_inner, L) each
        x_in = silu(causal depthwise conv1d(x_in))
        dt, B, C = x_proj(x_in).split(dt_rank, d_state, d_state)
        y = selective_scan(x_in, dt_proj.weight @ dt, -exp(A_log), B, C, D, z=z, delta_bias=dt_proj.bias)
        out = out_proj(y)

    Args:
        config (`PanoVLMResamplerConfig`): uses `hidden_dim`, `d_inner`, `d_state`, `d_conv`, `dt_rank`, `dt_min`,
            `dt_max` and `dt_init_floor`.
    """

    # Parameters the optimizer does not decay (PanoVLMTrainer reads this).
    no_weight_decay = ("A_log", "D")

    def __init__(self, config: PanoVLMResamplerConfig):
        super().__init__()
        self.d_inner = config.d_inner
        self.d_state = config.d_state
        self.dt_rank = config.dt_rank
        self.dt_min = config.dt_min
        self.dt_max = config.dt_max
        self.dt_init_floor = config.dt_init_floor
        self.in_proj = nn.Linear(config.hidden_dim, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, config.d_conv, groups=self.d_inner, padding=config.d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # fp32 whatever the default dtype: the state matrix and skip term lose too much in half precision
        # (mamba-ssm keeps them fp32 as well); `_keep_in_fp32_modules_strict` keeps them so when loading.
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.d_inner, dtype=torch.float32))
        self.out_proj = nn.Linear(self.d_inner, config.hidden_dim, bias=False)
        self.init_weights_()

    def init_weights_(self, std: float | None = None) -> None:
        """(Re)initialise the tensors whose mamba-ssm initialisation is not the generic Linear/Conv one.

        * `A_log[d] = log(1, ..., d_state)` (S4D-real) and `D = 1`;
        * `dt_proj.weight ~ U(-dt_rank**-0.5, dt_rank**-0.5)`;
        * `dt_proj.bias = softplus^-1(dt)`, `dt = exp(U(log dt_min, log dt_max)).clamp(min=dt_init_floor)`, so the
          initial step sizes are log-uniform in `[dt_min, dt_max]`;
        * `conv1d.weight`: PyTorch's Conv1d default, `U(-d_conv**-0.5, d_conv**-0.5)`, which mamba-ssm keeps; the
          generic normal(0, 0.02) draw would make the 4-tap depthwise filters ~14x smaller.

        Uses `transformers.initialization`, so tensors loaded from a checkpoint (`_is_hf_initialized`) are left as
        they are. `std` (the generic initializer range) is accepted for `PanoVLMPreTrainedModel._init_weights`; none
        of these schemes depends on it.
        """
        init.kaiming_uniform_(self.conv1d.weight, a=math.sqrt(5))
        s4d_real = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        init.copy_(self.A_log, torch.log(s4d_real).expand_as(self.A_log))
        init.ones_(self.D)
        bound = self.dt_rank**-0.5
        init.uniform_(self.dt_proj.weight, -bound, bound)
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(
            torch.rand(self.d_inner, device=self.dt_proj.bias.device) * (log_max - log_min) + log_min
        ).clamp(min=self.dt_init_floor)
        # softplus^-1(dt) = log(exp(dt) - 1), written to stay accurate for small dt.
        init.copy_(self.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, L, hidden_dim) -> (N, L, hidden_dim); causal: output `t` depends on inputs `0..t` only."""
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
        x = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias)
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # The step bias goes into the scan (delta_bias), as in mamba-ssm, so softplus sees it at full precision.
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        y = selective_scan(
            x,
            dt,
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2),
            C.transpose(1, 2),
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )
        return self.out_proj(y.transpose(1, 2))


class BiMambaBlock(GradientCheckpointingLayer):
    """Residual block with a left-to-right and an independent right-to-left Mamba mixer, averaged:

        u = norm(x) if norm_first else x
        y = x + dropout(0.5 * (forward_block(u) + flip(backward_block(flip(u)))))      (flip along the tokens)
        return y if norm_first else norm(y)

    Args:
        config (`PanoVLMResamplerConfig`): uses `hidden_dim`, `layer_norm_eps`, `dropout`, `norm_first` and the
            `MambaMixer` fields.
    """

    def __init__(self, config: PanoVLMResamplerConfig):
        super().__init__()
        self.norm_first = config.norm_first
        self.norm = nn.LayerNorm(config.hidden_dim, eps=config.layer_norm_eps)
        self.forward_block = MambaMixer(config)
        self.backward_block = MambaMixer(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, S, hidden_dim) -> (N, S, hidden_dim)."""
        mixer_input = self.norm(hidden_states) if self.norm_first else hidden_states
        forward_out = self.forward_block(mixer_input)
        backward_out = self.backward_block(mixer_input.flip(1)).flip(1)
        hidden_states = hidden_states + self.dropout(0.5 * (forward_out + backward_out))
        return hidden_states if self.norm_first else self.norm(hidden_states)


class BiMambaResampler(nn.Module):
    """Token-count-preserving resampler: each view's tokens are one sequence for `depth` bidirectional Mamba blocks.

    Args:
        config (`PanoVLMResamplerConfig`): `hidden_dim`, `depth`, `latent_dimension`, `layer_norm_eps` and the
            block fields.
        input_dim (`int`): width of the incoming vision tokens.
    """

    _no_split_modules = ["BiMambaBlock"]
    _keep_in_fp32_modules_strict = ["A_log", "D"]

    def __init__(self, config: PanoVLMResamplerConfig, input_dim: int):
        super().__init__()
        self.input_proj = nn.Linear(input_dim, config.hidden_dim)
        self.blocks = nn.ModuleList([BiMambaBlock(config) for _ in range(config.depth)])
        self.final_norm = nn.LayerNorm(config.hidden_dim, eps=config.layer_norm_eps)
        self.output_proj = nn.Linear(config.hidden_dim, config.latent_dimension)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, S, input_dim) -> (N, S, latent_dimension); `N` = batch x views, every view independent."""
        hidden_states = self.input_proj(hidden_states)
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return self.output_proj(self.final_norm(hidden_states))
