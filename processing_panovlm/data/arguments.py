"""`DataArguments`: how caption tables are read, for training, evaluation and the data scan alike.

The table itself is named where it is used (`train_csv` / `eval_csv` of a stage, the evaluation's table): a local
file of any common format, a glob, a list of sources (concatenated), a `data_files` dict, a `save_to_disk`
directory, a folder laid out like a Hub dataset, or a Hub dataset id. These options say how to read it. Each field
has its help text in `metadata`, so `transformers.HfArgumentParser(DataArguments)` builds the command-line flags
(`--image-column`, `--streaming`, ...) and a YAML run file uses the same names as keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field


PROMPT_STYLES = ("query", "instruction")


@dataclass
class DataArguments:
    """Options for reading caption tables (see `processing_panovlm.data.load_caption_table`)."""

    image_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the panorama: a path (relative to the table's folder, or to the root of a Hub "
            "dataset), an http(s) URL, image bytes or a datasets.Image value. Default: `url`, else the table's only "
            "datasets.Image column. A dotted name (`json.image`) reads a field of a struct column."
        },
    )
    query_column: str | None = field(
        default=None,
        metadata={"help": "Column holding the question or query. Default: `query` (QuIC-360), else `instruction` (CORA)."},
    )
    answer_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the reference caption or answer. Default: `annotation` (QuIC-360), else "
            "`response` (CORA)."
        },
    )
    prompt_style: str | None = field(
        default=None,
        metadata={
            "help": "`query`: the query is wrapped in the processor's saved user template (QuIC-360 keywords such "
            "as `location`); `instruction`: the query is the whole user turn, verbatim. Default: `instruction` when "
            "the query column is named `instruction`, else `query`.",
            "choices": list(PROMPT_STYLES),
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration (subset) name of a Hub dataset (the `name` of `load_dataset`)."}
    )
    train_split: str = field(
        default="train",
        metadata={
            "help": "Split read for training from a Hub dataset, a data_files dict or a saved DatasetDict (a plain "
            "file, glob or list of files is one table and has no splits)."
        },
    )
    eval_split: str = field(
        default="test",
        metadata={
            "help": "Split read for evaluation (and a stage's eval table) from a Hub dataset, a data_files dict or a "
            "saved DatasetDict."
        },
    )
    revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of a Hub dataset (default: its main branch)."}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the table as a stream (datasets.IterableDataset) instead of preparing it first: rows are "
            "checked as they pass and the data report is written at the end. Training then needs --max-steps."
        },
    )
    num_proc: int | None = field(
        default=None,
        metadata={"help": "Processes for preparing a table (reading, normalising and scanning its images)."},
    )

    def __post_init__(self):
        if self.prompt_style is not None and self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {list(PROMPT_STYLES)} or None, got {self.prompt_style!r}")
        if self.num_proc is not None and (isinstance(self.num_proc, bool) or not isinstance(self.num_proc, int)):
            raise TypeError(f"num_proc must be an int or None, got {self.num_proc!r}")
        if self.num_proc is not None and self.num_proc < 1:
            raise ValueError(f"num_proc must be >= 1 (or None for one process), got {self.num_proc}")
        for name in ("image_column", "query_column", "answer_column", "dataset_config", "revision"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
        for name in ("train_split", "eval_split"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty split name, got {value!r}")
        if not isinstance(self.streaming, bool):
            raise TypeError(f"streaming must be true or false, got {self.streaming!r}")


__all__ = ["DataArguments", "PROMPT_STYLES"]
