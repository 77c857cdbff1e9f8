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

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from configuration_panovlm.configuration_panovlm import PanoVLMResamplerConfig
from configuration_panovlm.resampler_registry import RESAMPLER_SPECS, ResamplerSpec, register_resampler_spec

from .resampler_bimamba import BiMambaResampler
from .resampler_mlp import MLPResampler
from .resampler_perceiver import PerceiverResampler
from .resampler_qformer import QFormerResampler


RESAMPLERS: dict[str, type[nn.Module]] = {}


def register_resampler(
    name: str,
    module_class: type[nn.Module],
    config_fields: Mapping[str, Any] | None = None,
    output_tokens: Callable[[PanoVLMResamplerConfig, int], int] | None = None,
    validate: Callable[[PanoVLMResamplerConfig], None] | None = None,
) -> type[nn.Module]:
    """Make `resampler_type=name` build `module_class(config, input_dim)`, from any module (timm's registry idea).

    Args:
        name: the new `resampler_type`; a registered name cannot be taken by another class.
        module_class: an `nn.Module` mapping `(N, S, input_dim)` to `(N, S', config.latent_dimension)`. It may declare
            `_no_split_modules` (its blocks, for device maps and FSDP wrapping), `_keep_in_fp32_modules_strict` and
            `no_weight_decay` (names of its own parameters the optimizer does not decay), and `init_weights_(std)`
            for raw parameters.
        config_fields: the type's own config fields and their defaults (the config then accepts, type-checks and
            records them); the common fields (`latent_dimension`, `hidden_dim`, `depth`, `dropout`, ...) exist
            already.
        output_tokens: tokens per view for `n` input tokens, `output_tokens(config, n)`; by default `n`.
        validate: raises `ValueError` for impossible sizes of the type.

    Checkpoints of a registered type load in any process that imported the module calling this first.
    """
    existing = RESAMPLERS.get(name)
    if existing is not None and existing is not module_class:
        raise ValueError(f"resampler type {name!r} is already registered to {existing.__name__}; choose another name")
    spec = ResamplerSpec(name, dict(config_fields or {}), output_tokens, validate)
    if name not in RESAMPLER_SPECS or existing is None:
        register_resampler_spec(spec)
    RESAMPLERS[name] = module_class
    return module_class


for _name, _class in (
    ("bimamba", BiMambaResampler),
    ("mlp", MLPResampler),
    ("perceiver", PerceiverResampler),
    ("qformer", QFormerResampler),
):
    RESAMPLERS[_name] = _class  # their config facts are built in (configuration_panovlm.resampler_registry)


def build_resampler(config: PanoVLMResamplerConfig, input_dim: int) -> nn.Module:
    """The resampler named by `config.resampler_type`, taking `input_dim`-wide vision tokens."""
    if config.resampler_type not in RESAMPLERS:
        raise ValueError(
            f"resampler_type {config.resampler_type!r} has a config spec but no module class: register both with "
            "modeling_panovlm.register_resampler"
        )
    return RESAMPLERS[config.resampler_type](config, input_dim)
