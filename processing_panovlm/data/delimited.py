"""Local CSV / TSV tables, read strictly: every defect is refused or reported with its row and line.

Rules (the README's "Data" section repeats them):

* The file is UTF-8, with or without a byte-order mark. Any other encoding is refused, naming the file and the line
  of the first byte that is not UTF-8.
* The first record is the header; names are stripped of surrounding spaces and must be distinct.
* Values are kept verbatim as strings: nothing becomes NaN or a number, `"nan"` stays `"nan"`.
* Standard quoting: a field that holds the delimiter, a quote or a line break is enclosed in double quotes, and a
  quote inside it is doubled. Blank lines are not rows.
* Rows are numbered from 1 (the first record after the header) in each file; details also give the line.
* A record with more or fewer fields than the header (typically a value with an unquoted comma, or a cut line), or
  with broken quoting, is a *malformed row*: it is reported with its row and line and never used (its fields
  cannot be attributed to columns with certainty). A quote that is never closed swallows the rest of the file,
  so it is refused as a whole, naming the line where the quote opened.

`.csv` files are comma-separated, `.tsv` / `.tab` tab-separated; `.gz`, `.bz2` and `.xz` compression is read.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import PurePosixPath

import fsspec

from .problems import MALFORMED_ROW


DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
COMPRESSIONS = (".gz", ".bz2", ".xz")
# Columns the reader adds to the table's own: where each row comes from and what is wrong with it.
ROW, SOURCE, PROBLEM, DETAIL = "__row__", "__source__", "__problem__", "__detail__"
_BOM = b"\xef\xbb\xbf"


class TableError(ValueError):
    """A table that cannot be read at all (not UTF-8, an unclosed quote, no header or rows), naming the file."""
_READER_VERSION = "1"  # part of the cache fingerprint: bump when the rules above change


def table_suffix(path: str | os.PathLike) -> str:
    """The format suffix of `path`, its compression suffix removed: `.csv` for `t.csv.gz`."""
    suffixes = [suffix.lower() for suffix in PurePosixPath(os.fspath(path)).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def is_delimited(path: str | os.PathLike) -> bool:
    return table_suffix(path) in DELIMITERS


def _decoded_lines(path: str, handle) -> Iterator[str]:
    """The file's lines as text, each with its line ending (so quoted line breaks survive); a byte that is not
    UTF-8 raises naming the file and line."""
    for number, raw in enumerate(handle, 1):
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            byte = raw[error.start]
            raise TableError(
                f"{path}: line {number} is not UTF-8 (byte 0x{byte:02x} at column {error.start + 1}); caption tables "
                "must be UTF-8 text: re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 old.csv > new.csv`)"
            ) from None


@contextmanager
def _unlimited_fields():
    # Python's csv module refuses fields over 128 KiB by default; a data: URI in a table is larger than that.
    previous = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _records(path: str) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """`(first line, fields, error)` per record: fields None and the csv module's message for broken quoting.

    `path` is a local path or an fsspec URL (`hf://datasets/...` for a Hub dataset's files)."""
    delimiter = DELIMITERS[table_suffix(path)]
    with fsspec.open(path, "rb", compression="infer") as handle, _unlimited_fields():
        reader = csv.reader(_decoded_lines(path, handle), delimiter=delimiter, strict=True)
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                if "end of data" in str(error):
                    raise TableError(
                        f"{path}: the quote opened in the record starting on line {start} is never closed, so the "
                        "rest of the file would be read as one value; close or remove that quote"
                    ) from None
                yield start, None, f"broken quoting ({error})"
                continue
            if fields:  # blank lines are not rows
                yield start, fields, None


def read_header(path: str | os.PathLike) -> list[str]:
    """The header of a CSV/TSV file; raises when the file is empty, has duplicate column names or no data rows."""
    path = os.fspath(path)
    with closing(_records(path)) as records:
        first = next(records, None)
        if first is None or first[1] is None:
            raise TableError(f"{path} is empty: a caption table starts with a header row (e.g. url,query,annotation)")
        header = [name.strip() for name in first[1]]
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise TableError(f"{path}: the header names columns {duplicates} more than once")
        if next(records, None) is None:
            raise TableError(f"{path} has a header but no rows")
    return header


def iter_rows(paths: list[str]) -> Iterator[dict]:
    """The data rows of CSV/TSV files, one dict per row: the header's columns (None where a malformed row has no
    value), plus `__row__`, `__source__`, `__problem__` and `__detail__` (empty for a good row).

    The generator behind `Dataset.from_generator` / `IterableDataset.from_generator`; `paths` is its shard list.
    """
    for path in paths:
        header = read_header(path)
        records = _records(path)
        next(records)  # the header
        for row, (line, fields, error) in enumerate(records, 1):
            problem, detail = "", ""
            if error is not None:
                problem, detail = MALFORMED_ROW, f"line {line}: {error}"
                fields = []
            elif len(fields) != len(header):
                problem = MALFORMED_ROW
                detail = f"line {line} has {len(fields)} fields where the header has {len(header)}" + (
                    ": a value holding the delimiter must be quoted" if len(fields) > len(header) else ""
                )
            values = {column: (fields[i] if i < len(fields) else None) for i, column in enumerate(header)}
            yield {**values, ROW: row, SOURCE: path, PROBLEM: problem, DETAIL: detail}


def fingerprint(paths: list[str]) -> str:
    """A cache key for the table read from `paths`: the contents of local files, the URLs of remote ones (a Hub
    dataset's file URLs name the commit), and the reader's rules."""
    digest = hashlib.sha256(_READER_VERSION.encode())
    for name in paths:
        digest.update(os.fsencode(name) + b"\0")
        if "://" not in name:
            with open(name, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


__all__ = ["DELIMITERS", "DETAIL", "PROBLEM", "ROW", "SOURCE", "TableError", "fingerprint", "is_delimited", "iter_rows", "read_header", "table_suffix"]
