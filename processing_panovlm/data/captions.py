"""Panorama captioning data in the QuIC-360 format, and the prompts built from it.

A table is a CSV or TSV with columns `url,query,annotation` (QuIC-360) or `url,instruction,response` (CORA's
variant). `url` is a local path (absolute, or relative to the table's folder) or an http(s) URL. Tables are read
with `datasets`, every value kept verbatim as a string (a reference that reads "nan" stays "nan"). Images are not
decoded here: `scan_images` checks each distinct image once and reports every row it cannot use, with the reason;
nothing is dropped silently.

Training and evaluation build prompts with the same `PanoVLMProcessor.build_messages` and chat template (the prompt
format saved with the processor), so the image placeholder and the wording are identical in both.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from processing_panovlm.image_loading import REASONS as IMAGE_REASONS
from processing_panovlm.image_loading import PanoramaImageError, is_remote, probe_panorama


logger = logging.getLogger(__name__)


_COLUMN_SETS = {("url", "query", "annotation"): "query", ("url", "instruction", "response"): "instruction"}


@dataclass(frozen=True)
class RowProblem:
    """A table row that cannot be used: its 1-based data row number, its `url` as written, the kind of problem
    (`reason`, one of `REASONS`) and the specific message (`detail`)."""

    row: int
    url: str
    reason: str
    detail: str


EMPTY_ANNOTATION = "empty annotation"
REASONS = (*IMAGE_REASONS, EMPTY_ANNOTATION)


def load_caption_table(path: str | os.PathLike) -> datasets.Dataset:
    """Read a QuIC-360-style table.

    Returns a `datasets.Dataset` with string columns `url` (as written), `image` (absolute path or URL),
    `query`, `annotation`, `prompt_style` (`"query"`: `query` is a keyword to wrap in the user template;
    `"instruction"`: the `instruction` column, used verbatim as the user turn) and int `row` (1-based data row).
    The `url,instruction,response` variant is renamed to `query` / `annotation`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption table {path} does not exist")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        columns = tuple(next(reader, ()))
        has_rows = next(reader, None) is not None
    style = next((s for cols, s in _COLUMN_SETS.items() if set(cols) <= set(columns)), None)
    if style is None:
        raise ValueError(
            f"{path}: expected columns url,query,annotation or url,instruction,response, found {list(columns)}"
        )
    if not has_rows:
        raise ValueError(f"{path} has a header but no rows")
    # Every column is read as text, verbatim: no NaN conversion, no numeric inference.
    features = datasets.Features({column: datasets.Value("string") for column in columns})
    table = datasets.Dataset.from_csv(
        str(path), delimiter=delimiter, keep_default_na=False, na_filter=False, features=features
    )
    if style == "instruction":
        table = table.rename_columns({"instruction": "query", "response": "annotation"})
    table = table.select_columns(["url", "query", "annotation"])
    base = path.resolve().parent

    def resolve(batch: dict, indices: list[int]) -> dict:
        return {
            "image": [url if is_remote(url) else str(base / url) for url in batch["url"]],
            "prompt_style": [style] * len(indices),
            "row": [index + 1 for index in indices],
        }

    return table.map(resolve, batched=True, with_indices=True)


def _check_image(location: str, aspect_ratio_tolerance: float) -> tuple[str, str] | None:
    """None if the image at `location` (a path or an http(s) URL) would load as a 2:1 panorama, else (reason,
    detail): `probe_panorama` refuses exactly what `load_panorama` would."""
    try:
        probe_panorama(location, aspect_ratio_tolerance)
    except PanoramaImageError as error:
        return error.reason, str(error)
    return None


def scan_images(
    table: datasets.Dataset, aspect_ratio_tolerance: float = 0.01, num_threads: int = 4
) -> tuple[datasets.Dataset, list[RowProblem]]:
    """Check every distinct local image of `table` once; return the usable rows and a problem per dropped row.

    A row is dropped when its image is missing, not an image, truncated/corrupt, a decompression bomb, not 2:1 (after
    EXIF orientation), of an unsupported format or, for http(s) rows, cannot be fetched; the detail names the file or
    URL and the report the row.
    """
    locations = sorted(set(table["image"]))
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        reasons = dict(zip(locations, pool.map(lambda loc: _check_image(loc, aspect_ratio_tolerance), locations)))
    problems = [
        RowProblem(row, url, *reasons[image])
        for row, url, image in zip(table["row"], table["url"], table["image"])
        if reasons[image] is not None
    ]
    if problems:
        bad_rows = {problem.row for problem in problems}
        table = table.filter(lambda rows: [row not in bad_rows for row in rows], input_columns="row", batched=True)
        logger.warning("%d of %d rows dropped: their images cannot be used", len(problems), len(problems) + len(table))
    return table, problems


def write_data_report(output_dir: str | os.PathLike, name: str, total_rows: int, problems: list[RowProblem]) -> Path:
    """Write `<output_dir>/<name>_data_report.json`: rows read, kept, dropped, the count per reason and every
    dropped row. Returns the file's path."""
    counts: dict[str, int] = {}
    for problem in problems:
        counts[problem.reason] = counts.get(problem.reason, 0) + 1
    report = {
        "rows": total_rows,
        "kept": total_rows - len(problems),
        "dropped": len(problems),
        "dropped_by_reason": counts,
        "dropped_rows": [asdict(problem) for problem in problems],
    }
    path = Path(output_dir) / f"{name}_data_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path


__all__ = [
    "REASONS",
    "RowProblem",
    "load_caption_table",
    "scan_images",
    "write_data_report",
]
