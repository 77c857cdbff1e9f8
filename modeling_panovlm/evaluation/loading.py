"""Loading a model to evaluate or query: a PanoVLM checkpoint or any `AutoModelForImageTextToText` one, optionally
with a PEFT adapter, with errors that say which directory is missing instead of transformers' "Repo id must be in
the form ..." (what a local path that does not exist otherwise produces)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from modeling_panovlm.modeling_panovlm import PanoVLMForConditionalGeneration


T = TypeVar("T")


def check_checkpoint_source(
    name_or_path: str | os.PathLike,
    kind: str = "model",
    markers: tuple[str, ...] = ("config.json", "adapter_config.json"),
) -> None:
    """Refuse, before anything is loaded, a `name_or_path` that can only be a local directory and is not a usable
    one.

    A value that exists on disk, or that cannot be a Hub repo id (`./run`, `/abs/dir`, `a/b/c`, ...), is a local path:
    it must be a directory holding one of `markers` (a model: its config, or a PEFT adapter, which the Auto classes
    load on top of the base it names). Anything else is left to be looked up on the Hub.

    Raises:
        FileNotFoundError: the directory does not exist, or holds no `marker`.
        NotADirectoryError: the path is a file.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not any((path / marker).is_file() for marker in markers):
            raise FileNotFoundError(f"{kind} directory {path} holds no {' or '.join(markers)}: it is not a saved {kind}")
        return
    if path.exists():
        raise NotADirectoryError(f"{kind} {path} is a file; give the directory it was saved to")
    try:
        validate_repo_id(str(name_or_path))
    except HFValidationError:
        raise FileNotFoundError(f"{kind} directory {path} does not exist") from None


def _from_pretrained(load: Callable[[], T], name_or_path: str | os.PathLike, kind: str) -> T:
    try:
        return load()
    except (OSError, ValueError) as error:  # PEFT raises ValueError for an adapter it cannot find
        if Path(name_or_path).expanduser().exists():
            raise
        # A repo-id-shaped name with no local directory of that name: say both, so a typo in a path is visible.
        raise OSError(
            f"{kind} {str(name_or_path)!r} is not a local directory (none at {Path(name_or_path).resolve()}) and "
            f"could not be loaded from the Hub: {error}"
        ) from error


def load_model_and_processor(
    model_name_or_path: str | os.PathLike,
    adapter: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a checkpoint (directory or Hub id) and its processor through the Auto classes: a PanoVLM, or any
    `AutoModelForImageTextToText` model (LLaVA, Qwen2-VL, ...) to score as a baseline. With `adapter`, apply a PEFT
    adapter and merge it. The model is put in eval mode on `device` (CUDA when available by default).

    Raises:
        FileNotFoundError / NotADirectoryError: a local model or adapter directory that does not exist or is not a
            saved one (see `check_checkpoint_source`).
        OSError: a name that is neither a local directory nor loadable from the Hub, naming both.
    """
    check_checkpoint_source(model_name_or_path)
    if adapter is not None:
        check_checkpoint_source(adapter, "adapter", ("adapter_config.json",))
    model = _from_pretrained(
        lambda: AutoModelForImageTextToText.from_pretrained(model_name_or_path, dtype="auto"), model_name_or_path, "model"
    )
    processor = _from_pretrained(lambda: AutoProcessor.from_pretrained(model_name_or_path), model_name_or_path, "processor")
    if adapter is not None:
        from peft import PeftModel

        model = _from_pretrained(lambda: PeftModel.from_pretrained(model, adapter), adapter, "adapter").merge_and_unload()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def is_panovlm(model: PreTrainedModel) -> bool:
    """Whether `model` is a PanoVLM (evaluated through its panorama processor) rather than a general VLM (evaluated
    on the panorama as one resized image)."""
    return isinstance(model, PanoVLMForConditionalGeneration)


__all__ = ["check_checkpoint_source", "is_panovlm", "load_model_and_processor"]
