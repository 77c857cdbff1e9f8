"""Mapping a raw table's columns onto the caption table's, and normalising each row.

Every table, whatever its source, becomes one with the columns of `CAPTION_FEATURES`:

* `url` (the image as written: the path or URL of the table, or the file name stored with an embedded image,
  else `sha1:<digest>` of its bytes), `query`, `annotation` (the reference answer; both None where the table has
  no value), `prompt_style`;
* `image`: what `load_panorama` reads, a string (an absolute path or a URL) for tables of paths, or a
  `datasets.Image(decode=False)` value (`{"bytes", "path"}`) for tables holding images; `image_id` identifies the
  image (the resolved path or URL, or the bytes' digest), so each distinct image is checked and encoded once;
* `row` (1-based data row number in `source`), `source` (the table it comes from);
* `problem` / `problem_detail`: empty for a usable row, else why it cannot be used (a malformed CSV record, a
  missing value, a value of the wrong type). Such rows stay in the table so that `check_rows` reports them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
from huggingface_hub import hf_hub_url

from processing_panovlm.image_loading import DATA_URI_PREFIX, is_remote

from . import delimited
from .arguments import DataArguments
from .problems import MALFORMED_ROW, MISSING_VALUE
from .sources import RawTable


DEFAULT_IMAGE_COLUMN = "url"
DEFAULT_QUERY_COLUMNS = ("query", "instruction")  # QuIC-360, then CORA
DEFAULT_ANSWER_COLUMNS = ("annotation", "response")
_TEXT = (datasets.Value("string"), datasets.Value("large_string"))
_BINARY = (datasets.Value("binary"), datasets.Value("large_binary"))


def caption_features(embedded_images: bool) -> datasets.Features:
    """The caption table's features; `image` is a string column, or `Image(decode=False)` for embedded images."""
    text = datasets.Value("string")
    return datasets.Features(
        {
            "url": text,
            "query": text,
            "annotation": text,
            "image": datasets.Image(decode=False) if embedded_images else text,
            "prompt_style": text,
            "row": datasets.Value("int64"),
            "image_id": text,
            "source": text,
            "problem": text,
            "problem_detail": text,
        }
    )


@dataclass(frozen=True)
class ColumnMap:
    """Which raw columns hold the image, the query and the answer, and how queries become prompts."""

    image: str
    query: str
    answer: str
    prompt_style: str


def _feature(features: datasets.Features, name: str):
    """The feature of column `name`, a dotted name reading into struct columns (`json.query`); None if absent."""
    if name in features:
        return features[name]
    head, _, rest = name.partition(".")
    if rest and isinstance(features.get(head), dict):
        return _feature(datasets.Features(features[head]), rest)
    return None


def map_columns(features: datasets.Features, source: str, args: DataArguments) -> ColumnMap:
    """Resolve `args`' column names (or the defaults) against a table's features; raise naming what is missing."""
    names = [name for name in features if not name.startswith("__")]
    defaults_hint = (
        f"{source}: expected columns url,query,annotation or url,instruction,response (or name them with "
        f"--image-column / --query-column / --answer-column), found {names}"
    )

    def pick(explicit: str | None, candidates: tuple[str, ...], what: str) -> str:
        if explicit is not None:
            if _feature(features, explicit) is None:
                raise ValueError(f"{source}: no column {explicit!r} for the {what}; its columns: {names}")
            return explicit
        found = next((name for name in candidates if name in features), None)
        if found is None:
            raise ValueError(defaults_hint)
        return found

    if args.image_column is None and DEFAULT_IMAGE_COLUMN not in features:
        images = [name for name in names if isinstance(features[name], datasets.Image)]
        if len(images) != 1:
            raise ValueError(defaults_hint)
        image = images[0]
    else:
        image = pick(args.image_column, (DEFAULT_IMAGE_COLUMN,), "image")
    query = pick(args.query_column, DEFAULT_QUERY_COLUMNS, "query")
    answer = pick(args.answer_column, DEFAULT_ANSWER_COLUMNS, "answer")
    for name, what in ((query, "query"), (answer, "answer")):
        if _feature(features, name) not in _TEXT:
            raise ValueError(f"{source}: the {what} column {name!r} holds {_feature(features, name)}, not text")
    kind = _feature(features, image)
    if not (kind in _TEXT or kind in _BINARY or isinstance(kind, datasets.Image)):
        raise ValueError(
            f"{source}: the image column {image!r} holds {kind}; expected paths or URLs (text), image bytes or a "
            "datasets.Image column"
        )
    style = args.prompt_style or ("instruction" if query.rpartition(".")[2] == "instruction" else "query")
    return ColumnMap(image, query, answer, style)


def embeds_images(features: datasets.Features, columns: ColumnMap) -> bool:
    return _feature(features, columns.image) not in _TEXT


def _value(record: dict, name: str):
    if name in record:
        return record[name]
    head, _, rest = name.partition(".")
    inner = record.get(head)
    return None if inner is None or not rest else _value(inner, rest)


