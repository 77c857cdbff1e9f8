"""Caption evaluation: generation over tables (one generation per image and query), metrics, reports; PanoVLM
checkpoints and general VLMs (baselines) alike."""

from .baseline import OneImagePrompting
from .generation import (
    DEFAULT_MAX_NEW_TOKENS,
    CaptionGroup,
    encode_panoramas,
    expanded_prompt,
    generate_captions,
    generate_from_features,
    generation_settings,
    greedy_generation_config,
    group_rows,
    override_prompts,
)
from .loading import load_model_and_processor
from .pipeline import evaluate_caption_table
from .report import render_report, write_evaluation_outputs
from .thinking import strip_thinking


__all__ = [
    "CaptionGroup",
    "DEFAULT_MAX_NEW_TOKENS",
    "OneImagePrompting",
    "encode_panoramas",
    "evaluate_caption_table",
    "expanded_prompt",
    "generate_captions",
    "generate_from_features",
    "generation_settings",
    "greedy_generation_config",
    "group_rows",
    "load_model_and_processor",
    "override_prompts",
    "render_report",
    "strip_thinking",
    "write_evaluation_outputs",
]
