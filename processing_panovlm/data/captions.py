"""Panorama captioning data: reading a caption table from any source `datasets` reads.

`load_caption_table(source, data_args)` reads a table (QuIC-360's `url,query,annotation` by default, CORA's
`url,instruction,response` recognised, other column names mapped by `DataArguments`) from a local file of any common
format, a glob, a list of sources (concatenated), a `data_files` dict, a `save_to_disk` folder or a Hub dataset,
and gives it the caption table's columns (`columns.caption_features`). Images are not decoded here; `check_rows`
and `scan_images` (`checks`) report every row that cannot be used, with its reason, and `prepare_caption_table` /
`stream_caption_table` (`preparation`) run both; nothing is dropped silently.

Training and evaluation build prompts with the same `PanoVLMProcessor.build_messages` and chat template (the prompt
format saved with the processor), so the image placeholder and the wording are identical in both.
"""

from __future__ import annotations

import logging

import datasets

from .arguments import DataArguments
from .checks import check_rows, scan_images
from .columns import caption_features, normalise
from .problems import EMPTY_ANNOTATION, EMPTY_QUERY, REASONS, RowProblem, write_data_report
from .sources import Source, read_source


logger = logging.getLogger(__name__)


def _concatenate(tables: list) -> datasets.Dataset | datasets.IterableDataset:
    if len(tables) == 1:
        return tables[0]
    if len({isinstance(table.features["image"], datasets.Image) for table in tables}) > 1:
        # Tables of paths next to tables holding images: a path becomes an image value naming that path.
        tables = [table.cast(caption_features(embedded_images=True)) for table in tables]
    return datasets.concatenate_datasets(tables)


def load_caption_table(
    source: Source, data_args: DataArguments | None = None, *, split: str | None = None
) -> datasets.Dataset | datasets.IterableDataset:
    """Read a caption table, with the caption-table columns whatever its source.

    Args:
        source: a local file (CSV, TSV, JSON, JSON Lines, Parquet, Arrow, WebDataset `.tar`), a glob, a list of
            sources (concatenated in order), a `data_files` dict, a `save_to_disk` folder, a folder laid out like a
            Hub dataset, or a Hub dataset id.
        data_args: column names, Hub configuration / revision, streaming and processes (defaults: QuIC-360 columns,
            no streaming).
        split: the split to read from a `data_files` dict, a saved `DatasetDict` or a Hub dataset (default
            `data_args.train_split`); a file, glob or list of files is one table whatever the split.

    Returns:
        A `datasets.Dataset` (an `IterableDataset` with `data_args.streaming`) with string columns `url` (the image
        as written), `query`, `annotation`, `prompt_style` (`"query"`: wrap the query in the user template;
        `"instruction"`: the query is the user turn, verbatim), `image` (what `load_panorama` reads: an absolute
        path or URL, or a `datasets.Image(decode=False)` value for embedded images), `image_id`, `source`, int
        `row` (1-based data row in `source`) and `problem` / `problem_detail` (empty for a usable row; see
        `check_rows`). Values are kept verbatim: a reference that reads "nan" stays "nan".
    """
    data_args = data_args or DataArguments()
    raw = read_source(
        source,
        split or data_args.train_split,
        data_args.dataset_config,
        data_args.revision,
        data_args.streaming,
        data_args.num_proc,
    )
    return _concatenate([normalise(table, data_args) for table in raw])


__all__ = [
    "DataArguments",
    "EMPTY_ANNOTATION",
    "EMPTY_QUERY",
    "REASONS",
    "RowProblem",
    "check_rows",
    "load_caption_table",
    "scan_images",
    "write_data_report",
]
