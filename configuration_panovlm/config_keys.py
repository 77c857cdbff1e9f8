"""Which keys a PanoVLM config accepts, and what a saved `config.json` must contain.

* Construction: a misspelt PanoVLM field raises with a suggestion; other keys that transformers, PEFT, quantizers or
  test helpers set on a model config are kept and round-trip (the resampler config, which only PanoVLM writes,
  accepts its own and its registered type's fields only).
* Loading: a `config.json` written by `save_pretrained` must name every PanoVLM field, so that no default silently
  stands in for a value the weights were trained with; `FIELDS_ADDED_LATER` says what older files meant for fields
  added since.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from typing import Any

from transformers import CONFIG_MAPPING, LlavaConfig, PreTrainedConfig

from .resampler_registry import resampler_spec
from .towers import SIGLIP_NORMALISATION


# Keyword arguments that `PreTrainedConfig.__post_init__` consumes or that `from_pretrained` passes along; every
# other key that is not a declared field is an error.
_BASE_CONFIG_KWARGS = frozenset(
    {
        "model_type",
        "name_or_path",
        "_name_or_path",
        "_commit_hash",
        "torch_dtype",
        "attn_implementation",
        "experts_implementation",
        "output_attentions",
        "num_labels",
        "auto_map",
    }
)


_FLOAT_FIELDS = {
    "PanoVLMResamplerConfig": ("expand", "dropout", "dt_min", "dt_max", "dt_init_floor", "layer_norm_eps"),
    "PanoVLMConfig": ("fov_deg", "overlap_ratio", "pe_temperature", "initializer_range", "rescale_factor"),
}


def _words(name: str) -> set[str]:
    return set(name.strip("_").split("_"))


def _suggestion(key: str, fields: list[str]) -> str | None:
    """The own field `key` looks like a misspelling of: a close match, or a field whose words include all of
    `key`'s (`fov` -> `fov_deg`, `overlap` -> `overlap_ratio`, `vicreg_dim` -> `vicreg_projector_dim`)."""
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.75)
    if close:
        return close[0]
    return next((field for field in fields if field != key and _words(key) <= _words(field)), None)


def _known_to_transformers(config: PreTrainedConfig, key: str) -> bool:
    """Whether transformers itself names a config attribute `key`: on the base class, the towers' config classes or
    LLaVA's (the reference composite VLM), which is what its tests, quantizers and tooling write onto configs."""
    classes = [PreTrainedConfig, LlavaConfig]
    for name, default_type in (("vision_config", "siglip_vision_model"), ("text_config", "qwen3")):
        sub = getattr(config, name, None)  # still a dict (or None) before PreTrainedConfig.__post_init__
        if isinstance(sub, PreTrainedConfig):
            classes.append(type(sub))
        else:
            model_type = (sub or {}).get("model_type", default_type)
            if model_type in CONFIG_MAPPING:
                classes.append(CONFIG_MAPPING[model_type])
    return any(
        key in vars(cls) or (dataclasses.is_dataclass(cls) and key in {f.name for f in dataclasses.fields(cls)})
        for cls in classes
    )


def check_kwargs(
    config: PreTrainedConfig, kwargs: dict[str, Any], strict_keys: bool, extra_fields: tuple[str, ...] = ()
) -> None:
    """Refuse a foreign `model_type` and misspelt keys; coerce integer values of float fields to float.

    With `strict_keys`, every key must be a field (the resampler config: PanoVLM's own, written by nobody else).
    Otherwise keys that are not fields are kept as attributes and round-trip through `config.json` (what
    transformers, PEFT, quantizers and test helpers set on a model config), unless they look like a misspelling of
    one of PanoVLM's fields and transformers does not know them.
    """
    fields = sorted({f.name for f in dataclasses.fields(config) if not f.name.startswith("_")} | set(extra_fields))
    unknown = sorted(set(kwargs) - _BASE_CONFIG_KWARGS - set(config.attribute_map) - set(fields))
    for key in unknown:
        suggestion = _suggestion(key, fields)
        if strict_keys or (suggestion is not None and not _known_to_transformers(config, key)):
            hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
            raise ValueError(f"{type(config).__name__} got unknown key {key!r}{hint}; valid keys are {fields}")
    model_type = kwargs.get("model_type", config.model_type)
    if model_type != config.model_type:
        raise ValueError(f"{type(config).__name__} expects model_type={config.model_type!r}, got {model_type!r}")
    for name in _FLOAT_FIELDS[type(config).__name__]:
        value = getattr(config, name)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(config, name, float(value))


# `{field: value}` for fields PanoVLM gained after checkpoints without them existed: the value such files meant.
FIELDS_ADDED_LATER: dict[str, Any] = {
    # Before these were recorded, every processor normalised with SigLIP's statistics.
    "image_mean": list(SIGLIP_NORMALISATION[0]),
    "image_std": list(SIGLIP_NORMALISATION[1]),
    "rescale_factor": 1 / 255,
}
RESAMPLER_FIELDS_ADDED_LATER: dict[str, Any] = {}


def _own_fields(config_class: type[PreTrainedConfig]) -> list[str]:
    base = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    return [f.name for f in dataclasses.fields(config_class) if f.name not in base and not f.name.startswith("_")]


def complete_saved_config(config_class: type[PreTrainedConfig], config_dict: dict[str, Any], resampler_class) -> dict[str, Any]:
    """`config_dict` with the fields added later filled in; raises naming every other missing field."""
    missing = []
    for name in _own_fields(config_class):
        if name not in config_dict:
            if name in FIELDS_ADDED_LATER:
                config_dict[name] = copy.deepcopy(FIELDS_ADDED_LATER[name])
            else:
                missing.append(name)
    resampler = config_dict.get("resampler_config")
    if isinstance(resampler, dict):
        resampler = dict(resampler)
        registered = resampler_spec(resampler.get("resampler_type", "bimamba")).fields
        for name in dict.fromkeys([*_own_fields(resampler_class), *registered]):
            if name not in resampler:
                if name in RESAMPLER_FIELDS_ADDED_LATER:
                    resampler[name] = copy.deepcopy(RESAMPLER_FIELDS_ADDED_LATER[name])
                else:
                    missing.append(f"resampler_config.{name}")
        config_dict["resampler_config"] = resampler
    if missing:
        source = config_dict.get("_name_or_path") or "this config.json"
        raise ValueError(
            f"{source} lacks {missing}: PanoVLM's config.json names every field, so that no default stands in for a "
            "value the weights were trained with; it was not written by PanoVLM's save_pretrained, or was edited"
        )
    return config_dict


__all__ = ["FIELDS_ADDED_LATER", "RESAMPLER_FIELDS_ADDED_LATER", "check_kwargs", "complete_saved_config"]
