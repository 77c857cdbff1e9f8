"""Caption tables from any source `datasets` reads, their checks and reports, and the training collator."""

from .arguments import DataArguments
from .captions import load_caption_table
from .checks import StreamChecker, check_rows, scan_images
from .preparation import PreparedTable, prepare_caption_table, stream_caption_table
from .problems import REASONS, ProblemLog, ProblemRecorder, RowProblem, finish_streaming_report, write_data_report


__all__ = [
    "DataArguments",
    "PreparedTable",
    "ProblemLog",
    "ProblemRecorder",
    "REASONS",
    "RowProblem",
    "StreamChecker",
    "check_rows",
    "finish_streaming_report",
    "load_caption_table",
    "prepare_caption_table",
    "scan_images",
    "stream_caption_table",
    "write_data_report",
]
