"""Translate a PanoLLaVA experiment YAML into a PanoVLM run file and the arguments of the model it starts from.

PanoLLaVA's YAML (`experiment, environment, paths, models, image_processing, training (stages, stage_configs), data,
system_messages, lora, generation`) becomes two mappings:

* `run_file`: what `panovlm train --config run.yaml` reads (`modeling_panovlm.training.run_file`): options shared
  by the stages at the top level and one entry per stage in `training.stages` order;
* `model_args`: the arguments of `PanoVLMForConditionalGeneration.from_vision_text_pretrained` (towers, resampler
  config with PanoLLaVA's field names, view layout, PE, stitching, VICReg head) plus the processor's prompt format
  and the generation settings; `conversion.start_checkpoint.build_start_checkpoint` turns them into the directory
  the run file's `model` names.

Values are the ones PanoLLaVA's code actually used, not always the ones its YAML wrote: its model config came from
`models:` only (so `image_processing.stitching_mode` never reached the model), its resampler fields had different
defaults depending on whether `models.resampler_config` was given, and its stage-level VICReg keys were never read.
Every source key gets a `MappingRow` saying where it went, or why it was not carried over; a row whose effective
value differs from the YAML's says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub.errors import StrictDataclassError

from configuration_panovlm.configuration_panovlm import PanoVLMConfig

from .legacy_run import LegacyConversionError
from .migration_tables import (
    DROPPED,
    RESAMPLER_CLASS_DEFAULTS,
    RESAMPLER_FLAT_FIELDS,
    RESAMPLER_PRESETS,
    RESAMPLER_TYPES,
    flatten,
)
from .migration_training import translate_training


@dataclass
class MappingRow:
    """One source key: its YAML value, where it went (`run:` the run file, `model:` the model arguments; None when
    not carried over), the value written there, and a note (why not carried, or how the effective value differs)."""

    source: str
    value: Any
    target: str | None
    used: Any = None
    note: str = ""


@dataclass
class ConfigMigration:
    run_file: dict
    model_args: dict
    rows: list[MappingRow]
    source: Path | None = None
    test_csv: str | list[str] | None = None  # paths.csv_test: the table `panovlm evaluate` should score

    @property
    def not_carried(self) -> list[MappingRow]:
        return [row for row in self.rows if row.target is None]


ABSENT = "(absent)"


class _Translator:
    """Walks the YAML once; `take` / `drop` record a row per key and mark it handled."""

    def __init__(self, raw: dict):
        self.raw = raw
        self.leaves = flatten(raw)
        self.rows: list[MappingRow] = []
        self.handled: set[str] = set()  # leaves accounted for
        self.recorded: set[str] = set()  # keys with a row

    def get(self, key: str, default: Any = None) -> Any:
        value: Any = self.raw
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    def number(self, key: str, default: Any = ABSENT, kind: type = float) -> float | int:
        """`key`'s value (or `default` when absent) as a float, or an int for `kind=int`; a `LegacyConversionError`
        naming the key for anything else. Strings convert: PanoLLaVA turned "5e-4" (a string to YAML) into a
        number, so does this; an int must be whole (2.0 is 2, 2.5 is refused rather than cut to 2)."""
        value = self.get(key, default)
        try:
            number = float(value)
            if kind is int:
                if not number.is_integer():
                    raise ValueError(value)
                return int(number)
            return number
        except (TypeError, ValueError, OverflowError):
            if value is ABSENT:
                raise LegacyConversionError(f"{key} is missing") from None
            wanted = "a whole number" if kind is int else "a number"
            raise LegacyConversionError(f"{key} must be {wanted}, got {value!r}") from None

    def has(self, key: str) -> bool:
        return self.get(key, ABSENT) is not ABSENT

    def take(self, key: str, target: str, used: Any, note: str = "") -> None:
        """Record that `key` (present or not) went to `target` as `used`."""
        value = self.get(key, ABSENT)
        self.rows.append(MappingRow(key if value is not ABSENT else f"{key} (absent)", value, target, used, note))
        self._mark(key)

    def note(self, source: str, value: Any, target: str, used: Any, note: str) -> None:
        """A row for a behaviour of PanoLLaVA's code (not a YAML key) that the translation reproduces."""
        self.rows.append(MappingRow(source, value, target, used, note))

    def drop(self, key: str, reason: str) -> None:
        """Record that `key`, if the YAML has it and no row has accounted for it yet, is not carried over."""
        if self.has(key) and key not in self.recorded:
            self.rows.append(MappingRow(key, self.get(key), None, None, reason))
            self._mark(key)

    def _mark(self, key: str) -> None:
        self.recorded.add(key)
        self.handled.update(leaf for leaf in self.leaves if leaf == key or leaf.startswith(key + "."))

    def leftovers(self) -> None:
        for key in sorted(set(self.leaves) - self.handled):
            reason = next((why for prefix, why in DROPPED.items() if key == prefix or key.startswith(prefix + ".")), None)
            reason = reason or "UNKNOWN: not one of the PanoLLaVA settings this tool translates; not carried over"
            self.rows.append(MappingRow(key, self.leaves[key], None, None, reason))


