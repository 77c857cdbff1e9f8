"""Attention resamplers: a fixed set of learned queries reads each view's vision tokens.

Both map `(N, S, input_dim) -> (N, Q, latent_dimension)` with `N` = batch x views (every view independent) and `Q`
learned queries, whatever `S` is:

* `PerceiverResampler` (Flamingo): the latents attend to the concatenation of the vision tokens and themselves.
* `QFormerResampler` (BLIP-2 style, without BERT): each layer runs self-attention among the queries, then
  cross-attention from the queries to the vision tokens, then a feed-forward block.

Neither adds positional information, so the output is invariant to the order of a view's input tokens; the
panoramic positional encoding is added after the resampler. The vision tokens are projected to `hidden_dim` once;
every block works at that width and a final LayerNorm and Linear map the queries to `latent_dimension`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from configuration_panovlm.configuration_panovlm import PanoVLMResamplerConfig


# Standalone default for the learned queries; `PanoVLMPreTrainedModel` re-initialises them with
# `config.initializer_range` through `init_weights_`.
_DEFAULT_QUERY_STD = 0.02


class ResamplerAttention(nn.Module):
    """Multi-head attention of `queries` over `context`, with no mask and no positions.

    Args:
        hidden_dim (`int`): width of `queries`, `context` and the output.
        num_heads (`int`): attention heads.
        head_dim (`int`): width per head; the inner width is `num_heads * head_dim`.
        dropout (`float`): dropout on the attention probabilities (training only).
    """

    def __init__(self, hidden_dim: int, num_heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        inner_dim = num_heads * head_dim
        # No bias on keys: it adds the same score to every key of a query and cancels in the softmax, so it would
        # be a parameter without gradient. Queries and values follow suit, as in Flamingo.
        self.q_proj = nn.Linear(hidden_dim, inner_dim, bias=False)
        self.k_proj = nn.Linear(hidden_dim, inner_dim, bias=False)
        self.v_proj = nn.Linear(hidden_dim, inner_dim, bias=False)
        self.o_proj = nn.Linear(inner_dim, hidden_dim)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        """(N, L, heads * head_dim) -> (N, heads, L, head_dim)."""
        return states.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """queries: (N, Q, hidden_dim), context: (N, L, hidden_dim) -> (N, Q, hidden_dim)."""
        attn = F.scaled_dot_product_attention(
            self._split_heads(self.q_proj(queries)),
            self._split_heads(self.k_proj(context)),
            self._split_heads(self.v_proj(context)),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.o_proj(attn.transpose(1, 2).flatten(2))


class ResamplerFeedForward(nn.Module):
    """Linear -> GELU -> Linear: (N, L, hidden_dim) -> (N, L, hidden_dim) through `intermediate_dim`."""

    def __init__(self, hidden_dim: int, intermediate_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, intermediate_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(intermediate_dim, hidden_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class PerceiverLayer(GradientCheckpointingLayer):
    """One Flamingo perceiver layer: the normalised latents attend to concat(normalised context, normalised
    latents), then a pre-norm feed-forward; both residual. Including the latents among the keys lets each latent
    keep or exchange information with the others in the same attention call."""

    def __init__(self, config: PanoVLMResamplerConfig):
        super().__init__()
        hidden, eps = config.hidden_dim, config.layer_norm_eps
        self.context_norm = nn.LayerNorm(hidden, eps=eps)
        self.latents_norm = nn.LayerNorm(hidden, eps=eps)
        self.attn = ResamplerAttention(hidden, config.heads, config.dim_head, config.dropout)
        self.ff_norm = nn.LayerNorm(hidden, eps=eps)
        self.ff = ResamplerFeedForward(hidden, config.ff_mult * hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """latents: (N, Q, hidden_dim), context: (N, S, hidden_dim) -> (N, Q, hidden_dim)."""
        normed_latents = self.latents_norm(latents)
        keys = torch.cat([self.context_norm(context), normed_latents], dim=1)
        latents = latents + self.dropout(self.attn(normed_latents, keys))
        return latents + self.dropout(self.ff(self.ff_norm(latents)))


class QFormerLayer(GradientCheckpointingLayer):
    """One Q-Former layer of three pre-norm residual blocks: bidirectional self-attention among the queries,
    cross-attention from the queries to the (normalised) context, feed-forward of width 4 x hidden_dim."""

    def __init__(self, config: PanoVLMResamplerConfig):
        super().__init__()
        hidden, eps, heads = config.hidden_dim, config.layer_norm_eps, config.num_attention_heads
        self.self_attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.self_attn = ResamplerAttention(hidden, heads, hidden // heads, config.dropout)
        self.cross_attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.context_norm = nn.LayerNorm(hidden, eps=eps)
        self.cross_attn = ResamplerAttention(hidden, heads, hidden // heads, config.dropout)
        self.ff_norm = nn.LayerNorm(hidden, eps=eps)
        self.ff = ResamplerFeedForward(hidden, 4 * hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """queries: (N, Q, hidden_dim), context: (N, S, hidden_dim) -> (N, Q, hidden_dim)."""
        normed = self.self_attn_norm(queries)
        queries = queries + self.dropout(self.self_attn(normed, normed))
        queries = queries + self.dropout(self.cross_attn(self.cross_attn_norm(queries), self.context_norm(context)))
        return queries + self.dropout(self.ff(self.ff_norm(queries)))


class PerceiverResampler(nn.Module):
    """Flamingo-style perceiver resampler: `num_latents` learned latents, `depth` `PerceiverLayer`s with `heads`
    heads of width `dim_head` and a feed-forward of `ff_mult * hidden_dim`.

    Args:
        config (`PanoVLMResamplerConfig`): the resampler config.
        input_dim (`int`): width of the incoming vision tokens.

    Shapes: `(N, S, input_dim) -> (N, num_latents, latent_dimension)`.
    """

    def __init__(self, config: PanoVLMResamplerConfig, input_dim: int):
        super().__init__()
        self.input_proj = nn.Linear(input_dim, config.hidden_dim)
        self.latents = nn.Parameter(torch.empty(config.num_latents, config.hidden_dim))
        self.layers = nn.ModuleList(PerceiverLayer(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.hidden_dim, eps=config.layer_norm_eps)
        self.output_proj = nn.Linear(config.hidden_dim, config.latent_dimension)
        self.init_weights_(_DEFAULT_QUERY_STD)

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


class QFormerResampler(nn.Module):
    """Compact Q-Former: `num_query_tokens` learned queries, `num_hidden_layers` `QFormerLayer`s with
    `num_attention_heads` heads. Unlike PanoLLaVA's BertModel-based Q-Former the query self-attention is
    bidirectional and the queries carry no position or token-type embeddings.

    Args:
        config (`PanoVLMResamplerConfig`): the resampler config.
        input_dim (`int`): width of the incoming vision tokens.

    Shapes: `(N, S, input_dim) -> (N, num_query_tokens, latent_dimension)`.
    """

    def __init__(self, config: PanoVLMResamplerConfig, input_dim: int):
        super().__init__()
        self.input_proj = nn.Linear(input_dim, config.hidden_dim)
        self.query_tokens = nn.Parameter(torch.empty(config.num_query_tokens, config.hidden_dim))
        self.layers = nn.ModuleList(QFormerLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_dim, eps=config.layer_norm_eps)
        self.output_proj = nn.Linear(config.hidden_dim, config.latent_dimension)
        self.init_weights_(_DEFAULT_QUERY_STD)

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


__all__ = ["PerceiverResampler", "QFormerResampler"]
