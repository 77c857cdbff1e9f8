"""Reading a PanoLLaVA stage run directory: its Lightning checkpoint (weights only), `checkpoint_metadata.json`
(complete, truncated as PanoLLaVA wrote it, or absent) and `lora_weights/`."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


logger = logging.getLogger(__name__)


# `..._epoch01_loss2.4910.ckpt`: the validation loss PanoLLaVA's ModelCheckpoint wrote into the file name.
_LOSS_IN_NAME = re.compile(r"loss(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\.ckpt$")


class LegacyConversionError(ValueError):
    """The run cannot be converted as it is; the message names the problem and, where there is one, the fix."""


@dataclass
class LegacyRun:
    """What a PanoLLaVA run directory holds. `state_dict` keys have the Lightning `model.` prefix removed."""

    run_dir: Path
    checkpoint: Path
    state_dict: dict[str, torch.Tensor]
    hparams: dict[str, Any]
    datamodule_hparams: dict[str, Any]
    metadata: dict[str, Any]
    metadata_status: str  # "complete", "truncated" or "absent"
    lora_dir: Path | None


def salvage_json(text: str) -> dict[str, Any]:
    """The longest prefix of a truncated JSON object that parses once its open brackets are closed."""
    cuts, stack, in_string, escaped = [], [], False, False
    for index, char in enumerate(text):
        if in_string:
            escaped, in_string = (False, in_string) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
            cuts.append((index + 1, "".join(reversed(stack))))
        elif char in "}]":
            stack.pop()
        elif char == ",":
            cuts.append((index, "".join(reversed(stack))))
    for end, closers in reversed(cuts):
        try:
            return json.loads(text[:end] + closers)
        except json.JSONDecodeError:
            continue
    return {}


def find_checkpoint(run_dir: Path) -> Path:
    """The run's best checkpoint: `best.ckpt` (file or symlink), else the `.ckpt` whose name records the lowest
    validation loss (PanoLLaVA's ModelCheckpoint named its best `..._epoch{EE}_loss{L}.ckpt` and created no
    `best.ckpt`), else `last.ckpt`, else the most recently written `*.ckpt`."""
    for name in ("best.ckpt", "last.ckpt"):
        candidate = run_dir / name
        if candidate.is_symlink() and not candidate.exists():
            raise FileNotFoundError(f"{candidate} is a broken link to {os.readlink(candidate)}")
    if (run_dir / "best.ckpt").exists():
        return run_dir / "best.ckpt"
    scored = [(float(match.group(1)), path.name, path) for path in run_dir.glob("*.ckpt")
              if (match := _LOSS_IN_NAME.search(path.name)) and path.name not in ("best.ckpt", "last.ckpt")]
    if scored:
        return min(scored)[2]
    if (run_dir / "last.ckpt").exists():
        return run_dir / "last.ckpt"
    checkpoints = sorted(run_dir.glob("*.ckpt"), key=lambda path: path.stat().st_mtime)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir} holds no .ckpt file: is it a PanoLLaVA stage run directory?")
    return checkpoints[-1]


def load_legacy_run(run_dir: str | os.PathLike) -> LegacyRun:
    """Read a PanoLLaVA run directory (see `find_checkpoint` for which checkpoint). The checkpoint is loaded with
    `torch.load(weights_only=True)`: PanoLLaVA's checkpoints hold only tensors and plain containers, and full
    unpickling could run code from the file."""
    run_dir = Path(run_dir)
    checkpoint_path = find_checkpoint(run_dir)
    logger.info("Converting %s (%s)", checkpoint_path, checkpoint_path.resolve().name)
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise LegacyConversionError(
            f"{checkpoint_path} holds Python objects beyond tensors and plain containers, which "
            f"torch.load(weights_only=True) refuses ({str(error).strip().splitlines()[-1].strip()}). If you trust "
            "the file, load it yourself and torch.save its 'state_dict' and hyper-parameters as plain dicts"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise LegacyConversionError(f"{checkpoint_path} is not a Lightning checkpoint: it has no 'state_dict'")
    state_dict = {key.removeprefix("model."): tensor for key, tensor in checkpoint["state_dict"].items()}
    metadata_path = run_dir / "checkpoint_metadata.json"
    metadata, status = {}, "absent"
    if metadata_path.exists():
        text = metadata_path.read_text(encoding="utf-8")
        try:
            metadata, status = json.loads(text), "complete"
        except json.JSONDecodeError:
            metadata, status = salvage_json(text), "truncated"
            logger.warning("%s is truncated; read what precedes the cut: %s", metadata_path, sorted(metadata))
    lora_dir = run_dir / "lora_weights"
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    data_hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    lora_dir = lora_dir if (lora_dir / "adapter_config.json").exists() else None
    return LegacyRun(run_dir, checkpoint_path, state_dict, hparams, data_hparams, metadata, status, lora_dir)


__all__ = ["LegacyConversionError", "LegacyRun", "find_checkpoint", "load_legacy_run"]
