"""Token resamplers: one registry, one constructor (timm style).

Every resampler is built as `cls(config, input_dim)` from a `PanoVLMResamplerConfig` and maps the tokens of each
view independently:

    x: (num_views_total, tokens, input_dim)  ->  (num_views_total, tokens_out, config.latent_dimension)

`tokens_out == tokens` for `bimamba` and `mlp`; `perceiver` and `qformer` return their learned queries
(`config.num_output_tokens(tokens)` says how many). Modules that own raw parameters the generic transformers
initialisation does not cover implement `init_weights_(std)` with `transformers.initialization` functions, which
leave tensors loaded from a checkpoint untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from configuration_panovlm.configuration_panovlm import PanoVLMResamplerConfig

from .attention_resamplers import PerceiverResampler, QFormerResampler
from .bimamba import BiMambaResampler


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


RESAMPLERS: dict[str, type[nn.Module]] = {
    "bimamba": BiMambaResampler,
    "mlp": MLPResampler,
    "perceiver": PerceiverResampler,
    "qformer": QFormerResampler,
}


def build_resampler(config: PanoVLMResamplerConfig, input_dim: int) -> nn.Module:
    """The resampler named by `config.resampler_type`, taking `input_dim`-wide vision tokens."""
    return RESAMPLERS[config.resampler_type](config, input_dim)
