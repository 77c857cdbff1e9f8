"""LoRA on the language model only, through PEFT.

Module names like `q_proj` or `fc1` also occur in vision towers and in the Perceiver / Q-Former resamplers, and
PEFT matches a list of names as suffixes of every module path. So the targets are one regular expression anchored
on the language model's decoder layers (`model.language_model.layers.N...`), which PEFT matches against the whole
path: nothing outside the LM can be hit.
"""

import re
from collections.abc import Sequence

from peft import LoraConfig


# PanoLLaVA's targets: every attention and MLP projection of the decoder layers.
DEFAULT_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lm_lora_target_regex(module_names: Sequence[str] = DEFAULT_LORA_MODULES) -> str:
    """Regex matching `model.language_model.layers.<i>.<...>.<name>` for the given Linear module names."""
    if not module_names:
        raise ValueError("module_names is empty: name at least one Linear of the decoder layers, e.g. 'q_proj'")
    names = "|".join(re.escape(name) for name in module_names)
    return rf"model\.language_model\.layers\.\d+\.(?:.*\.)?(?:{names})"


def lm_lora_config(
    r: int = 32,
    lora_alpha: int = 64,
    lora_dropout: float = 0.1,
    module_names: Sequence[str] = DEFAULT_LORA_MODULES,
    modules_to_save: Sequence[str] | None = None,
) -> LoraConfig:
    """A `LoraConfig` (task CAUSAL_LM) that adapts only the language model's decoder layers.

    Defaults are PanoLLaVA's (r 32, alpha 64, dropout 0.1 on q, k, v, o, gate, up, down). `modules_to_save` (e.g.
    `["resampler", "multi_modal_projector"]`) trains and saves those modules in full alongside the adapter.
    """
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=lm_lora_target_regex(module_names),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        bias="none",
        task_type="CAUSAL_LM",
    )


__all__ = ["DEFAULT_LORA_MODULES", "lm_lora_config", "lm_lora_target_regex"]
