"""What the configuration knows of each resampler type: its own config fields, how many tokens per view it returns,
how its sizes are validated and which of them a model card shows.

A resampler type is declared twice, once per layer: here (`ResamplerSpec`, the config facts, importable without
torch modules) and by its module class in `modeling_panovlm` (what the model needs: the class itself, its
`_no_split_modules`, `_keep_in_fp32_modules_strict`, `no_weight_decay` parameter names). Everything else — the
values `resampler_type` accepts, size validation, token counts, the model card, FSDP wrapping, weight decay — is
derived from these two. `modeling_panovlm.register_resampler` registers both for a type defined outside PanoVLM.

The built-in types keep PanoLLaVA's flat field names, declared once as `PanoVLMResamplerConfig` fields; a
registered type adds its own fields with their defaults, which the config then accepts, validates by type and
writes to `config.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ResamplerSpec:
    """The config facts of a resampler type.

    Args:
        name: the `resampler_type` value.
        fields: the type's own fields and their defaults. For built-in types they are `PanoVLMResamplerConfig`
            fields (listed here for cards and validation); for registered types they are added to the config.
        output_tokens: tokens per view returned for `n` input tokens, `output_tokens(config, n)`; `None` keeps `n`.
        validate: raises `ValueError` naming the field when the type's sizes are impossible.
        positive: fields that must be integers >= 1.
        uses_depth: whether the common `depth` field sizes the type (the Q-Former counts `num_hidden_layers`).
    """

    name: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    output_tokens: Callable[[Any, int], int] | None = None
    validate: Callable[[Any], None] | None = None
    positive: tuple[str, ...] = ()
    uses_depth: bool = True

    @property
    def card_sizes(self) -> tuple[str, ...]:
        """The sizes a model card shows for this type."""
        return ("hidden_dim", *(("depth",) if self.uses_depth else ()), *self.fields)


RESAMPLER_SPECS: dict[str, ResamplerSpec] = {}


def register_resampler_spec(spec: ResamplerSpec, *, replace_same: bool = True) -> None:
    """Add `spec` to `RESAMPLER_SPECS`. Registering a name again with an equal spec is a no-op; with another spec it
    raises: checkpoints of the first would load into the second with other weights."""
    existing = RESAMPLER_SPECS.get(spec.name)
    if existing is not None and not (replace_same and existing == spec):
        raise ValueError(
            f"resampler type {spec.name!r} is already registered with {existing}; choose another name (checkpoints of "
            "the registered type would otherwise load into yours)"
        )
    RESAMPLER_SPECS[spec.name] = spec


def resampler_spec(name: str) -> ResamplerSpec:
    """The spec of `name`; raises naming the type and how to register one."""
    if name not in RESAMPLER_SPECS:
        raise ValueError(
            f"resampler_type {name!r} is not registered (registered: {sorted(RESAMPLER_SPECS)}). A type defined outside "
            "PanoVLM is registered by `modeling_panovlm.register_resampler(name, module_class, config_fields=...)`: "
            "import the module that calls it before building or loading such a model"
        )
    return RESAMPLER_SPECS[name]


def _bimamba_validate(config) -> None:
    if config.expand <= 0 or config.d_inner < 1:
        raise ValueError(
            f"resampler_config.expand={config.expand} with hidden_dim={config.hidden_dim} gives an empty Mamba inner "
            "width; expand must be > 0"
        )
    if not 0.0 < config.dt_min <= config.dt_max:
        raise ValueError(f"resampler_config needs 0 < dt_min <= dt_max, got {config.dt_min}, {config.dt_max}")


def _qformer_validate(config) -> None:
    if config.hidden_dim % config.num_attention_heads:
        raise ValueError(
            f"Q-Former hidden_dim={config.hidden_dim} must be divisible by num_attention_heads={config.num_attention_heads}"
        )


# Defaults are those of PanoVLMResamplerConfig's fields (the card and validation read the config's values).
for _spec in (
    ResamplerSpec(
        "bimamba",
        {name: None for name in ("expand", "d_state", "d_conv", "dt_rank", "norm_first")},
        validate=_bimamba_validate,
        positive=("d_state", "d_conv", "dt_rank"),
    ),
    ResamplerSpec("mlp", {"use_ln": None}),
    ResamplerSpec(
        "perceiver",
        {name: None for name in ("num_latents", "heads", "dim_head", "ff_mult")},
        output_tokens=lambda config, n: config.num_latents,
        positive=("num_latents", "heads", "dim_head", "ff_mult"),
    ),
    ResamplerSpec(
        "qformer",
        {name: None for name in ("num_query_tokens", "num_hidden_layers", "num_attention_heads")},
        output_tokens=lambda config, n: config.num_query_tokens,
        validate=_qformer_validate,
        positive=("num_query_tokens", "num_hidden_layers", "num_attention_heads"),
        uses_depth=False,
    ),
):
    register_resampler_spec(_spec)


__all__ = ["RESAMPLER_SPECS", "ResamplerSpec", "register_resampler_spec", "resampler_spec"]
