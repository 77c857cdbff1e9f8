"""What the PanoVLM models return: transformers' output dataclasses plus the panorama-specific fields."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput


@dataclass
class PanoVLMModelOutputWithPast(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus `image_hidden_states`: `(batch, num_image_tokens, text_hidden)` projected and
    stitched image features, when `pixel_values` was given; and `view_embeddings`: `(batch, views, rows, columns,
    vicreg_projector_dim)` when only `pixel_values` was given (the vision training stage)."""

    image_hidden_states: torch.Tensor | None = None
    view_embeddings: torch.Tensor | None = None


@dataclass
class PanoVLMCausalLMOutputWithPast(ModelOutput):
    """Language-modelling output: `loss` (when `labels` are given), `logits` `(batch, seq, vocab)`, cache, optional
    hidden states/attentions, and `image_hidden_states` / `view_embeddings` as in `PanoVLMModelOutputWithPast`."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: torch.Tensor | None = None
    view_embeddings: torch.Tensor | None = None


__all__ = ["PanoVLMCausalLMOutputWithPast", "PanoVLMModelOutputWithPast"]