def _column(batch: dict, name: str) -> list:
    """The values of column `name` in a batch; a dotted name reads a field of a struct column."""
    if name in batch:
        return batch[name]
    head, _, rest = name.partition(".")
    return [None if record is None else _value(record, rest) for record in batch[head]]


def _resolve(location: str, base: Path | tuple[str, str | None] | None) -> str:
    """An absolute path or URL for `location` (relative paths start at the table's folder, or its Hub dataset)."""
    if is_remote(location) or location.startswith(DATA_URI_PREFIX) or os.path.isabs(location) or base is None:
        return location
    if isinstance(base, tuple):
        repo_id, revision = base
        return hf_hub_url(repo_id, location, repo_type="dataset", revision=revision)
    return str(base / location)


def _digest(data: bytes) -> str:
    return "sha1:" + hashlib.sha1(data).hexdigest()


def _normalise_image(value, column: str, base) -> tuple[str, object, str, str, str]:
    """`(url, image, image_id, reason, detail)` of one image value; `reason` is empty when it is usable."""
    if isinstance(value, (bytes, bytearray)):
        value = {"bytes": bytes(value), "path": None}
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return path or _digest(data), {"bytes": data, "path": path}, _digest(data), "", ""
        value = path
    if value is None or (isinstance(value, str) and not value.strip()):
        return value or "", None, "", MISSING_VALUE, f"no image in column {column!r}"
    if not isinstance(value, str):
        detail = f"column {column!r} holds {type(value).__name__}, not an image or its location"
        return str(value), None, "", MALFORMED_ROW, detail
    resolved = _resolve(value, base)
    return value, resolved, resolved, "", ""


def normalise_batch(
    batch: dict, indices: list[int], source: str, base, columns: ColumnMap, embedded: bool
) -> dict:
    """The caption-table columns of a batch of raw rows (a batched `map` function)."""
    size = len(indices)
    images, queries, answers = (_column(batch, name) for name in (columns.image, columns.query, columns.answer))
    rows = batch.get(delimited.ROW) or [index + 1 for index in indices]
    sources = batch.get(delimited.SOURCE) or [source] * size
    problems = batch.get(delimited.PROBLEM) or [""] * size
    details = batch.get(delimited.DETAIL) or [""] * size
    out = {name: [] for name in caption_features(embedded)}
    for i in range(size):
        problem, detail = problems[i], details[i]
        url, image, image_id, image_problem, image_detail = _normalise_image(images[i], columns.image, base)
        if not problem and image_problem:
            problem, detail = image_problem, image_detail
        texts = []
        for value, name in ((queries[i], columns.query), (answers[i], columns.answer)):
            # A missing text (None) stays None: only where the text is used is it a problem (`check_rows`).
            if not problem and value is not None and not isinstance(value, str):
                problem, detail = MALFORMED_ROW, f"column {name!r} holds {value!r}, not text"
            texts.append(value if value is None or isinstance(value, str) else "")
        if problem:
            image = None if embedded else ""
        elif embedded and isinstance(image, str):
            image = {"bytes": None, "path": image}
        elif not embedded and not isinstance(image, str):
            raise ValueError(f"{sources[i]}: row {rows[i]} holds an embedded image in a column of paths")
        values = (url, *texts, image, columns.prompt_style, rows[i], image_id, sources[i], problem, detail)
        for name, value in zip(out, values):
            out[name].append(value)
    return out


def normalise(table: RawTable, args: DataArguments) -> datasets.Dataset | datasets.IterableDataset:
    """`table` with the caption-table columns (`caption_features`) instead of its own."""
    data = table.data
    features = data.features
    if features is None:
        raise ValueError(
            f"{table.source}: the stream does not declare its columns; read it without streaming, or from files "
            "whose format declares them (Parquet, Arrow, WebDataset, CSV)"
        )
    columns = map_columns(features, table.source, args)
    embedded = embeds_images(features, columns)
    if isinstance(features.get(columns.image), datasets.Image):
        # Never decode here: the loader decodes (and checks) every image the same way, where it is used.
        data = data.cast_column(columns.image, datasets.Image(decode=False))
    kwargs = {}
    if isinstance(data, datasets.Dataset):
        if len(data) == 0:
            raise ValueError(f"{table.source} has no rows")
        kwargs.update(num_proc=args.num_proc, desc=f"reading {table.source}")
    return data.map(
        normalise_batch,
        batched=True,
        with_indices=True,
        remove_columns=list(features),
        features=caption_features(embedded),
        fn_kwargs={"source": table.source, "base": table.base, "columns": columns, "embedded": embedded},
        **kwargs,
    )


__all__ = [
    "ColumnMap",
    "DEFAULT_ANSWER_COLUMNS",
    "DEFAULT_IMAGE_COLUMN",
    "DEFAULT_QUERY_COLUMNS",
    "caption_features",
    "map_columns",
    "normalise",
    "normalise_batch",
]