def _effective_resampler(t: _Translator) -> dict:
    """PanoLLaVA's resampler fields as its pydantic `ModelConfig` resolved them (see migration_tables)."""
    kind = t.get("models.resampler_type", "mlp")
    if kind not in RESAMPLER_TYPES:
        raise LegacyConversionError(
            f"models.resampler_type={kind!r}: PanoLLaVA's resampler factory built only {sorted(RESAMPLER_TYPES)} "
            "(perceiver was accepted by its schema but raised when the model was built)"
        )
    kind = RESAMPLER_TYPES[kind]
    given = t.get("models.resampler_config")
    if isinstance(given, dict):
        given = dict(given)
        if "num_layers" in given:  # PanoLLaVA's alias (for the Q-Former: of num_hidden_layers)
            given.setdefault("num_hidden_layers" if kind == "qformer" else "depth", given.pop("num_layers"))
        if kind == "qformer" and "hidden_size" in given:
            given.setdefault("hidden_dim", given.pop("hidden_size"))
        values = {**RESAMPLER_CLASS_DEFAULTS[kind], **given}
        origin = "class default of PanoLLaVA's {}ResamplerConfig (models.resampler_config given without it)".format(
            {"mlp": "MLP", "bimamba": "BiMamba", "qformer": "QFormer"}[kind])
        return {"type": kind, "values": values, "given": set(given), "origin": origin, "flat": {}}
    preset = RESAMPLER_PRESETS[kind]
    values, flat = dict(preset), {}
    for field, source in RESAMPLER_FLAT_FIELDS.items():
        if field in values and t.has(f"models.{source}"):
            values[field], flat[field] = t.get(f"models.{source}"), f"models.{source}"
    origin = f"PanoLLaVA's {kind} preset (RESAMPLER_CONFIGS; used when models.resampler_config is absent)"
    return {"type": kind, "values": values, "given": set(), "origin": origin, "flat": flat}


def _translate_resampler(t: _Translator) -> dict:
    resolved = _effective_resampler(t)
    kind, values = resolved["type"], resolved["values"]
    t.take("models.resampler_type", "model:resampler_config.resampler_type", kind,
           "" if t.get("models.resampler_type", "mlp") == kind else f"PanoLLaVA's alias of {kind}")
    if not t.has("models.resampler_type"):
        t.rows[-1].note = "PanoLLaVA's ModelConfig default"
    fields = {"mlp": ("latent_dimension", "hidden_dim", "depth", "use_ln"),
              "bimamba": ("latent_dimension", "hidden_dim", "depth", "dropout", "expand", "d_state", "d_conv", "norm_first"),
              "qformer": ("latent_dimension", "num_query_tokens", "num_hidden_layers", "num_attention_heads")}[kind]
    config = {"resampler_type": kind}
    for name in fields:
        config[name] = values[name]
        key = resolved["flat"].get(name) or f"models.resampler_config.{name}"
        explicit = name in resolved["given"] or name in resolved["flat"]
        t.take(key, f"model:resampler_config.{name}", values[name], "" if explicit else resolved["origin"])
        if name == "expand" and not explicit and values[name] != 2.0:
            t.rows[-1].note += "; note 1.75, not the 2.0 of PanoLLaVA's docs and factory preset"
    if kind == "mlp":
        # PanoLLaVA's MLP blocks had no dropout layer: whatever the YAML said, none was applied.
        config["dropout"] = 0.0
        t.take("models.resampler_config.dropout", "model:resampler_config.dropout", 0.0,
               "PanoLLaVA's MLP resampler has no dropout layer; the effective dropout was 0"
               + (f" (its config said {values.get('dropout')})" if values.get("dropout") else ""))
    if kind == "qformer":
        t.note("(behaviour) Q-Former design", "BERT-based", "model:resampler_config.resampler_type", kind,
               "PanoVLM's Q-Former is its own design: same sizes, not PanoLLaVA's BERT-based one "
               "(its weights do not convert)")
    for name in ("num_views", "enable_cross_view"):
        t.drop(f"models.resampler_config.{name}", "stored by PanoLLaVA but read by no module")
    for name in ("resampler_num_views", "resampler_enable_cross_view"):
        t.drop(f"models.{name}", "stored by PanoLLaVA but read by no module")
    if isinstance(t.get("models.resampler_config"), dict):
        for source in RESAMPLER_FLAT_FIELDS.values():
            t.drop(f"models.{source}", "ignored by PanoLLaVA: models.resampler_config was given and replaced it")
    for key in sorted(k for k in t.leaves if k.startswith("models.resampler_config.")):
        if key not in t.handled:
            t.drop(key, f"not used by PanoLLaVA's {kind} resampler")
    return config


