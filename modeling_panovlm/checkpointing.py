"""How PanoVLM checkpoints are saved and loaded: written as a whole or not at all, loaded strictly.

`PanoVLMCheckpointMixin` wraps `PreTrainedModel`'s `save_pretrained` (an atomic directory swap, see
`configuration_panovlm.atomic_files`), `from_pretrained` (missing, unexpected and reshaped tensors raise, naming
them) and `load_adapter` (warns when a local adapter was trained on another base, see `adapter_identity`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from configuration_panovlm.atomic_files import atomic_directory
from configuration_panovlm.local_paths import check_local_path

from .adapter_identity import check_adapter_base


class PanoVLMCheckpointMixin:
    """Mixed into `PanoVLMPreTrainedModel` before `PreTrainedModel`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, strict: bool = True, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing what would load silently wrong.

        A checkpoint with a tensor the model lacks, a model tensor the checkpoint lacks (tied weights aside) or a
        tensor of another shape raises, naming them (transformers would re-initialise the missing ones at random and
        drop the others with a warning). Transformers' behaviour is kept when the caller takes the report instead:
        `strict=False`, or `output_loading_info=True` (the loading info then lists what did not match). A local path
        that does not exist raises `FileNotFoundError` saying so.
        """
        if pretrained_model_name_or_path is not None:
            check_local_path(pretrained_model_name_or_path)
        want_info = kwargs.pop("output_loading_info", False)
        strict = strict and not want_info
        if strict:
            # Mismatched shapes are gathered (with both shapes) and refused below, rather than by transformers'
            # error, which names neither.
            kwargs.setdefault("ignore_mismatched_sizes", True)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        if strict:
            problems = {kind: sorted(map(str, info.get(kind) or ())) for kind in ("missing_keys", "unexpected_keys")}
            problems["mismatched_keys"] = [
                f"{key}: checkpoint {tuple(saved)}, config {tuple(expected)}"
                for key, saved, expected in sorted(info.get("mismatched_keys") or ())
            ]
            if any(problems.values()):
                raise ValueError(
                    f"{pretrained_model_name_or_path} does not match its config.json: "
                    + "; ".join(f"{kind.replace('_', ' ')} {names}" for kind, names in problems.items() if names)
                    + ". A PanoVLM checkpoint holds exactly the model's tensors; pass strict=False to load it anyway "
                    "(missing tensors are then initialised at random)"
                )
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, writing `save_directory` as a whole or not at all
        (`configuration_panovlm.atomic_files`): a kill at any point leaves the previous checkpoint or the new one,
        never a mix. Files of the directory that the model does not write (a processor, a README) are kept; earlier
        weight files are replaced."""
        if not kwargs.get("is_main_process", True):
            return super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", Path(save_directory).name)
        with atomic_directory(save_directory, replaces=_is_model_file) as staging:
            super().save_pretrained(staging, *args, **kwargs)

    def load_adapter(self, peft_model_id: str | os.PathLike | None = None, *args, **kwargs):
        """transformers' `load_adapter`, warning first when a local adapter records another base model
        (`modeling_panovlm.adapter_identity`)."""
        if peft_model_id is not None and Path(peft_model_id).is_dir():
            check_adapter_base(self, peft_model_id)
        return super().load_adapter(peft_model_id, *args, **kwargs)


_MODEL_FILE = re.compile(r"(config|generation_config)\.json|(model|pytorch_model)([-.].*)?\.(safetensors|bin|json)")


def _is_model_file(name: str) -> bool:
    """Whether `save_pretrained` owns a file name (a stale shard of an earlier save is dropped, not carried over)."""
    return _MODEL_FILE.fullmatch(name) is not None


__all__ = ["PanoVLMCheckpointMixin"]
