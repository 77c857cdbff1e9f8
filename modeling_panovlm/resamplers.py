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

from torch import nn

from configuration_panovlm.configuration_panovlm import PanoVLMResamplerConfig

from .resampler_bimamba import BiMambaResampler
from .resampler_mlp import MLPResampler
from .resampler_perceiver import PerceiverResampler
from .resampler_qformer import QFormerResampler


RESAMPLERS: dict[str, type[nn.Module]] = {
    "bimamba": BiMambaResampler,
    "mlp": MLPResampler,
    "perceiver": PerceiverResampler,
    "qformer": QFormerResampler,
}


def build_resampler(config: PanoVLMResamplerConfig, input_dim: int) -> nn.Module:
    """The resampler named by `config.resampler_type`, taking `input_dim`-wide vision tokens."""
    return RESAMPLERS[config.resampler_type](config, input_dim)
