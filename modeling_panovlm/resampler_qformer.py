"""Q-Former resampler (BLIP-2 style, without BERT): `num_query_tokens` learned queries read each view's tokens.

`(N, S, input_dim) -> (N, num_query_tokens, latent_dimension)` with `N` = batch x views. Each layer runs
self-attention among the queries, then cross-attention from the queries to the vision tokens, then a feed-forward
block. The vision tokens are projected to `hidden_dim` once; a final LayerNorm and Linear map the queries to
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


class QFormerLayer(GradientCheckpointingLayer):
    """One Q-Former layer of three pre-norm residual blocks: bidirectional self-attention among the queries,
    cross-attention from the queries to the (normalised) context, feed-forward of width 4 x hidden_dim."""

    def __init__(self, config: PanoVLMResamplerConfig):
        super().__init__()
        hidden, eps, heads = config.hidden_dim, config.layer_norm_eps, config.num_attention_heads
        self.self_attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.self_attn = ResamplerAttention(config, hidden, heads, hidden // heads, config.dropout)
        self.cross_attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.context_norm = nn.LayerNorm(hidden, eps=eps)
        self.cross_attn = ResamplerAttention(config, hidden, heads, hidden // heads, config.dropout)
        self.ff_norm = nn.LayerNorm(hidden, eps=eps)
        self.ff = ResamplerFeedForward(hidden, 4 * hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """queries: (N, Q, hidden_dim), context: (N, S, hidden_dim) -> (N, Q, hidden_dim)."""
        normed = self.self_attn_norm(queries)
        queries = queries + self.dropout(self.self_attn(normed, normed))
        queries = queries + self.dropout(self.cross_attn(self.cross_attn_norm(queries), self.context_norm(context)))
        return queries + self.dropout(self.ff(self.ff_norm(queries)))


class QFormerResampler(nn.Module):
    """Compact Q-Former: `num_query_tokens` learned queries, `num_hidden_layers` `QFormerLayer`s with
    `num_attention_heads` heads. Unlike PanoLLaVA's BertModel-based Q-Former the query self-attention is
    bidirectional and the queries carry no position or token-type embeddings.

    Args:
        config (`PanoVLMResamplerConfig`): the resampler config.
        input_dim (`int`): width of the incoming vision tokens.

    Shapes: `(N, S, input_dim) -> (N, num_query_tokens, latent_dimension)`.
    """

    # Parameters the optimizer does not decay (PanoVLMTrainer reads this).
    no_weight_decay = ("query_tokens",)

    _no_split_modules = ["QFormerLayer"]

    def __init__(self, config: PanoVLMResamplerConfig, input_dim: int):
        super().__init__()
        self.input_proj = nn.Linear(input_dim, config.hidden_dim)
        self.query_tokens = nn.Parameter(torch.empty(config.num_query_tokens, config.hidden_dim))
        self.layers = nn.ModuleList(QFormerLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_dim, eps=config.layer_norm_eps)
        self.output_proj = nn.Linear(config.hidden_dim, config.latent_dimension)
        self.init_weights_(DEFAULT_QUERY_STD)

    def init_weights_(self, std: float) -> None:
        """Draw the query tokens from N(0, std), unless they were loaded from a checkpoint."""
        init.normal_(self.query_tokens, std=std)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (N, S, input_dim) -> (N, num_query_tokens, latent_dimension)."""
        context = self.input_proj(hidden_states)
        queries = self.query_tokens.expand(hidden_states.shape[0], -1, -1)
        for layer in self.layers:
            queries = layer(queries, context)
        return self.output_proj(self.norm(queries))


__all__ = ["QFormerLayer", "QFormerResampler"]
