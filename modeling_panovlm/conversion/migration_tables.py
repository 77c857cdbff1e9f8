"""Facts about PanoLLaVA's configuration code that the config migration reproduces (PanoLLaVA at its seed commit,
`src/panovlm/config/schema.py`, `scripts/train.py`, `scripts/eval.py`; see the reference notes).

Its pydantic `ModelConfig` resolved the resampler fields along two paths with different defaults: with
`models.resampler_config` given, the per-type config classes filled what the YAML left out; without it, the
`RESAMPLER_CONFIGS` presets and the flat legacy fields (`resampler_depth`, ...) were used. That is why a BiMamba
config without `resampler_config` trained with `expand` 1.75 and one with it (but no `expand`) with 2.0, and why an
MLP config giving only `hidden_dim` got 2 layers instead of the preset's 3.
"""

from __future__ import annotations

from typing import Any


RESAMPLER_TYPES = {"mlp": "mlp", "bimamba": "bimamba", "bidirectional_mamba": "bimamba", "bi_mamba": "bimamba",
                   "qformer": "qformer"}

# RESAMPLER_CONFIGS of PanoLLaVA's schema: used when `models.resampler_config` is absent.
RESAMPLER_PRESETS: dict[str, dict[str, Any]] = {
    "mlp": {"latent_dimension": 768, "depth": 3, "hidden_dim": 1536, "use_ln": True},
    "bimamba": {"latent_dimension": 768, "depth": 4, "hidden_dim": 1024, "use_ln": True, "dropout": 0.05,
                "d_state": 64, "d_conv": 4, "expand": 1.75, "norm_first": True},
    "qformer": {"latent_dimension": 768, "depth": 6, "hidden_dim": 768, "num_query_tokens": 64,
                "num_hidden_layers": 6, "num_attention_heads": 8},
}

# Defaults of the per-type pydantic classes (ResamplerConfigBase and subclasses): used for the fields a given
# `models.resampler_config` leaves out.
_BASE = {"latent_dimension": 768, "depth": 2, "use_ln": True, "dropout": 0.1}
RESAMPLER_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {**_BASE, "hidden_dim": 1536},
    "bimamba": {**_BASE, "hidden_dim": 768, "d_state": 64, "d_conv": 4, "expand": 2.0, "norm_first": True},
    "qformer": {**_BASE, "hidden_dim": 768, "num_query_tokens": 64, "num_hidden_layers": 6, "num_attention_heads": 8},
}

# Resampler field -> the flat `models:` key PanoLLaVA's preset path read it from.
RESAMPLER_FLAT_FIELDS = {
    "latent_dimension": "latent_dimension",
    "depth": "resampler_depth",
    "hidden_dim": "resampler_hidden_dim",
    "use_ln": "resampler_use_ln",
    "dropout": "resampler_dropout",
    "num_query_tokens": "resampler_num_query_tokens",
    "num_hidden_layers": "resampler_num_hidden_layers",
    "num_attention_heads": "resampler_attention_heads",
}

STAGE_ALIASES = {
    **dict.fromkeys(("vision", "vision_pretraining", "vision_pretrain", "1"), "vision"),
    **dict.fromkeys(("resampler", "resampler_training", "2"), "resampler"),
    **dict.fromkeys(("finetune", "instruction_tuning", "instruction_tune", "3"), "finetune"),
}

# What PanoLLaVA's trainer did without a YAML key (scripts/train.py).
DEFAULT_ACCUMULATION = 2  # accumulate_grad_batches when a stage does not set it
EARLY_STOPPING_PATIENCE = 2  # EarlyStopping(val_loss, patience 2) on every stage
ADAM_BETA2 = 0.98

# eval.py's decoding when `generation:` leaves a setting out: sampling, since temperature 0.6 > 0.1.
EVAL_GENERATION_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 128, "min_new_tokens": 5, "temperature": 0.6, "top_p": 0.95, "top_k": 20,
    "repetition_penalty": 1.1, "length_penalty": 1.0,
}

# Keys (or blocks) with no PanoVLM counterpart, and why; anything not listed and not translated is reported as
# unknown.
DROPPED = {
    "experiment.description": "metadata only",
    "experiment.version": "metadata only",
    "environment.cuda_visible_devices": "set CUDA_VISIBLE_DEVICES in the environment of `panovlm train`",
    "environment.wandb_project": "add `report_to: wandb` to the run file and set WANDB_PROJECT",
    "environment.output_dir": "the run directory is the run file's output_dir (paths.runs_dir/<experiment>)",
    "training.wandb_project": "add `report_to: wandb` to the run file and set WANDB_PROJECT",
    "training.cache_cleanup_interval": "PanoVLM does not empty the CUDA cache during training",
    "training.empty_cache_each_step": "PanoVLM does not empty the CUDA cache during training",
    "training.deepspeed": "give a DeepSpeed JSON as `deepspeed: ds_config.json` in the run file to use DeepSpeed",
    "training.auto_eval": "`panovlm evaluate` after training (see the printed command); the run file's evaluation "
    "after training uses its eval_csv",
    "training.max_text_length": "eval.py's prompt length; PanoVLM never truncates prompts when generating",
    "data.max_text_length": "eval.py's prompt length; PanoVLM never truncates prompts when generating",
    "data.auto_max_text_length_cap": "eval.py's prompt length; PanoVLM never truncates prompts when generating",
    "data.auto_max_text_length_floor": "eval.py's prompt length; PanoVLM never truncates prompts when generating",
    "lora.save_lora_only": "read nowhere by PanoLLaVA; PanoVLM's finetune stage saves the adapter",
    "paths.stage_snapshot_dir": "PanoVLM records each stage's options in <stage>/stage_summary.json",
    "paths.eval_dir": "`panovlm evaluate --output-dir` (see the printed command)",
    "models.use_lora": "the lora: block sets LoRA",
    "models.lora_r": "the lora: block sets LoRA",
    "models.lora_alpha": "the lora: block sets LoRA",
    "models.lora_dropout": "the lora: block sets LoRA",
    "models.lora_target_modules": "the lora: block sets LoRA",
}


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists and empty mappings are leaves."""
    leaves = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            leaves.update(flatten(value, name + "."))
        else:
            leaves[name] = value
    return leaves


__all__ = [
    "ADAM_BETA2",
    "DEFAULT_ACCUMULATION",
    "DROPPED",
    "EARLY_STOPPING_PATIENCE",
    "EVAL_GENERATION_DEFAULTS",
    "RESAMPLER_CLASS_DEFAULTS",
    "RESAMPLER_FLAT_FIELDS",
    "RESAMPLER_PRESETS",
    "RESAMPLER_TYPES",
    "STAGE_ALIASES",
    "flatten",
]
