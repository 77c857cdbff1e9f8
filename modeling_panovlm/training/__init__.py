"""The three PanoVLM training stages on `transformers.Trainer`: stage specs and callback, the trainer, the overlap
VICReg loss, LoRA on the language model, the stage runner (CLI / run files) and training-curve plots."""

from .lora import DEFAULT_LORA_MODULES, lm_lora_config, lm_lora_target_regex
from .losses import VICREG_MODES, VICRegWeights, overlap_pairs, overlap_vicreg_loss
from .stages import (
    STAGES,
    PanoVLMStageCallback,
    StageSpec,
    apply_stage,
    base_model,
    vision_tower_blocks,
)
from .trainer import PanoVLMTrainer


__all__ = [
    "DEFAULT_LORA_MODULES",
    "STAGES",
    "VICREG_MODES",
    "PanoVLMStageCallback",
    "PanoVLMTrainer",
    "StageSpec",
    "VICRegWeights",
    "apply_stage",
    "base_model",
    "lm_lora_config",
    "lm_lora_target_regex",
    "overlap_pairs",
    "overlap_vicreg_loss",
    "vision_tower_blocks",
]
