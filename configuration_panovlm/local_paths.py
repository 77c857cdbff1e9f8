"""Which names can only be local paths, and the error for one that does not exist.

transformers treats every string it cannot find on disk as a Hub repo id, so a mistyped local directory reports
"Repo id must be in the form ..." and never says the directory is missing. A name that is a `PathLike`, or that no
Hub repo id could be (`./run`, `/abs/dir`, `~/x`, `out/no/such/run`), is a local path.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


def is_local_path(name_or_path: str | os.PathLike) -> bool:
    """Whether `name_or_path` exists on disk or cannot be a Hub repo id."""
    if isinstance(name_or_path, os.PathLike) or Path(os.fspath(name_or_path)).expanduser().exists():
        return True
    try:
        validate_repo_id(os.fspath(name_or_path))
    except HFValidationError:
        return True
    return False


def check_local_path(name_or_path: str | os.PathLike, kind: str = "model") -> None:
    """Raise `FileNotFoundError` naming the directory when `name_or_path` can only be local and does not exist.

    A Hub repo id is left alone (transformers looks it up)."""
    path = Path(os.fspath(name_or_path)).expanduser()
    if is_local_path(name_or_path) and not path.exists():
        raise FileNotFoundError(f"{kind} directory {path} does not exist")


__all__ = ["check_local_path", "is_local_path"]
