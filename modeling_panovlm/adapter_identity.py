"""Which base model a LoRA adapter was trained on.

PEFT records only the base's path or Hub id (`base_model_name_or_path`), so an adapter applied to another base of
the same architecture loads without a word. PanoVLM records a fingerprint of the base in the adapter's weights file
(safetensors metadata, which PEFT keeps and ignores) and compares it when the adapter is loaded through
transformers (`AutoModelForImageTextToText.from_pretrained(adapter_dir)`, `model.load_adapter(adapter_dir)`), warning
on a mismatch. `PeftModel.from_pretrained` offers no hook: call `check_adapter_base(model, adapter_dir)` yourself.

The fingerprint hashes PanoVLM's config fields, every tensor's name and shape, and 16 evenly spaced values of each
tensor rounded to bfloat16, so a base loaded in bf16, fp16 or fp32 has the same fingerprint while differently
trained weights of one architecture do not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn
from transformers import PreTrainedConfig

from configuration_panovlm.atomic_files import write_bytes_atomically


logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
FINGERPRINT_KEY = "panovlm_base_fingerprint"
BASE_KEY = "panovlm_base_model"
_SAMPLES_PER_TENSOR = 16
# Config fields that change without changing what the weights mean.
_VOLATILE_FIELDS = ("use_cache", "vision_config", "text_config")


def base_fingerprint(model: nn.Module) -> str:
    """A hex digest identifying `model`'s weights and PanoVLM configuration (see the module docstring). `model` is
    the base, before any adapter is injected."""
    digest = hashlib.sha256(json.dumps(_own_fields(model.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        if flat.numel() and flat.is_floating_point():
            index = torch.linspace(0, flat.numel() - 1, _SAMPLES_PER_TENSOR).round().long().unique()
            digest.update(flat[index.to(flat.device)].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _own_fields(config) -> dict:
    """PanoVLM's own config fields (nested sub-configs of PanoVLM included), without what loading varies."""
    base = set(PreTrainedConfig.__dataclass_fields__)
    fields = set(type(config).__dataclass_fields__) - base - set(_VOLATILE_FIELDS)
    own = {}
    for key in fields:
        value = getattr(config, key)
        own[key] = _own_fields(value) if isinstance(value, PreTrainedConfig) else value
    return own


def record_adapter_base(adapter_dir: str | os.PathLike, fingerprint: str, base: str) -> None:
    """Write the base's fingerprint and name into `adapter_dir`'s weights file (atomically)."""
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    with safe_open(path, "pt") as handle:
        metadata = dict(handle.metadata() or {})
    tensors = load_file(path)
    metadata.update({FINGERPRINT_KEY: fingerprint, BASE_KEY: str(base)})
    write_bytes_atomically(path, save(tensors, metadata=metadata))


def recorded_adapter_base(adapter_dir: str | os.PathLike) -> tuple[str | None, str | None]:
    """`(fingerprint, base)` recorded in a local adapter directory, `(None, None)` when it records none."""
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.is_file():
        return None, None
    with safe_open(path, "pt") as handle:
        metadata = handle.metadata() or {}
    return metadata.get(FINGERPRINT_KEY), metadata.get(BASE_KEY)


def check_adapter_base(model: nn.Module, adapter_dir: str | os.PathLike) -> bool:
    """Warn when the adapter in `adapter_dir` was trained on another base than `model`; True when they match or the
    adapter records no base."""
    recorded, base = recorded_adapter_base(adapter_dir)
    if recorded is None:
        return True
    actual = base_fingerprint(model)
    if actual != recorded:
        logger.warning(
            "The adapter %s was trained on the base model %s (fingerprint %s), but is being applied to %s "
            "(fingerprint %s): its weights will not mean what they were trained for",
            adapter_dir, base, recorded[:12], getattr(model.config, "_name_or_path", None) or "another model", actual[:12],
        )
        return False
    return True


__all__ = ["base_fingerprint", "check_adapter_base", "record_adapter_base", "recorded_adapter_base"]
