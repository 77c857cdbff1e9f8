"""Perceiver resampler (Flamingo): `num_latents` learned latents read each view's vision tokens.

`(N, S, input_dim) -> (N, num_latents, latent_dimension)` with `N` = batch x views (every view independent). The
latents attend to the concatenation of the vision tokens and themselves. The vision tokens are projected to
`hidden_dim` once; every layer works at that width and a final LayerNorm and Linear map the latents to
`latent_dimension`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from configuration_panovlm.configuration_panovlm import PanoVLMResamplerConfig

from .resampler_attention import (
    DEFAULT_QUERY_STD,
    ResamplerAttention,
    ResamplerFeedForward,
)


class PerceiverLayer(GradientCheckpointingLayer):
    """One Flamingo perceiver layer: the normalised latents attend to concat(normalised context, normalised
    latents), then a pre-norm feed-forward; both residual. Including the latents among the keys lets each latent
    keep or exchange information with the others in the same attention call."""

    def __init__(self, config: PanoVLMResamplerConfig):
        super().__init__()
        hidden, eps = config.hidden_dim, config.layer_norm_eps
        self.context_norm = nn.LayerNorm(hidden, eps=eps)
        self.latents_norm = nn.LayerNorm(hidden, eps=eps)
        self.attn = ResamplerAttention(config, hidden, config.heads, config.dim_head, config.dropout)
        self.ff_norm = nn.LayerNorm(hidden, eps=eps)
        self.ff = ResamplerFeedForward(hidden, config.ff_mult * hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """latents: (N, Q, hidden_dim), context: (N, S, hidden_dim) -> (N, Q, hidden_dim)."""
        normed_latents = self.latents_norm(latents)
        keys = torch.cat([self.context_norm(context), normed_latents], dim=1)
        latents = latents + self.dropout(self.attn(normed_latents, keys))
        return latents + self.dropout(self.ff(self.ff_norm(latents)))


class PerceiverResampler(nn.Module):
    """Flamingo-style perceiver resampler: `num_latents` learned latents, `depth` `PerceiverLayer`s with `heads`
    heads of width `dim_head` and a feed-forward of `ff_mult * hidden_dim`.

    Args:
        config (`PanoVLMResamplerConfig`): the resampler config.
        input_dim (`int`): width of the incoming vision tokens.

    Shapes: `(N, S, input_dim) -> (N, num_latents, latent_dimension)`.
    """

    # Parameters the optimizer does not decay (PanoVLMTrainer reads this).
    no_weight_decay = ("latents",)

    _no_split_modules = ["PerceiverLayer"]

    def __init__(self, config: PanoVLMResamplerConfig, input_dim: int):
        super().__init__()
        self.input_proj = nn.Linear(input_dim, config.hidden_dim)
        self.latents = nn.Parameter(torch.empty(config.num_latents, config.hidden_dim))
        self.layers = nn.ModuleList(PerceiverLayer(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.hidden_dim, eps=config.layer_norm_eps)
        self.output_proj = nn.Linear(config.hidden_dim, config.latent_dimension)
        self.init_weights_(DEFAULT_QUERY_STD)

    def init_weights_(self, std: float) -> None:
        """Draw the latents from N(0, std), unless they were loaded from a checkpoint."""
        init.normal_(self.latents, std=std)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (N, S, input_dim) -> (N, num_latents, latent_dimension)."""
        context = self.input_proj(hidden_states)
        latents = self.latents.expand(hidden_states.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, context)
        return self.output_proj(self.norm(latents))


__all__ = ["PerceiverLayer", "PerceiverResampler"]
