"""Which rows of a caption table can be used, and why the others cannot. The rules, applied in this order:

1. A row that could not be read (a malformed CSV/TSV record, no image, a value of the wrong type) is dropped.
2. Where the text is used (language-modelling stages, evaluation): a row without a reference answer or query (a
   null value) is dropped, then one whose reference answer is empty (or only spaces), then one whose query is.
3. Where the text is used: a row with the same image, query, answer and prompt style as an earlier row is a
   duplicate. Evaluation drops it (a repeated row would weigh twice in the scores); training keeps it (a repeated
   example weighs twice, as in any `Dataset`) and counts it in the data report.
4. A row whose image `load_panorama` would refuse (missing, not an image, truncated, a decompression bomb, not 2:1
   after EXIF orientation, an unsupported mode, an unreachable URL) is dropped; each distinct image is checked
   once, through `probe_panorama`.

Each dropped row becomes a `RowProblem` naming the row, its table, the reason and the detail. A prepared table is
checked up front (`check_rows`, then `scan_images`); a stream is checked row by row as it is read (`StreamChecker`),
with the same rules, duplicates being recognised within what one process reads (a stream read again meets its
own rows: they are not duplicates of themselves).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import datasets

from processing_panovlm.image_loading import PanoramaImageError, probe_panorama

from .problems import DUPLICATE_ROW, EMPTY_ANNOTATION, EMPTY_QUERY, MISSING_VALUE, ProblemRecorder, RowProblem


logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("url", "query", "annotation", "prompt_style", "row", "image_id", "source", "problem", "problem_detail")
_IMAGE_CACHE_SIZE = 4096  # distinct images a stream checker remembers (rows of one panorama are usually close)


def _row_key(row: dict) -> bytes:
    """A digest of what makes two rows the same example."""
    text = "\0".join((row["image_id"], row["query"], row["annotation"], row["prompt_style"]))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _problem(row: dict, reason: str, detail: str) -> RowProblem:
    return RowProblem(row["row"], row["url"], reason, detail, row["source"])


def check_row(
    row: dict, needs_text: bool, seen: dict[bytes, tuple[str, int]], rereads: bool = False
) -> tuple[RowProblem | None, bool]:
    """Rules 1-3 for one row: `(problem or None, whether the problem is a duplicate)`. `seen` maps the rows
    accepted so far to their `(source, row)` and is updated. With `rereads` (a stream, read again every epoch), a
    row meeting its own first reading is not a duplicate of itself."""
    if row["problem"]:
        return _problem(row, row["problem"], row["problem_detail"]), False
    if not needs_text:
        return None, False
    for name, what in (("annotation", "reference answer"), ("query", "query")):
        if row[name] is None:
            return _problem(row, MISSING_VALUE, f"no value for the {what}"), False
    if not row["annotation"].strip():
        return _problem(row, EMPTY_ANNOTATION, "the reference answer is empty"), False
    if not row["query"].strip():
        return _problem(row, EMPTY_QUERY, "the query is empty"), False
    key, here = _row_key(row), (row["source"], row["row"])
    if key not in seen:
        seen[key] = here
        return None, False
    if rereads and seen[key] == here:
        return None, False
    source, number = seen[key]
    where = f"row {number}" if source == row["source"] else f"row {number} of {source}"
    return _problem(row, DUPLICATE_ROW, f"same image, query and answer as {where}"), True


def check_rows(
    table: datasets.Dataset, needs_text: bool = True, drop_duplicates: bool = False
) -> tuple[datasets.Dataset, list[RowProblem], list[RowProblem]]:
    """Rules 1-3 for a prepared table (no image is read).

    Returns `(kept rows, problems of the dropped rows, duplicates kept)`; duplicates are dropped (and among the
    problems) with `drop_duplicates`, else kept and listed.
    """
    columns = table.select_columns(list(TEXT_COLUMNS)).to_dict()
    seen: dict[bytes, tuple[str, int]] = {}
    keep, problems, duplicates = [], [], []
    for index in range(len(table)):
        row = {name: columns[name][index] for name in TEXT_COLUMNS}
        problem, duplicate = check_row(row, needs_text, seen)
        if problem is None or (duplicate and not drop_duplicates):
            keep.append(index)
        if problem is not None:
            (duplicates if duplicate and not drop_duplicates else problems).append(problem)
    if problems:
        logger.warning("%d of %d rows dropped before their images are read (see the data report)", len(problems), len(table))
    return (table if len(keep) == len(table) else table.select(keep)), problems, duplicates


def _check_image(image, aspect_ratio_tolerance: float) -> tuple[str, str]:
    """`("", "")` if `image` would load as a 2:1 panorama, else `(reason, detail)`: `probe_panorama` refuses
    exactly what `load_panorama` would."""
    try:
        probe_panorama(image, aspect_ratio_tolerance)
    except PanoramaImageError as error:
        return error.reason, str(error)
    return "", ""


def _check_images(batch: dict, aspect_ratio_tolerance: float, num_threads: int) -> dict:
    with ThreadPoolExecutor(max_workers=num_threads) as pool:  # threads: fetching URLs and reading files wait on I/O
        results = list(pool.map(lambda image: _check_image(image, aspect_ratio_tolerance), batch["image"]))
    return {"reason": [reason for reason, _ in results], "detail": [detail for _, detail in results]}


def scan_images(
    table: datasets.Dataset, aspect_ratio_tolerance: float = 0.01, num_threads: int = 4, num_proc: int | None = None
) -> tuple[datasets.Dataset, list[RowProblem]]:
    """Rule 4 for a prepared table: check every distinct image once; return the usable rows and a problem per row
    dropped.

    Images are checked by `num_proc` processes (default: this one), each with `num_threads` threads; every one of
    them reads images through `probe_panorama`, the header-only twin of `load_panorama`.
    """
    image_ids = table["image_id"]
    first: dict[str, int] = {}
    for index, image_id in enumerate(image_ids):
        first.setdefault(image_id, index)
    distinct = table.select(list(first.values())).select_columns(["image_id", "image"])
    checked = distinct.map(
        _check_images,
        batched=True,
        batch_size=max(32, num_threads),
        num_proc=num_proc,
        fn_kwargs={"aspect_ratio_tolerance": aspect_ratio_tolerance, "num_threads": num_threads},
        remove_columns=["image"],
        # Never from a cache: an image fixed (or broken) since the last scan must be seen as it is now.
        load_from_cache_file=False,
        keep_in_memory=True,
        desc="checking images",
    )
    failed = {
        image_id: (reason, detail)
        for image_id, reason, detail in zip(checked["image_id"], checked["reason"], checked["detail"])
        if reason
    }
    if not failed:
        return table, []
    columns = table.select_columns(["row", "url", "source"]).to_dict()
    problems, keep = [], []
    for index, image_id in enumerate(image_ids):
        if image_id in failed:
            problems.append(RowProblem(columns["row"][index], columns["url"][index], *failed[image_id], columns["source"][index]))
        else:
            keep.append(index)
    logger.warning("%d of %d rows dropped: their images cannot be used", len(problems), len(table))
    return table.select(keep), problems


class StreamChecker:
    """The rules for a stream, one row at a time: `IterableDataset.filter(StreamChecker(...))`.

    Every row read is counted, and every dropped row (and kept duplicate) recorded, in `recorder` (a `ProblemLog`
    when DataLoader workers or several ranks read the stream). The first problem of each kind is logged.
    """

    def __init__(
        self,
        recorder: ProblemRecorder,
        needs_text: bool = True,
        drop_duplicates: bool = False,
        aspect_ratio_tolerance: float = 0.01,
    ):
        self.recorder = recorder
        self.needs_text = needs_text
        self.drop_duplicates = drop_duplicates
        self.aspect_ratio_tolerance = aspect_ratio_tolerance
        self.seen: dict[bytes, tuple[str, int]] = {}
        self.images: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.logged: set[str] = set()

    def _image_result(self, row: dict) -> tuple[str, str]:
        image_id = row["image_id"]
        if image_id in self.images:
            self.images.move_to_end(image_id)
        else:
            self.images[image_id] = _check_image(row["image"], self.aspect_ratio_tolerance)
            if len(self.images) > _IMAGE_CACHE_SIZE:
                self.images.popitem(last=False)
        return self.images[image_id]

    def _record(self, problem: RowProblem, kept: bool) -> None:
        self.recorder.problem(problem, duplicate_kept=kept)
        if problem.reason not in self.logged:
            self.logged.add(problem.reason)
            logger.warning(
                "%s row %d %s (%s): %s; further such rows are counted in the data report",
                *(problem.source, problem.row, "kept" if kept else "dropped", problem.reason, problem.detail),
            )

    def __call__(self, row: dict) -> bool:
        problem, duplicate = check_row(row, self.needs_text, self.seen, rereads=True)
        if duplicate and not self.drop_duplicates:
            self._record(problem, kept=True)
            problem = None
        if problem is None:
            reason, detail = self._image_result(row)
            problem = _problem(row, reason, detail) if reason else None
        if problem is not None:
            self._record(problem, kept=False)
        self.recorder.row_checked(dropped=problem is not None)
        return problem is None


__all__ = ["StreamChecker", "check_row", "check_rows", "scan_images"]
