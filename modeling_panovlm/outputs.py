"""What the PanoVLM models return: transformers' multimodal output dataclasses plus the vision stage's field."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast


@dataclass
class PanoVLMModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    """`MultimodalBaseModelOutputWithPast` (`last_hidden_state`, `cache`, `hidden_states`, `attentions`,
    `image_outputs`: what `get_image_features` returned, its `pooler_output` the `(panoramas, num_image_tokens,
    text_hidden)` image features) plus `view_embeddings`: `(panoramas, views, rows, columns, vicreg_projector_dim)`,
    set only when `output_view_embeddings=True` (the vision training stage)."""

    view_embeddings: torch.Tensor | None = None


@dataclass
class PanoVLMCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    """`MultimodalCausalLMOutputWithPast` (`loss` when `labels` are given, `logits` `(batch, seq, vocab)`, `cache`,
    `hidden_states`, `attentions`, `image_outputs`) plus `view_embeddings` as in `PanoVLMModelOutputWithPast`."""

    view_embeddings: torch.Tensor | None = None


__all__ = ["PanoVLMCausalLMOutputWithPast", "PanoVLMModelOutputWithPast"]
