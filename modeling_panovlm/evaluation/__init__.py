"""Caption evaluation: generation over tables (one generation per image and query), metrics, reports."""

from .generation import (
    DEFAULT_MAX_NEW_TOKENS,
    CaptionGroup,
    generate_captions,
    generate_from_features,
    generation_settings,
    greedy_generation_config,
    group_rows,
    load_model_and_processor,
)
from .pipeline import evaluate_caption_table
from .report import render_report, write_evaluation_outputs


__all__ = [
    "CaptionGroup",
    "DEFAULT_MAX_NEW_TOKENS",
    "evaluate_caption_table",
    "generate_captions",
    "generate_from_features",
    "generation_settings",
    "greedy_generation_config",
    "group_rows",
    "load_model_and_processor",
    "render_report",
    "write_evaluation_outputs",
]
