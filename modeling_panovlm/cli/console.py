"""What a person sees from a `panovlm` command: log records through transformers' logging, a log file.

`configure_logging` routes transformers' records and PanoVLM's own (`configuration_panovlm`, `processing_panovlm`,
`modeling_panovlm`) to one console handler on stderr, at the verbosity `--log-level` / `--quiet` ask for, else
transformers' (`TRANSFORMERS_VERBOSITY`, warning by default). Only the main process shows more than warnings.
Python warnings are captured too: those raised by PanoVLM's code reach the console; library warnings (deprecations
inside transformers, PEFT...) go only to the log file, which `attach_log_file` opens in the output directory and
which also keeps every INFO record. The progress bars are the Trainer's (tqdm, on stderr).

A command's results (answers, reports, result tables) are its product, not log records: the commands `print` them
to stdout, so `panovlm infer ... > answers.txt` keeps the answers alone and `--quiet` or a log level never hides
them. Everything else goes through logging to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import datasets
import transformers
from tqdm.auto import tqdm


LIBRARY_LOGGERS = ("configuration_panovlm", "processing_panovlm", "modeling_panovlm")
LEVELS = ("debug", "info", "warning", "error", "critical")
_PACKAGE_DIRS = tuple(str(Path(__file__).resolve().parents[2] / name) for name in LIBRARY_LOGGERS)
_installed: dict[str, logging.Handler] = {}


class _Console(logging.Handler):
    """Writes records to whatever `sys.stderr` is when they come (test runners swap it), through `tqdm.write`, so
    that a line logged while a progress bar runs does not break the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging.StreamHandler's contract: report a failed emit on stderr, never raise it
            self.handleError(record)


class _LibraryWarnings(logging.Filter):
    """Keeps Python warnings raised outside PanoVLM's packages off the console, counting them."""

    def __init__(self):
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "py.warnings" or any(root in record.getMessage() for root in _PACKAGE_DIRS):
            return True
        self.dropped += 1
        return False


def is_main_process() -> bool:
    """Whether this is the main process of a distributed launch (torchrun / accelerate set RANK), or the only one."""
    return int(os.environ.get("RANK", "0")) == 0


def configure_logging(
    log_level: str | None = None,
    quiet: bool = False,
    log_level_replica: str | None = None,
    default: str | None = None,
) -> int:
    """Set up the console for a command and return its level (see the module docstring). `log_level` is one of
    `LEVELS` (or None / "passive": transformers' verbosity); `quiet` shows errors only, without progress bars. The
    other processes of a distributed launch show warnings and errors, or what `log_level_replica` asks for (as
    `TrainingArguments.log_level_replica`). `default` is the level of PanoVLM's own records when neither `log_level`
    nor `TRANSFORMERS_VERBOSITY` says one (evaluation shows its progress lines at info; transformers' info lines,
    every file it loads, stay hidden)."""
    main = is_main_process()
    if quiet:
        console = logging.ERROR
    elif main or log_level_replica in (None, "passive"):
        console = _level(log_level) if main else max(_level(log_level), logging.WARNING)
    else:
        console = _level(log_level_replica)
    ours = console
    if (
        default is not None
        and log_level is None
        and main
        and not quiet
        and not os.environ.get("TRANSFORMERS_VERBOSITY")
    ):
        ours = _level(default)
    hf_logging = transformers.utils.logging
    # With a log file (main process only), records down to INFO are emitted for it; the console handler filters them.
    emitted = min(console, logging.INFO) if "file" in _installed else console
    hf_logging.set_verbosity(emitted)
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(min(emitted, ours))
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    handler = _Console()
    handler.setLevel(min(console, ours))
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_LibraryWarnings())
    if ours < console:
        handler.addFilter(lambda record: record.levelno >= console or record.name.split(".")[0] in LIBRARY_LOGGERS)
    _replace("console", handler)
    # The training bars stay (the Trainer's own, off with --quiet); the bars of each table filter and of every weight
    # load and save would bury them.
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    return console


def _level(name: str | None) -> int:
    """The logging level of a `LEVELS` name; None or "passive": transformers' verbosity (`TRANSFORMERS_VERBOSITY`)."""
    if name in (None, "passive"):
        return transformers.utils.logging.get_verbosity()
    if name == "detail":  # TrainingArguments' most verbose level
        return logging.DEBUG
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {LEVELS}, got {name!r}")
    return transformers.utils.logging.get_log_levels_dict()[name]


def attach_log_file(path: str | Path, level: int = logging.INFO) -> Path | None:
    """Append every record at `level` and above (library warnings included) to `path`; main process only (returns
    None elsewhere)."""
    if not is_main_process():
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _replace("file", handler)
    # The file keeps records the console does not show: let them be emitted (the console handler filters them).
    hf_logging = transformers.utils.logging
    hf_logging.set_verbosity(min(hf_logging.get_verbosity(), level))
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.setLevel(min(library.getEffectiveLevel(), level))
    logging.getLogger(__name__).info("command line: %s", " ".join(sys.argv))
    return path


def library_warnings_logged() -> int:
    """How many library warnings were kept off the console since `configure_logging`."""
    handler = _installed.get("console")
    return sum(f.dropped for f in handler.filters if isinstance(f, _LibraryWarnings)) if handler else 0


def _replace(kind: str, handler: logging.Handler) -> None:
    """Install `handler` on the root logger in place of the one this module installed before (commands can run
    several times in one process)."""
    root = logging.getLogger()
    previous = _installed.pop(kind, None)
    if previous is not None:
        root.removeHandler(previous)
        previous.close()
    root.addHandler(handler)
    _installed[kind] = handler


__all__ = ["LEVELS", "attach_log_file", "configure_logging", "is_main_process", "library_warnings_logged"]
