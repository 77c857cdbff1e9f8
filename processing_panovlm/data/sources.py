"""Where a caption table comes from: anything `datasets` reads, turned into raw `datasets` tables.

A source is

* a local file: CSV / TSV (`.csv`, `.tsv`, `.tab`, read strictly by `delimited`), JSON or JSON Lines (`.json`,
  `.jsonl`, `.ndjson`), Parquet (`.parquet`), Arrow (`.arrow`) or WebDataset shards (`.tar`); `.gz` / `.bz2` /
  `.xz` compressed files too;
* a glob (`shards/*.parquet`) or a list of sources, concatenated in order;
* a `data_files` dict (`{"train": [...], "test": "t.csv"}`), of which the requested split is read;
* a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (`load_from_disk`), which is one
  table like a file: relative image paths start in the folder that holds it;
* a folder laid out like a Hub dataset, or a Hub dataset id (`user/name`, with `split`, `revision` and a
  configuration name), read by `datasets.load_dataset_builder`. A Hub dataset's CSV / TSV files are read by the
  same strict reader as local ones.

Without streaming, every local file is its own table (rows numbered per file, image paths relative to its folder;
in a Hub dataset or a folder laid out like one, relative to its root).
When streaming, local files of one format and folder form one stream with a shard per file, so DataLoader workers
read them in parallel; CSV rows are still numbered per file, other formats count rows per stream.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets.packaged_modules.csv.csv import CsvConfig

from . import delimited


# Local file formats and the `datasets` builder that reads each (CSV / TSV: our strict reader).
BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".tar": "webdataset",
}
SUPPORTED_SUFFIXES = (*delimited.DELIMITERS, *BUILDERS)
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_GLOB_CHARACTERS = re.compile(r"[*?\[]")

Source = str | os.PathLike | Sequence | Mapping


@dataclass
class RawTable:
    """One table as `datasets` reads it, before its columns are mapped.

    `data` holds the table's own columns (CSV / TSV tables add `delimited.ROW`, `SOURCE`, `PROBLEM`, `DETAIL`);
    `source` names it in reports; `base` is the folder relative image paths start from, or the Hub dataset
    `(repo_id, revision)` whose files they name.
    """

    data: datasets.Dataset | datasets.IterableDataset
    source: str
    base: Path | tuple[str, str | None] | None


def _is_local_path(text: str) -> bool:
    """Whether `text` can only be meant as a local path (as opposed to a Hub dataset id)."""
    return (
        os.path.exists(text)
        or delimited.table_suffix(text) in SUPPORTED_SUFFIXES
        or text.startswith(("/", ".", "~"))
        or os.sep in text.strip("/").partition("/")[2]
        or not _HUB_ID.fullmatch(text)
    )


def _expand(source: str) -> list[str]:
    """The local files a path or glob names, in order."""
    if os.path.isfile(source):
        return [source]
    if _GLOB_CHARACTERS.search(source):
        matches = sorted(path for path in glob.glob(source, recursive=True) if os.path.isfile(path))
        if not matches:
            raise FileNotFoundError(f"no caption table matches {source!r}")
        return matches
    raise FileNotFoundError(f"caption table {source} does not exist")


def _check_format(path: str) -> str:
    suffix = delimited.table_suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported table format {suffix or '(no extension)'!r}; supported: "
            f"{', '.join(SUPPORTED_SUFFIXES)} (optionally .gz/.bz2/.xz compressed), a save_to_disk folder or a Hub "
            "dataset id"
        )
    return suffix


def _read_files(paths: list[str], streaming: bool, num_proc: int | None) -> datasets.Dataset | datasets.IterableDataset:
    """One table from files of one format (and, for CSV / TSV, one header)."""
    suffix = delimited.table_suffix(paths[0])
    if suffix in delimited.DELIMITERS:
        header = delimited.read_header(paths[0])
        for path in paths[1:]:
            if delimited.read_header(path) != header:
                raise ValueError(f"{path}: its header differs from {paths[0]}'s, so they cannot be read as one table")
        features = datasets.Features(
            {
                **{column: datasets.Value("string") for column in header},
                delimited.ROW: datasets.Value("int64"),
                delimited.SOURCE: datasets.Value("string"),
                delimited.PROBLEM: datasets.Value("string"),
                delimited.DETAIL: datasets.Value("string"),
            }
        )
        if streaming:
            return datasets.IterableDataset.from_generator(
                delimited.iter_rows, features=features, gen_kwargs={"paths": paths}
            )
        try:
            return datasets.Dataset.from_generator(
                delimited.iter_rows, features=features, gen_kwargs={"paths": paths}, fingerprint=delimited.fingerprint(paths)
            )
        except datasets.exceptions.DatasetGenerationError as error:
            if isinstance(error.__cause__, delimited.TableError):  # our message names the file and line
                raise error.__cause__ from None
            raise
    return datasets.load_dataset(
        BUILDERS[suffix], data_files=paths, split="train", streaming=streaming, num_proc=None if streaming else num_proc
    )


def _file_tables(paths: list[str], streaming: bool, num_proc: int | None) -> list[RawTable]:
    """Files as tables: one per file, or, when streaming, one per (format, folder, CSV header)."""
    for path in paths:
        _check_format(path)
    if not streaming:
        return [RawTable(_read_files([path], False, num_proc), path, Path(path).resolve().parent) for path in paths]
    groups: dict[tuple, list[str]] = {}
    for path in paths:
        suffix = delimited.table_suffix(path)
        header = tuple(delimited.read_header(path)) if suffix in delimited.DELIMITERS else None
        groups.setdefault((suffix, Path(path).resolve().parent, header), []).append(path)
    return [
        RawTable(_read_files(files, True, num_proc), files[0] if len(files) == 1 else f"{folder}/*{suffix}", folder)
        for (suffix, folder, _), files in groups.items()
    ]


def _read_saved(folder: str, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    saved = datasets.load_from_disk(folder)
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise ValueError(f"{folder} has no split {split!r}; its splits: {list(saved)}")
        saved = saved[split]
    # One shard per Arrow file, so DataLoader workers can share the stream.
    return saved.to_iterable_dataset(num_shards=max(1, len(saved.cache_files))) if streaming else saved


def _read_builder(
    path: str, split: str, config: str | None, revision: str | None, streaming: bool, num_proc: int | None
) -> datasets.Dataset | datasets.IterableDataset:
    """A Hub dataset, or a local folder laid out like one, through `datasets.load_dataset_builder`."""
    builder = datasets.load_dataset_builder(path, config, revision=revision)
    if isinstance(builder.config, CsvConfig):
        files = (builder.config.data_files or {}).get(split)
        if not files:
            raise ValueError(f"{path} has no split {split!r}; its splits: {list(builder.config.data_files or {})}")
        return _read_files([str(file) for file in files], streaming, num_proc)
    try:
        if streaming:
            return builder.as_streaming_dataset(split=split)
        builder.download_and_prepare(num_proc=num_proc)
        return builder.as_dataset(split=split)
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path}: cannot read split {split!r} ({error})") from error


def read_source(
    source: Source,
    split: str,
    config: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
    num_proc: int | None = None,
) -> list[RawTable]:
    """The raw tables `source` names, in order (see the module docstring for what a source can be).

    `split` selects the split of a `data_files` dict, a saved `DatasetDict`, a Hub-style folder or a Hub dataset;
    `config` and `revision` apply to Hub datasets. Raises `FileNotFoundError` for a local path that does not exist
    and `ValueError` for an unsupported format or a missing split.
    """
    if isinstance(source, Mapping):
        if split not in source:
            raise ValueError(f"the data_files dict has no split {split!r}; its splits: {list(source)}")
        return read_source(source[split], split, config, revision, streaming, num_proc)
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        if not source:
            raise ValueError("an empty list of caption tables")
        named = [os.fspath(item) for item in source if isinstance(item, (str, os.PathLike))]
        if streaming and len(set(named)) < len(named):
            # A stream is read again every epoch: a table listed twice could not be told from a second reading.
            twice = sorted({name for name in named if named.count(name) > 1})
            raise ValueError(f"a stream lists {twice} more than once: list each table once")
        files = [os.fspath(s) for s in source if isinstance(s, (str, os.PathLike)) and os.path.isfile(s)]
        if streaming and len(files) == len(source):
            return _file_tables(files, True, num_proc)
        return [table for item in source for table in read_source(item, split, config, revision, streaming, num_proc)]
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"a caption table source is a path, a glob, a Hub dataset id, a list of these or a data_files dict, "
            f"not {type(source).__name__}"
        )
    text = os.fspath(source)
    if os.path.isdir(text):
        folder = Path(text).resolve()
        if (folder / "dataset_dict.json").exists() or (folder / "state.json").exists():
            # A saved dataset is one table, like a file: its relative paths start next to it.
            return [RawTable(_read_saved(text, split, streaming), text, folder.parent)]
        return [RawTable(_read_builder(text, split, config, None, streaming, num_proc), text, folder)]
    if _is_local_path(text):
        return _file_tables(_expand(text), streaming, num_proc)
    data = _read_builder(text, split, config, revision, streaming, num_proc)
    return [RawTable(data, text if revision is None else f"{text}@{revision}", (text, revision))]


__all__ = ["BUILDERS", "RawTable", "SUPPORTED_SUFFIXES", "Source", "read_source"]
