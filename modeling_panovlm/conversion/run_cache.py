"""PanoLLaVA run directories where a PanoVLM checkpoint is expected: `panovlm evaluate --checkpoint-dir RUN_DIR` and
`panovlm infer --model RUN_DIR` convert the run on the fly (the converter's rules: `weights_only` load, the best
checkpoint by validation loss, sizes from the weights, every key accounted for) into a cache directory
with a processor, and load that. The same run (same checkpoint file, size and time, same options) reuses its
converted directory. The cache is `$PANOVLM_CONVERTED_CACHE`, else `$HF_HOME/panovlm/converted`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoTokenizer

from configuration_panovlm.atomic_files import atomic_directory
from processing_panovlm.processing_panovlm import DEFAULT_SYSTEM_PROMPT, DEFAULT_USER_TEMPLATE, PanoVLMProcessor

from .legacy_run import LegacyConversionError, find_checkpoint, load_legacy_run
from .panollava import ConversionReport, _recorded, plan_conversion, write_conversion
from .start_checkpoint import generation_config_of, image_token_id_of


logger = logging.getLogger(__name__)

# Settings of the model that PanoLLaVA's checkpoints do not record but its training YAML does (no weights depend on
# them): taken from the migrated config when one is given.
_FROM_CONFIG = ("use_panorama_pe", "panorama_pe_type", "pe_temperature", "vertical_crop_ratio", "stitching_mode",
                "resample_columns", "resample_interpolation", "anyres_max_patches")


@dataclass
class ConvertedRun:
    directory: Path
    adapter: Path | None
    reused: bool
    report: ConversionReport | None  # None when reused


def is_legacy_run_dir(path: str | os.PathLike) -> bool:
    """A directory holding Lightning `.ckpt` files and no PanoVLM `config.json`."""
    path = Path(path)
    return path.is_dir() and not (path / "config.json").is_file() and any(path.glob("*.ckpt"))


def cache_root() -> Path:
    return Path(os.environ.get("PANOVLM_CONVERTED_CACHE") or Path(constants.HF_HOME) / "panovlm" / "converted")


def _cache_key(run_dir: Path, options: dict) -> str:
    checkpoint = find_checkpoint(run_dir).resolve()
    stat = checkpoint.stat()
    identity = {"checkpoint": str(checkpoint), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **options}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def convert_run_dir(
    run_dir: str | os.PathLike,
    migration=None,
    vision_config: str | None = None,
    text_config: str | None = None,
    cache: str | os.PathLike | None = None,
) -> ConvertedRun:
    """The converted PanoVLM directory of the PanoLLaVA run `run_dir`, written now or reused from the cache.

    Args:
        migration: a `ConfigMigration` of the run's training YAML (`--config`): it supplies the tower names when the
            run records none, the crop strategy, the PE / vertical crop / stitching the run trained with (PanoLLaVA's
            checkpoints record none of them), the prompt format and the generation settings.
        vision_config, text_config: tower configs or directories overriding both.

    Raises `LegacyConversionError` when keys are left unmapped (the report is in the message) or the run cannot be
    read, `FileNotFoundError` for a directory without checkpoints.
    """
    run_dir = Path(run_dir).resolve()
    model_args = migration.model_args if migration is not None else {}
    vision = vision_config or model_args.get("vision_model_name_or_path")
    text = text_config or model_args.get("text_model_name_or_path")
    settings = {k: v for k, v in model_args.get("config", {}).items() if k in _FROM_CONFIG}
    options = {"vision": vision, "text": text, "settings": settings, "prompts": [model_args.get("system_prompt"),
               model_args.get("user_template")], "generation": model_args.get("generation")}
    root = Path(cache) if cache is not None else cache_root()
    target = root / f"{run_dir.name}-{_cache_key(run_dir, options)}"
    if (target / "config.json").is_file() and (target / "processor_config.json").is_file():
        logger.info("Reusing the conversion of %s in %s", run_dir, target)
        adapter = target / "adapter"
        return ConvertedRun(target, adapter if adapter.is_dir() else None, True, None)

    run = load_legacy_run(run_dir)
    recorded = _recorded(run)
    # The run records its towers' names; the migrated YAML's names are the fallback, explicit configs win.
    vision = vision_config or recorded["vision_name"] or model_args.get("vision_model_name_or_path")
    text = text_config or recorded["text_name"] or model_args.get("text_model_name_or_path")
    try:
        tokenizer = AutoTokenizer.from_pretrained(text)
    except (OSError, ValueError, TypeError) as error:
        raise LegacyConversionError(f"cannot load the tokenizer of the language model {text!r}: {error}") from error
    crop = model_args.get("config", {}).get("crop_strategy")
    conversion = plan_conversion(run, vision, text, crop_strategy=crop if recorded["crop_strategy"] is None else None,
                                 image_token_id=image_token_id_of(tokenizer))
    if not conversion.report.complete:
        report = conversion.report
        raise LegacyConversionError(
            f"{run_dir} does not convert: unused {report.unused}, missing {report.missing}, mismatched "
            f"{report.mismatched} (`panovlm convert --checkpoint-dir {run_dir}` prints the whole table)"
        )
    configured_crop = model_args.get("config", {}).get("crop_strategy")
    if configured_crop is not None and configured_crop != conversion.config.crop_strategy:
        raise LegacyConversionError(
            f"--config describes crop_strategy {configured_crop!r}, but {run_dir} was trained with "
            f"{conversion.config.crop_strategy!r}: give the run's own training YAML"
        )
    for name, value in settings.items():
        setattr(conversion.config, name, value)
    try:
        conversion.config.validate()
    except StrictDataclassError as error:
        raise LegacyConversionError(f"{run_dir} with the settings of --config: {error}") from None
    with atomic_directory(target) as staging:
        write_conversion(conversion, staging)
        if (staging / "adapter").is_dir():  # the adapter's base is where the directory ends up, not the staging
            adapter_config = staging / "adapter" / "adapter_config.json"
            content = json.loads(adapter_config.read_text(encoding="utf-8"))
            adapter_config.write_text(json.dumps({**content, "base_model_name_or_path": str(target)}, indent=2) + "\n")
        processor = PanoVLMProcessor.from_model_config(
            conversion.config, tokenizer, system_prompt=model_args.get("system_prompt", DEFAULT_SYSTEM_PROMPT),
            user_template=model_args.get("user_template", DEFAULT_USER_TEMPLATE),
        )
        processor.save_pretrained(staging)
        if model_args.get("generation"):
            generation_config_of(model_args["generation"], tokenizer).save_pretrained(staging)
    logger.info("Converted %s (%s) into %s", run_dir, run.checkpoint.name, target)
    adapter = target / "adapter"
    return ConvertedRun(target, adapter if adapter.is_dir() else None, False, conversion.report)


__all__ = ["ConvertedRun", "cache_root", "convert_run_dir", "is_legacy_run_dir"]
