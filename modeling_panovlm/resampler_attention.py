"""Blocks shared by the attention resamplers (`resampler_perceiver`, `resampler_qformer`): multi-head attention of
learned queries over a view's tokens, with no mask and no positions, and a feed-forward block.

Neither block adds positional information, so the resamplers built from them are invariant to the order of a view's
input tokens; the panoramic positional encoding is added after the resampler.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


# Standalone default for learned queries; `PanoVLMPreTrainedModel` re-initialises them with
# `config.initializer_range` through `init_weights_`.
DEFAULT_QUERY_STD = 0.02


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention: `(N, heads, Q, d)` queries over `(N, heads, L, d)` keys/values -> `(N, Q, heads, d)` and the
    weights `(N, heads, Q, L)`; the reference the other implementations are tested against."""
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    # Softmax in at least fp32 (half-precision inputs), in fp64 for fp64 inputs.
    weights = F.softmax(weights, dim=-1, dtype=torch.promote_types(weights.dtype, torch.float32)).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class ResamplerAttention(nn.Module):
    """Multi-head attention of `queries` over `context`, with no mask and no positions, through transformers'
    attention interface: the implementation follows `config._attn_implementation` (eager, sdpa, flash, flex, ...),
    which `attn_implementation=` of `from_pretrained` sets for the resampler as for the towers.

    Args:
        config (`PanoVLMResamplerConfig`): read for its attention implementation.
        hidden_dim (`int`): width of `queries`, `context` and the output.
        num_heads (`int`): attention heads.
        head_dim (`int`): width per head; the inner width is `num_heads * head_dim`.
        dropout (`float`): dropout on the attention probabilities (training only).
    """

    is_causal = False

    def __init__(self, config: PretrainedConfig, hidden_dim: int, num_heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scaling = head_dim**-0.5
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

    def forward(self, queries: torch.Tensor, context: torch.Tensor, **kwargs) -> torch.Tensor:
        """queries: (N, Q, hidden_dim), context: (N, L, hidden_dim) -> (N, Q, hidden_dim)."""
        implementation = self.config._attn_implementation or "sdpa"
        attention = eager_attention_forward if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
        output, _ = attention(
            self,
            self._split_heads(self.q_proj(queries)),
            self._split_heads(self.k_proj(context)),
            self._split_heads(self.v_proj(context)),
            None,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(output.flatten(2))


class ResamplerFeedForward(nn.Module):
    """Linear -> GELU -> Linear: (N, L, hidden_dim) -> (N, L, hidden_dim) through `intermediate_dim`."""

    def __init__(self, hidden_dim: int, intermediate_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, intermediate_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(intermediate_dim, hidden_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


__all__ = ["DEFAULT_QUERY_STD", "ResamplerAttention", "ResamplerFeedForward", "eager_attention_forward"]
