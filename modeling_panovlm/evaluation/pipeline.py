"""`evaluate_caption_table`: the whole evaluation of a QuIC-360-style table, from rows to the three output files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedModel

from processing_panovlm.data.captions import RowProblem, load_caption_table, scan_images

from .baseline import OneImagePrompting
from .generation import (
    generate_captions,
    generation_settings,
    greedy_generation_config,
    group_rows,
)
from .metrics import PredictionRow, check_scoring_requirements, write_predictions
from .report import write_evaluation_outputs


def evaluate_caption_table(
    model: PreTrainedModel,
    processor,
    table_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    protocols: Sequence[str] | None = None,
    metrics_style: str = "coco",
    max_samples: int | None = None,
    batch_size: int = 8,
    generation_config: GenerationConfig | None = None,
    seed: int | None = None,
    show_progress: bool = True,
    log_interval: int | None = None,
    model_name: str | None = None,
    tokenizer: str = "java-ptb",
    *,
    strip_think: bool | None = None,
    one_image: OneImagePrompting | None = None,
) -> dict:
    """Evaluate `model` on a QuIC-360-style table and write `predictions.csv` (one row per reference),
    `metrics.json` and `report.md` into `output_dir`.

    Rows whose panorama cannot be used, or whose query is empty, are dropped and reported with their reason. One
    caption is generated per (image, query) group; `max_samples` keeps the first N groups with all their rows.
    `protocols` defaults to both for the `coco` style and per-row for `panollava`. `seed` seeds sampling (it is
    recorded; greedy decoding does not need it). `tokenizer` as in `score_predictions`; what scoring needs is checked
    before anything is generated. `model` may be any image-text-to-text model: one that is not a PanoVLM is a
    baseline, asked about each panorama as one resized image as `one_image` says (see `generate_captions`, which
    also explains `strip_think`). Returns the metrics.json content.
    """
    check_scoring_requirements(metrics_style, tokenizer)
    table = load_caption_table(table_path)
    kept, problems = scan_images(table)
    problems = list(problems)
    blank = {i for i, query in enumerate(kept["query"]) if not query.strip()}
    if blank:
        problems += [
            RowProblem(kept[i]["row"], kept[i]["url"], "empty query", "the query is empty") for i in sorted(blank)
        ]
        kept = kept.select([i for i in range(len(kept)) if i not in blank])
    groups = group_rows(kept)[:max_samples]
    config = generation_config or greedy_generation_config(model)
    if seed is not None:
        torch.manual_seed(seed)
    captions, failures, stats = generate_captions(
        model, processor, groups, batch_size, config, show_progress, log_interval,
        strip_think=strip_think, one_image=one_image,
    )
    think = stats.pop("think")
    row_numbers, urls, queries, annotations = (kept[name] for name in ("row", "url", "query", "annotation"))
    caption_of_row: dict[int, str] = {}
    for index, group in enumerate(groups):
        for row in group.rows:
            if index in failures:
                problems.append(RowProblem(row_numbers[row], urls[row], "unreadable image", failures[index]))
            else:
                caption_of_row[row] = captions[index]
    if not caption_of_row:
        raise ValueError(f"no row of {table_path} could be evaluated ({len(problems)} dropped; see the reasons logged)")
    rows = [PredictionRow(urls[r], queries[r], caption_of_row[r], annotations[r]) for r in sorted(caption_of_row)]
    write_predictions(Path(output_dir) / "predictions.csv", rows)
    data = {
        "source": str(table_path),
        "rows_read": len(table),
        "rows_skipped_by_max_samples": len(kept) - sum(len(group.rows) for group in groups),
    }
    generation = {
        "model": model_name,
        "model_type": model.config.model_type,
        "batch_size": batch_size,
        **stats,
        "settings": generation_settings(config, seed),
    }
    return write_evaluation_outputs(
        output_dir, rows, protocols, metrics_style, problems, data, generation, tokenizer, think=think
    )


__all__ = ["evaluate_caption_table"]
