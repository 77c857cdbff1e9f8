"""The checkpoint a migrated run file starts from: `from_vision_text_pretrained` on the towers a PanoLLaVA config
named, with its translated resampler, views, PE, stitching and VICReg head, its prompt format and generation
settings, saved (model, processor, tokenizer, generation config) as one `from_pretrained` directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml
from transformers import AutoTokenizer, GenerationConfig

from configuration_panovlm.atomic_files import atomic_directory
from modeling_panovlm.modeling_panovlm import PanoVLMForConditionalGeneration
from processing_panovlm.processing_panovlm import DEFAULT_IMAGE_TOKEN, PanoVLMProcessor

from .legacy_run import LegacyConversionError


logger = logging.getLogger(__name__)

MODEL_ARGS_KEYS = ("vision_model_name_or_path", "text_model_name_or_path", "resampler_config", "config",
                   "system_prompt", "user_template", "generation")


def read_model_args(path: str | os.PathLike) -> dict:
    """The model arguments `panovlm migrate-config` wrote (YAML), checked for their keys."""
    path = Path(path)
    try:
        args = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise LegacyConversionError(f"cannot read the model arguments {path}: {error}") from None
    missing = [key for key in MODEL_ARGS_KEYS if not isinstance(args, dict) or key not in args]
    if missing:
        raise LegacyConversionError(f"{path} lacks {missing}: write it with `panovlm migrate-config`")
    return args


def image_token_id_of(tokenizer) -> int:
    """PanoVLM's image placeholder in this tokenizer: `<|image_pad|>`, which every Qwen2/Qwen3 vocabulary has."""
    token_id = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    if token_id is None or (tokenizer.unk_token_id is not None and token_id == tokenizer.unk_token_id):
        raise LegacyConversionError(
            f"the language model's tokenizer has no {DEFAULT_IMAGE_TOKEN} token to mark image positions with; "
            "PanoVLM's image placeholder must be one token of the vocabulary"
        )
    return token_id


def generation_config_of(settings: dict, tokenizer) -> GenerationConfig:
    return GenerationConfig(**settings, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def build_start_checkpoint(
    model_args: dict,
    output_dir: str | os.PathLike,
    vision_model: str | os.PathLike | None = None,
    text_model: str | os.PathLike | None = None,
) -> Path:
    """Build and save the start checkpoint described by `model_args` (`ConfigMigration.model_args`). `vision_model` /
    `text_model` replace the towers it names (e.g. local copies). Written as a whole or not at all; refuses an
    existing non-empty `output_dir`."""
    output = Path(output_dir).resolve()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} exists and is not empty; remove it or choose another run directory")
    vision = str(vision_model or model_args["vision_model_name_or_path"])
    text = str(text_model or model_args["text_model_name_or_path"])
    tokenizer = AutoTokenizer.from_pretrained(text)
    model = PanoVLMForConditionalGeneration.from_vision_text_pretrained(
        vision, text, resampler_config=dict(model_args["resampler_config"]), image_token_id=image_token_id_of(tokenizer),
        **model_args["config"],
    )
    model.generation_config = generation_config_of(model_args["generation"], tokenizer)
    processor = PanoVLMProcessor.from_model_config(
        model.config, tokenizer, system_prompt=model_args["system_prompt"], user_template=model_args["user_template"]
    )
    with atomic_directory(output) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    logger.info("Wrote the start checkpoint (towers %s and %s) to %s", vision, text, output)
    return output


__all__ = ["build_start_checkpoint", "generation_config_of", "image_token_id_of", "read_model_args"]