def _translate_views(t: _Translator) -> dict:
    crop = t.get("image_processing.crop_strategy", "e2p")
    config = {"crop_strategy": crop}
    t.take("image_processing.crop_strategy", "model:crop_strategy", crop,
           "" if t.has("image_processing.crop_strategy") else "PanoLLaVA's image processor default")
    fov = t.number("image_processing.fov_deg", 90.0)
    config["fov_deg"] = fov
    t.take("image_processing.fov_deg", "model:fov_deg", fov)
    overlap = t.number("image_processing.overlap_ratio", 0.5)
    model_overlap = t.get("models.overlap_ratio")
    if crop == "cubemap":
        config["overlap_ratio"] = 0.0
        t.take("image_processing.overlap_ratio", "model:overlap_ratio", 0.0,
               f"cube faces touch: PanoLLaVA's cubemap crop ignored the overlap ({overlap}) yet stitched as if faces "
               "overlapped by the model overlap (dropping half of every later face); PanoVLM keeps every face token")
    else:
        config["overlap_ratio"] = overlap
        t.take("image_processing.overlap_ratio", "model:overlap_ratio", overlap,
               "" if crop != "resize" else "unused by a single resized view")
    if model_overlap is not None:
        note = ("PanoVLM has one overlap, the views' (image_processing.overlap_ratio); PanoLLaVA stitched with this one"
                if t.number("models.overlap_ratio") != config["overlap_ratio"] else "same as the views' overlap")
        t.take("models.overlap_ratio", "model:overlap_ratio", config["overlap_ratio"], note)
    if crop == "e2p":
        config["vertical_crop_ratio"] = 0.9
        t.note("(behaviour) e2p vertical crop", "90% of rows kept", "model:vertical_crop_ratio", 0.9,
               "PanoLLaVA's e2p cut 5% of rows top and bottom and stretched the rest")
    if crop in ("anyres", "anyres_max") or t.has("image_processing.anyres_max_patches"):
        patches = t.number("image_processing.anyres_max_patches", 12, int)
        config["anyres_max_patches"] = patches
        t.take("image_processing.anyres_max_patches", "model:anyres_max_patches", patches,
               "" if crop in ("anyres", "anyres_max") else f"unused by {crop}")
    for key in ("image_processing.stitching_mode", "image_processing.stitch_target_to_view_width",
                "image_processing.stitch_interp"):
        t.drop(key, "ignored by PanoLLaVA: the model's stitching came from models: (see models.stitching_mode)")
    for key in ("image_processing.image_size", "models.image_size"):
        t.drop(key, "the view size is the vision tower's input size in PanoVLM (PanoLLaVA's processor resized views "
               "to the tower's size too when use_vision_processor was on)")
    if t.get("image_processing.use_vision_processor", True) is not False and t.get("image_processing.normalize", True):
        for key in ("image_processing.use_vision_processor", "image_processing.normalize"):
            t.drop(key, "PanoVLM always normalises with the tower's own statistics, as this setting did")
    else:
        for key in ("image_processing.use_vision_processor", "image_processing.normalize"):
            t.drop(key, "NOT REPRODUCED: PanoVLM always normalises views with the tower's statistics")
    t.drop("image_processing.anyres_patch_size", "PanoVLM's anyres crops are fixed by the layout (no patch size); "
           "irrelevant for anyres_e2p")
    return config


