"""Blocks shared by the attention resamplers (`resampler_perceiver`, `resampler_qformer`): multi-head attention of
learned queries over a view's tokens, with no mask and no positions, and a feed-forward block.

Neither block adds positional information, so the resamplers built from them are invariant to the order of a view's
input tokens; the panoramic positional encoding is added after the resampler.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# Standalone default for learned queries; `PanoVLMPreTrainedModel` re-initialises them with
# `config.initializer_range` through `init_weights_`.
DEFAULT_QUERY_STD = 0.02


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


__all__ = ["DEFAULT_QUERY_STD", "ResamplerAttention", "ResamplerFeedForward"]
