"""Rows that cannot be used, and the data report that lists them (nothing is dropped silently).

Each unusable row becomes a `RowProblem` with the kind of problem (`reason`, one of `REASONS`) and a message naming
what is wrong. A prepared table writes its problems once (`write_data_report`); a streamed table records them as rows pass, in a
log shared by whichever processes read the stream (DataLoader workers, several ranks), and `finish_streaming_report`
turns the log into the same report at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from configuration_panovlm.atomic_files import write_text_atomically
from processing_panovlm.image_loading import REASONS as IMAGE_REASONS


# Table-level reasons, next to the image loader's (`processing_panovlm.image_loading.REASONS`).
MALFORMED_ROW = "malformed row"  # a CSV/TSV record whose field count differs from the header's
MISSING_VALUE = "missing value"  # no value (null, or an empty image location) in a mapped column
EMPTY_QUERY = "empty query"
EMPTY_ANNOTATION = "empty annotation"
DUPLICATE_ROW = "duplicate row"  # same image, query and answer as an earlier row
REASONS = (*IMAGE_REASONS, MALFORMED_ROW, MISSING_VALUE, EMPTY_QUERY, EMPTY_ANNOTATION, DUPLICATE_ROW)


@dataclass(frozen=True)
class RowProblem:
    """A table row that cannot be used: its 1-based data row number within `source` (the header is not a row),
    its `url` (the image as written), the kind of problem (`reason`, one of `REASONS`), the specific message
    (`detail`) and the table it comes from (`source`)."""

    row: int
    url: str
    reason: str
    detail: str
    source: str = ""


def _write_json_atomically(path: Path, payload: dict) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def report_path(output_dir: str | os.PathLike, name: str) -> Path:
    return Path(output_dir) / f"{name}_data_report.json"


def _distinct(problems: Iterable[RowProblem]) -> list[RowProblem]:
    return list(dict.fromkeys(problems))


def write_data_report(
    output_dir: str | os.PathLike,
    name: str,
    total_rows: int,
    problems: Sequence[RowProblem],
    *,
    duplicates_kept: Sequence[RowProblem] = (),
    dropped_reads: int | None = None,
) -> Path:
    """Write `<output_dir>/<name>_data_report.json` and return its path.

    It holds the rows read (`rows`), kept and dropped, the count per reason and every dropped row; `duplicates_kept`
    lists rows that repeat an earlier one but are kept (training keeps repeated examples, evaluation drops them).

    For a stream (`dropped_reads` given), `rows` / `kept` / `dropped` count row *reads*: a stream read again (a
    second epoch, each evaluation during training) counts its rows again, while `dropped_rows` and
    `dropped_by_reason` name each bad row once.
    """
    distinct = _distinct(problems)
    dropped = len(distinct) if dropped_reads is None else dropped_reads
    report = {
        "rows": total_rows,
        "kept": total_rows - dropped,
        "dropped": dropped,
        "dropped_by_reason": dict(Counter(problem.reason for problem in distinct)),
        "dropped_rows": [asdict(problem) for problem in distinct],
        "duplicates_kept": len(_distinct(duplicates_kept)),
        "duplicate_rows_kept": [asdict(problem) for problem in _distinct(duplicates_kept)],
        "streaming": dropped_reads is not None,
    }
    path = report_path(output_dir, name)
    _write_json_atomically(path, report)
    return path


class ProblemRecorder:
    """Collects what a stream's checks find, in this process (evaluation reads its stream in one process)."""

    def __init__(self):
        self.rows = 0
        self.dropped = 0
        self.problems: list[RowProblem] = []
        self.duplicates_kept: list[RowProblem] = []

    def row_checked(self, dropped: bool) -> None:
        self.rows += 1
        self.dropped += dropped

    def problem(self, problem: RowProblem, duplicate_kept: bool = False) -> None:
        (self.duplicates_kept if duplicate_kept else self.problems).append(problem)


class ProblemLog(ProblemRecorder):
    """Where a streamed table's checks record what they see, shared by every process that reads the stream.

    The log is a folder `<output_dir>/<name>_data_log/`: each problem is one JSON line appended to `problems.jsonl`
    with a single `write` on a file opened with `O_APPEND` (lines from DataLoader workers and ranks never
    interleave), and each reading process keeps its own counts in a small file it rewrites in place after every
    row, so they are exact however the stream ends (`max_steps` reached, a worker shut down). The object pickles
    into worker processes without this process's counts.
    """

    def __init__(self, output_dir: str | os.PathLike, name: str):
        super().__init__()
        self.folder = Path(output_dir) / f"{name}_data_log"
        self._counts: tuple[int, Path] | None = None  # (pid, file) of this process's counts

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_counts": None, "rows": 0, "dropped": 0, "problems": [], "duplicates_kept": []}

    def reset(self) -> None:
        """Start an empty log (a previous run's records would otherwise be counted again)."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)

    def row_checked(self, dropped: bool) -> None:
        if self._counts is None or self._counts[0] != os.getpid():
            self.rows = self.dropped = 0  # a new process (a forked worker) counts its own rows
            self._counts = (os.getpid(), self.folder / f"rows-{os.getpid()}-{uuid.uuid4().hex}.count")
        super().row_checked(dropped)
        descriptor = os.open(self._counts[1], os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(descriptor, b"%20d %20d" % (self.rows, self.dropped), 0)  # same length every time
        finally:
            os.close(descriptor)

    def problem(self, problem: RowProblem, duplicate_kept: bool = False) -> None:
        line = (json.dumps({"problem": asdict(problem), "kept": duplicate_kept}, ensure_ascii=False) + "\n").encode()
        descriptor = os.open(self.folder / "problems.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)

    def read(self) -> tuple[int, int, list[RowProblem], list[RowProblem]]:
        """(rows read, rows dropped, problems, duplicates kept) recorded by every process so far."""
        rows = dropped = 0
        for path in self.folder.glob("rows-*.count"):
            counts = path.read_bytes().split()
            if counts:
                rows, dropped = rows + int(counts[0]), dropped + int(counts[1])
        problems, kept = [], []
        log = self.folder / "problems.jsonl"
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{log}, line {number}: not a JSON record ({error})") from error
            (kept if record["kept"] else problems).append(RowProblem(**record["problem"]))
        return rows, dropped, problems, kept


def finish_streaming_report(output_dir: str | os.PathLike, names: Iterable[str] = ("train", "eval")) -> list[Path]:
    """Turn the logs of streamed tables (`<name>_data_log/`) into `<name>_data_report.json`.

    Call once every reader is done (after training). Logs that do not exist are skipped; a log is removed once its
    report is written. Returns the reports written.
    """
    written = []
    for name in names:
        log = ProblemLog(output_dir, name)
        if not log.folder.exists():
            continue
        rows, dropped, problems, kept = log.read()
        written.append(write_data_report(output_dir, name, rows, problems, duplicates_kept=kept, dropped_reads=dropped))
        shutil.rmtree(log.folder)
    return written


__all__ = [
    "DUPLICATE_ROW",
    "EMPTY_ANNOTATION",
    "EMPTY_QUERY",
    "MALFORMED_ROW",
    "MISSING_VALUE",
    "REASONS",
    "ProblemLog",
    "ProblemRecorder",
    "RowProblem",
    "finish_streaming_report",
    "report_path",
    "write_data_report",
]