def _translate_model_head(t: _Translator, latent: int) -> dict:
    config = {}
    stitching = t.get("models.stitching_mode", "drop_overlap")
    config["stitching_mode"] = "drop_overlap" if stitching == "stride_views" else stitching
    t.take("models.stitching_mode", "model:stitching_mode", config["stitching_mode"],
           "PanoLLaVA's effective stitching (ModelConfig default; image_processing.stitching_mode never reached the model)"
           if not t.has("models.stitching_mode") else ("PanoLLaVA's alias" if stitching == "stride_views" else ""))
    if stitching == "resample":
        interp = t.get("models.stitch_interp", "nearest")
        config["resample_interpolation"] = interp
        t.take("models.stitch_interp", "model:resample_interpolation", interp)
        if t.get("models.stitch_target_cols", 0):
            config["resample_columns"] = t.number("models.stitch_target_cols", kind=int)
            t.take("models.stitch_target_cols", "model:resample_columns", config["resample_columns"])
        t.drop("models.stitch_target_to_view_width", "NOT REPRODUCED: set resample_columns to the view's token "
               "columns in the model arguments to resample onto one view width" if t.get(
                   "models.stitch_target_to_view_width") else "false: the strip keeps its width, as resample_columns "
               "does when unset")
    for key in ("models.stitch_interp", "models.stitch_target_cols", "models.stitch_target_to_view_width",
                "models.stitch_stride_offset"):
        t.drop(key, "used by PanoLLaVA only with stitching_mode resample" if "offset" not in key else "stored, unused")
    pe = bool(t.get("models.use_projection_positional_encoding", False))
    config["use_panorama_pe"] = pe
    t.take("models.use_projection_positional_encoding", "model:use_panorama_pe", pe,
           "" if t.has("models.use_projection_positional_encoding") else "PanoLLaVA's ModelConfig default: PE off")
    if pe:
        config["panorama_pe_type"] = "panollava"
        config["pe_temperature"] = t.number("models.pe_temperature", 10000.0)
        t.take("models.pe_temperature", "model:pe_temperature", config["pe_temperature"])
        t.note("(behaviour) PanoLLaVA's PE formula", "yaw + row + strip column sinusoids", "model:panorama_pe_type",
               "panollava", "the anyres_e2p global view is no longer encoded as the leftmost strip view")
    t.drop("models.pe_view_encoding_type", "ignored by PanoLLaVA's positional encoding")
    if t.get("models.pe_spatial_encoding_type", "sinusoidal") != "sinusoidal":
        t.drop("models.pe_spatial_encoding_type", "NOT REPRODUCED: PanoLLaVA then dropped the row and column terms")
    t.drop("models.pe_spatial_encoding_type", "sinusoidal: what panorama_pe_type panollava computes")
    if t.get("models.pe_enable_continuity", True) is False:
        t.drop("models.pe_enable_continuity", "NOT REPRODUCED: PanoVLM's panollava PE is always overlap-continuous")
    t.drop("models.pe_enable_continuity", "true: what panorama_pe_type panollava computes")
    t.drop("models.pe_dropout", "PanoVLM's PE has no dropout" + ("" if not t.get("models.pe_dropout") else
                                                                 " (NOT REPRODUCED: this run had one)"))
    if not pe:
        t.drop("models.pe_temperature", "PE is off")
    config["vision_feature_norm"] = bool(t.get("models.use_vicreg_norm", True))
    t.take("models.use_vicreg_norm", "model:vision_feature_norm", config["vision_feature_norm"],
           "" if t.has("models.use_vicreg_norm") else "PanoLLaVA's default: a frozen LayerNorm on the tower output")
    head = t.get("models.use_vicreg_projector", True)
    dim = t.number("models.vicreg_projector_dim", kind=int) if t.get("models.vicreg_projector_dim") else latent
    config["vicreg_projector_depth"] = t.number("models.vicreg_projector_depth", 2, int) if head else 0
    config["vicreg_projector_dim"] = dim
    t.take("models.use_vicreg_projector", "model:vicreg_projector_depth", config["vicreg_projector_depth"],
           "" if head else "no head: depth 0")
    t.take("models.vicreg_projector_depth", "model:vicreg_projector_depth", config["vicreg_projector_depth"])
    t.take("models.vicreg_projector_dim", "model:vicreg_projector_dim", dim,
           "" if t.get("models.vicreg_projector_dim") else "PanoLLaVA's code used the latent width (its docs said twice it)")
    hidden = t.get("models.vicreg_projector_hidden")
    t.drop("models.vicreg_projector_hidden", "equal to vicreg_projector_dim, as PanoVLM's head is built" if hidden in (
        None, dim) else "NOT REPRODUCED: PanoVLM's head has hidden width = vicreg_projector_dim")
    t.drop("models.vicreg_projector_ln", "PanoVLM's head has LayerNorms" + (
        "" if t.get("models.vicreg_projector_ln", True) else " (NOT REPRODUCED: this run had none)"))
    if t.get("models.use_text_projection"):
        t.drop("models.use_text_projection", "NOT REPRODUCED: PanoVLM has no text projection")
    t.drop("models.use_text_projection", "off, as in PanoVLM")
    t.drop("models.projection_intermediate_size", "unused by PanoLLaVA (its projector is one Linear, as PanoVLM's)")
    return config


