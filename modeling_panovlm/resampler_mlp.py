"""MLP resampler: a token-wise MLP that keeps every vision token of a view (PanoLLaVA's `mlp`)."""

from __future__ import annotations

import torch
from torch import nn

from configuration_panovlm.configuration_panovlm import PanoVLMResamplerConfig


class MLPResampler(nn.Module):
    """Token-wise MLP: `depth - 1` hidden layers [Linear -> LayerNorm (if `use_ln`) -> GELU -> Dropout], then a
    Linear to `latent_dimension`."""

    def __init__(self, config: PanoVLMResamplerConfig, input_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for _ in range(config.depth - 1):
            layers.append(nn.Linear(width, config.hidden_dim))
            if config.use_ln:
                layers.append(nn.LayerNorm(config.hidden_dim, eps=config.layer_norm_eps))
            layers += [nn.GELU(), nn.Dropout(config.dropout)]
            width = config.hidden_dim
        layers.append(nn.Linear(width, config.latent_dimension))
        self.mlp = nn.Sequential(*layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, S, input_dim) -> (N, S, latent_dimension)."""
        return self.mlp(hidden_states)


__all__ = ["MLPResampler"]
