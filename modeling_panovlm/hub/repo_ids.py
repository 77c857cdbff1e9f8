"""What a Hugging Face Hub repository id looks like, and the repository a recorded name or local path refers to."""

from __future__ import annotations

import os
import re
from pathlib import Path


# What a Hub repository id looks like (`namespace/name`); anything else recorded as a model name is a local path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# The cache layout of `huggingface_hub` (`.../models--namespace--name/snapshots/<commit>`), which still names the repo.
_HUB_CACHE_DIR = re.compile(r"models--(?P<namespace>[\w.-]+?)--(?P<name>[\w.-]+)/snapshots/[0-9a-f]{40}/?$")


def hub_repo_id(name_or_path: str | os.PathLike | None) -> str | None:
    """The Hub repository `name_or_path` refers to: itself when it is a repo id that is not a local directory, the
    repo of a `huggingface_hub` cache snapshot directory, else `None` (a plain local path, or nothing recorded)."""
    if not name_or_path:
        return None
    text = str(name_or_path)
    cached = _HUB_CACHE_DIR.search(text.replace(os.sep, "/"))
    if cached:
        return f"{cached['namespace']}/{cached['name']}"
    return text if HUB_ID.fullmatch(text) and not Path(text).exists() else None


__all__ = ["HUB_ID", "hub_repo_id"]
