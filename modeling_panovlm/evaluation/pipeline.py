"""`evaluate_caption_table`: the whole evaluation of a caption table, from rows to the three output files."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel

from processing_panovlm.data import (
    DataArguments,
    ProblemRecorder,
    RowProblem,
    prepare_caption_table,
    stream_caption_table,
)

from .baseline import OneImagePrompting
from .generation import (
    generate_captions,
    generation_settings,
    greedy_generation_config,
    group_rows,
)
from .loading import is_panovlm
from .metrics import PredictionRow, check_scoring_requirements, write_predictions
from .report import write_evaluation_outputs


ROW_COLUMNS = ("row", "url", "query", "annotation", "source")
STREAM_CHUNK_ROWS = 256  # rows of a stream grouped and generated together


def _caption_table(tolerance, table_path, data_args, max_samples, generate) -> tuple:
    """A prepared table: every row checked first, then one `generate` over the first `max_samples` groups."""
    prepared = prepare_caption_table(
        table_path,
        data_args,
        split=data_args.eval_split,
        needs_text=True,
        drop_duplicates=True,
        aspect_ratio_tolerance=tolerance,
    )
    kept = prepared.rows
    groups = group_rows(kept)[:max_samples]
    captions, failures, stats = generate(groups, True)
    columns = kept.select_columns(list(ROW_COLUMNS)).to_dict()
    rows = [tuple(columns[name][index] for name in ROW_COLUMNS) for index in range(len(kept))]
    row_groups = [(row, index) for index, group in enumerate(groups) for row in group.rows]
    data = {
        "rows_read": prepared.rows_read,
        "rows_skipped_by_max_samples": len(kept) - len(row_groups),
        "streaming": False,
    }
    return rows, row_groups, captions, failures, stats, list(prepared.problems), data


def _caption_stream(tolerance, table_path, data_args, max_samples, generate, show_progress) -> tuple:
    """A stream: rows checked as they are read, generated in chunks (a group seen again reuses its caption); with
    `max_samples`, reading stops at the first row of group `max_samples + 1` (read, not scored)."""
    recorder = ProblemRecorder()
    stream = stream_caption_table(
        table_path,
        data_args,
        recorder=recorder,
        split=data_args.eval_split,
        needs_text=True,
        drop_duplicates=True,
        aspect_ratio_tolerance=tolerance,
    )
    rows, row_groups, captions, failures = [], [], [], {}
    stats = Counter(generations=0, images_encoded=0, seconds=0.0)
    group_of: dict[tuple, int] = {}
    chunk: list[dict] = []
    chunk_images: set[str] = set()
    skipped = 0

    def flush():
        batch = {name: [row[name] for row in chunk] for name in chunk[0]}
        new_groups = []
        for group in group_rows(batch):
            first = chunk[group.rows[0]]
            key = (first["image_id"], first["query"], first["prompt_style"])
            if key not in group_of:
                group_of[key] = len(captions) + len(new_groups)
                new_groups.append(group)
            row_groups.extend((len(rows) + row, group_of[key]) for row in group.rows)
        rows.extend(tuple(row[name] for name in ROW_COLUMNS) for row in chunk)
        if new_groups:
            chunk_captions, chunk_failures, chunk_stats = generate(new_groups, False)
            failures.update({len(captions) + index: reason for index, reason in chunk_failures.items()})
            captions.extend(chunk_captions)
            stats.update(chunk_stats)
        chunk.clear()
        chunk_images.clear()

    seen: set[tuple] = set()
    with tqdm(unit="row", desc="evaluating stream", disable=not show_progress) as progress:
        for row in stream:
            key = (row["image_id"], row["query"], row["prompt_style"])
            if max_samples is not None and key not in seen and len(seen) == max_samples:
                skipped = 1
                break
            seen.add(key)
            if row["image_id"] in chunk_images:
                row["image"] = None  # group_rows reads each panorama's first row only: hold its bytes once
            chunk_images.add(row["image_id"])
            chunk.append(row)
            progress.update()
            if len(chunk) == STREAM_CHUNK_ROWS:
                flush()
        if chunk:
            flush()
    data = {"rows_read": recorder.rows, "rows_skipped_by_max_samples": skipped, "streaming": True}
    return rows, row_groups, captions, failures, dict(stats), list(recorder.problems), data


def evaluate_caption_table(
    model: PreTrainedModel,
    processor,
    table_path,
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
    data_args: DataArguments | None = None,
    *,
    strip_think: bool | None = None,
    one_image: OneImagePrompting | None = None,
) -> dict:
    """Evaluate `model` on a caption table and write `predictions.csv` (one row per reference), `metrics.json` and
    `report.md` into `output_dir`.

    `table_path` is any source `processing_panovlm.data.load_caption_table` reads (a CSV, Parquet, JSON Lines or
    WebDataset file, a list of them, a saved dataset, a Hub dataset id ...), read as `data_args` says (columns,
    `eval_split`, revision, `streaming`). Rows that cannot be used are dropped and reported with their reason and
    row (rules in `processing_panovlm.data.checks`: malformed rows, missing values, empty answers or queries,
    duplicate rows, unusable panoramas). One caption is generated per (image, query) group; `max_samples` keeps
    the first N groups with all their rows (a stream stops reading at the first row of group N + 1). `protocols`
    defaults to both for the `coco` style and per-row for `panollava`. `seed` seeds sampling (it is recorded;
    greedy decoding does not need it). `tokenizer` as in `score_predictions`; what scoring needs is checked before
    anything is read or generated. `model` may be any image-text-to-text model: one that is not a PanoVLM is a
    baseline, asked about each panorama as one resized image as `one_image` says (see `generate_captions`, which
    also explains `strip_think`). Returns the metrics.json content.
    """
    check_scoring_requirements(metrics_style, tokenizer)
    data_args = data_args or DataArguments()
    config = generation_config or greedy_generation_config(model)
    if seed is not None:
        torch.manual_seed(seed)

    if is_panovlm(model):
        tolerance = processor.image_processor.aspect_ratio_tolerance
    else:
        one_image = one_image or OneImagePrompting()
        tolerance = one_image.aspect_ratio_tolerance
    think = {"removed": strip_think, "with_think": 0, "out_of": 0, "unit": "caption"}
    prompting: dict = {}

    def generate(groups, progress):
        captions, failures, stats = generate_captions(
            model, processor, groups, batch_size, config, show_progress and progress, log_interval,
            strip_think=strip_think, one_image=one_image,
        )
        # Per call (a stream's chunks add up): how the model was asked, and the <think> counts.
        prompting.update(stats.pop("prompting"))
        chunk_think = stats.pop("think")
        think["removed"] = chunk_think["removed"]
        think["with_think"] += chunk_think["with_think"]
        think["out_of"] += chunk_think["out_of"]
        return captions, failures, stats

    if data_args.streaming:
        read = _caption_stream(tolerance, table_path, data_args, max_samples, generate, show_progress)
    else:
        read = _caption_table(tolerance, table_path, data_args, max_samples, generate)
    rows, row_groups, captions, failures, stats, problems, data = read
    scored = []
    for row, group in sorted(row_groups):
        number, url, query, annotation, source = rows[row]
        if group in failures:
            problems.append(RowProblem(number, url, "unreadable image", failures[group], source))
        else:
            scored.append(PredictionRow(url, query, captions[group], annotation))
    if not scored:
        raise ValueError(f"no row of {table_path} could be evaluated ({len(problems)} dropped; see the reasons logged)")
    write_predictions(Path(output_dir) / "predictions.csv", scored)
    data = {"source": str(table_path), **data}
    generation = {
        "model": model_name,
        "model_type": model.config.model_type,
        "batch_size": batch_size,
        **stats,
        "prompting": prompting,
        "settings": generation_settings(config, seed),
    }
    return write_evaluation_outputs(
        output_dir, scored, protocols, metrics_style, problems, data, generation, tokenizer, think=think
    )


__all__ = ["evaluate_caption_table"]