def _yaml_or_dict(source: str | os.PathLike | dict) -> tuple[dict, Path | None]:
    if isinstance(source, dict):
        return source, None
    path = Path(source)
    if not path.is_file():
        raise LegacyConversionError(f"{path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise LegacyConversionError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise LegacyConversionError(f"{path}: expected a PanoLLaVA config (a mapping of blocks), got {type(raw).__name__}")
    return raw, path


def migrate_config(source: str | os.PathLike | dict, output_dir: str | None = None) -> ConfigMigration:
    """Translate a PanoLLaVA YAML (a path or its parsed mapping). `output_dir` overrides the run directory
    (PanoLLaVA's `paths.runs_dir/<experiment name>`). Raises `LegacyConversionError` for configs PanoLLaVA itself
    could not have run (unknown resampler type or stage, stage without epochs/lr/batch_size)."""
    raw, path = _yaml_or_dict(source)
    unknown = sorted(set(raw) - {"experiment", "environment", "paths", "models", "image_processing", "training",
                                 "data", "system_messages", "lora", "generation"})
    t = _Translator(raw)
    resampler = _translate_resampler(t)
    views = _translate_views(t)
    head = _translate_model_head(t, resampler["latent_dimension"])
    model_args = {
        "vision_model_name_or_path": t.get("models.vision_name", "google/siglip-base-patch16-224"),
        "text_model_name_or_path": t.get("models.language_model_name", "Qwen/Qwen2.5-0.5B-Instruct"),
        "resampler_config": resampler,
        "config": {**views, **head},
    }
    for key, name in (("models.vision_name", "vision_model_name_or_path"),
                      ("models.language_model_name", "text_model_name_or_path")):
        t.take(key, f"model:{name}", model_args[name], "" if t.has(key) else "PanoLLaVA's ModelConfig default")
    # Checked now, without the towers: a layout or stitching PanoVLM cannot build fails here, naming the field.
    try:
        PanoVLMConfig(resampler_config=resampler, **model_args["config"])
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise LegacyConversionError(f"the translated model config is not valid: {error}") from None
    run_file, test_csv = translate_training(t, model_args, output_dir)
    for block in unknown:
        t.drop(block, "not a block of PanoLLaVA's config; not carried over")
    t.leftovers()
    return ConfigMigration(run_file, model_args, t.rows, path, test_csv)


def format_mapping_table(migration: ConfigMigration) -> str:
    """The mapping table `panovlm migrate-config` prints: every source key, where it went, and the notes."""
    def shown(value: Any) -> str:
        text = repr(value) if isinstance(value, str) else str(value)
        return text if len(text) <= 40 else text[:37] + "..."

    width = max(len(row.source) for row in migration.rows)
    lines = [f"{'PanoLLaVA key':{width}}  {'value':40}  ->  PanoVLM"]
    for row in migration.rows:
        where = f"{row.target} = {shown(row.used)}" if row.target else "NOT CARRIED OVER"
        lines.append(f"{row.source:{width}}  {shown(row.value):40}  ->  {where}")
        if row.note:
            lines.append(f"{'':{width}}  {'':40}      ({row.note})")
    behaviours = sum(row.source.startswith("(behaviour)") for row in migration.rows)
    dropped = len(migration.not_carried)
    unknown = sum(row.note.startswith("UNKNOWN") for row in migration.rows)
    lines.append(
        f"\n{len(migration.rows) - behaviours - dropped} keys carried over, {dropped} not carried over ({unknown} "
        f"unknown), {behaviours} behaviours of PanoLLaVA's code reproduced"
    )
    return "\n".join(lines)


__all__ = ["ConfigMigration", "MappingRow", "format_mapping_table", "migrate_config"]
