"""A caption table ready for training or evaluation: read, checked (rules in `checks`), its problems reported.

`prepare_caption_table` reads and checks a table up front and returns the usable rows with every problem;
`stream_caption_table` returns a stream that checks its rows as they pass and records what it drops in a
`ProblemRecorder` (a `ProblemLog` shared by DataLoader workers and ranks, turned into the data report at the end).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from .arguments import DataArguments
from .captions import load_caption_table
from .checks import StreamChecker, check_rows, scan_images
from .problems import ProblemRecorder, RowProblem, write_data_report
from .sources import Source


@dataclass
class PreparedTable:
    """The usable rows of a table (`rows`), how many were read, the problem of every dropped row (in table order)
    and the duplicate rows kept (training keeps them; see `checks`)."""

    rows: datasets.Dataset
    rows_read: int
    problems: list[RowProblem] = field(default_factory=list)
    duplicates_kept: list[RowProblem] = field(default_factory=list)

    def write_report(self, output_dir: str | os.PathLike, name: str) -> Path:
        """`<output_dir>/<name>_data_report.json` (see `write_data_report`)."""
        return write_data_report(output_dir, name, self.rows_read, self.problems, duplicates_kept=self.duplicates_kept)


def prepare_caption_table(
    source: Source,
    data_args: DataArguments | None = None,
    *,
    split: str | None = None,
    needs_text: bool = True,
    drop_duplicates: bool = False,
    aspect_ratio_tolerance: float = 0.01,
) -> PreparedTable:
    """Read `source` (see `load_caption_table`; `data_args.streaming` does not apply: the table is read whole), drop
    every row that cannot be used and say why.

    Args:
        needs_text: the rows' text is used (language-modelling stages, evaluation): empty answers and queries are
            dropped and duplicates recognised. The vision stage reads only images.
        drop_duplicates: drop rows repeating an earlier one (evaluation) instead of keeping and listing them.
        aspect_ratio_tolerance: as the image processor's: panoramas must be 2:1 within it.
    """
    data_args = dataclasses.replace(data_args or DataArguments(), streaming=False)
    table = load_caption_table(source, data_args, split=split)
    kept, problems, duplicates = check_rows(table, needs_text, drop_duplicates)
    kept, image_problems = scan_images(kept, aspect_ratio_tolerance, num_proc=data_args.num_proc)
    if problems and image_problems:
        columns = table.select_columns(["source", "row"]).to_dict()
        position = {key: index for index, key in enumerate(zip(columns["source"], columns["row"]))}
        problems = sorted(problems + image_problems, key=lambda problem: position[problem.source, problem.row])
    else:
        problems = problems or image_problems
    return PreparedTable(kept, len(table), problems, duplicates)


def stream_caption_table(
    source: Source,
    data_args: DataArguments | None = None,
    *,
    recorder: ProblemRecorder,
    split: str | None = None,
    needs_text: bool = True,
    drop_duplicates: bool = False,
    aspect_ratio_tolerance: float = 0.01,
) -> datasets.IterableDataset:
    """`source` as a stream of usable rows (`data_args.streaming` is implied), each row checked as it is read.

    What is read and dropped goes to `recorder`: a `ProblemRecorder` for a stream read in this process, a
    `ProblemLog` (then `finish_streaming_report`) when DataLoader workers or several ranks read it. The other
    arguments are `prepare_caption_table`'s.
    """
    data_args = dataclasses.replace(data_args or DataArguments(), streaming=True)
    table = load_caption_table(source, data_args, split=split)
    return table.filter(StreamChecker(recorder, needs_text, drop_duplicates, aspect_ratio_tolerance))


__all__ = ["PreparedTable", "prepare_caption_table", "stream_caption_table"]
