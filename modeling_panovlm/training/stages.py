"""The three PanoVLM training stages on `transformers.Trainer`.

| stage | loss | trains |
|---|---|---|
| `vision` | overlap VICReg between neighbouring views | resampler, VICReg head (+ the last `vision_trainable_blocks` tower blocks) |
| `resampler` | language modelling on captions, LM frozen | resampler, projector |
| `finetune` | language modelling | LoRA adapters on the LM (+ `modules_to_save`, e.g. resampler and projector) |

`PanoVLMStageCallback` applies the stage's trainable set in `on_init_end`, before the Trainer creates its optimizer,
logs the trainable parameters per module, and refuses a run whose optimizer holds frozen tensors (or misses
trainable ones). Built with the processor as `processing_class`, the Trainer writes it into every checkpoint, so
each `checkpoint-N` directory loads on its own. `PanoVLMTrainer` adds the vision stage's loss and per-module learning rates. PanoLLaVA froze its own LoRA adapters
after attaching them, so they never trained; here the finetune stage checks that LoRA tensors are trainable.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from modeling_panovlm.hub.cards import write_adapter_card


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    """What a stage optimises: module-path prefixes (inside `PanoVLMForConditionalGeneration`) that train, and
    its loss (`"overlap_vicreg"` or `"lm"`). `lora` stages train the PEFT adapters attached before the Trainer."""

    name: str
    trainable: tuple[str, ...]
    loss: str
    lora: bool = False


STAGES = {
    "vision": StageSpec("vision", ("model.resampler.", "model.vicreg_projector."), "overlap_vicreg"),
    "resampler": StageSpec("resampler", ("model.resampler.", "model.multi_modal_projector."), "lm"),
    "finetune": StageSpec("finetune", (), "lm", lora=True),
}


def base_model(model: nn.Module) -> nn.Module:
    """The `PanoVLMForConditionalGeneration` inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def base_parameter_name(name: str) -> str:
    """Parameter name relative to `PanoVLMForConditionalGeneration`, whether or not PEFT wraps it."""
    return name.removeprefix("base_model.model.")


def vision_tower_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of the vision tower (SigLIP/CLIP: `encoder.layers`, DINOv2: `encoder.layer`)."""
    encoder = base_model(model).model.vision_tower.encoder
    for name in ("layers", "layer"):
        if isinstance(getattr(encoder, name, None), nn.ModuleList):
            return getattr(encoder, name)
    raise ValueError(f"cannot find the blocks of the vision tower's encoder ({type(encoder).__name__})")


def apply_stage(model: nn.Module, spec: StageSpec, vision_trainable_blocks: int = 0) -> dict[str, int]:
    """Set `requires_grad` for `spec` and return the number of trainable parameters per top-level module.

    Non-LoRA stages freeze everything, then unfreeze the spec's prefixes (and, for `vision_trainable_blocks > 0`,
    the last blocks of the vision tower). LoRA stages keep what PEFT made trainable (adapters and
    `modules_to_save`) and check that the adapters are really trainable.
    """
    if spec.lora:
        if not any("lora_" in name for name, _ in model.named_parameters()):
            raise ValueError(f"stage {spec.name!r} trains LoRA adapters, but the model has none attached")
        frozen_lora = [name for name, p in model.named_parameters() if "lora_" in name and not p.requires_grad]
        if frozen_lora:
            raise ValueError(f"LoRA tensors are frozen, so the adapters would never train: {frozen_lora[:4]}")
    else:
        model.requires_grad_(False)
        for name, parameter in model.named_parameters():
            if base_parameter_name(name).startswith(spec.trainable):
                parameter.requires_grad_(True)
        if vision_trainable_blocks:
            for block in vision_tower_blocks(model)[-vision_trainable_blocks:]:
                block.requires_grad_(True)
    counts: dict[str, int] = defaultdict(int)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            parts = base_parameter_name(name).split(".")
            counts[".".join(parts[:2]) if parts[0] == "model" else parts[0]] += parameter.numel()
    if not counts:
        raise ValueError(f"stage {spec.name!r} leaves no parameter trainable")
    return dict(counts)


def log_sharding(model: nn.Module) -> None:
    """Under FSDP2, log the sharded units (by class) and the share of the parameters this process holds."""
    units = [module for module in model.modules() if isinstance(module, FSDPModule)]
    if not units:
        return
    # FSDP2 swaps each unit's class for `FSDP<Class>`; name the original class.
    names = Counter(next(c for c in type(u).__mro__ if not issubclass(c, FSDPModule)).__name__ for u in units)
    held = total = held_trainable = total_trainable = 0
    for parameter in model.parameters():
        local = parameter.to_local().numel() if isinstance(parameter, DTensor) else parameter.numel()
        held, total = held + local, total + parameter.numel()
        if parameter.requires_grad:
            held_trainable, total_trainable = held_trainable + local, total_trainable + parameter.numel()
    logger.info("FSDP2 units: %s", ", ".join(f"{name} x{count}" for name, count in sorted(names.items())))
    logger.info(
        "this process holds %s of %s parameters (%s of %s trainable)",
        f"{held:,}", f"{total:,}", f"{held_trainable:,}", f"{total_trainable:,}",
    )


class PanoVLMStageCallback(TrainerCallback):
    """Applies a stage before the optimizer exists and guards the run (see the module docstring).

    `collator`, when given, gets the epoch number at every epoch start (its augmentation depends on it).
    """

    def __init__(self, spec: StageSpec, vision_trainable_blocks: int = 0, collator=None):
        self.spec = spec
        self.vision_trainable_blocks = vision_trainable_blocks
        self.collator = collator
        self.trainable_counts: dict[str, int] = {}

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self.trainable_counts = apply_stage(model, self.spec, self.vision_trainable_blocks)
        base_model(model).config.training_stage = self.spec.name
        total = sum(p.numel() for p in model.parameters())
        for module, count in sorted(self.trainable_counts.items()):
            logger.info("stage %s: %s trains %s parameters", self.spec.name, module, f"{count:,}")
        trainable = sum(self.trainable_counts.values())
        logger.info("stage %s: %s of %s parameters trainable", self.spec.name, f"{trainable:,}", f"{total:,}")

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if args.deepspeed:
            logger.info("DeepSpeed partitions the optimizer's tensors; the optimizer/stage check is skipped")
            return
        log_sharding(model)
        names = {id(p): name for name, p in model.named_parameters()}
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        frozen = sorted(names.get(i, "<not a model parameter>") for i in held - trainable)
        missing = sorted(names[i] for i in trainable - held)
        if frozen or missing:
            raise RuntimeError(
                f"the optimizer does not match stage {self.spec.name!r}: it holds frozen tensors {frozen[:4]} and "
                f"misses trainable ones {missing[:4]}; apply the stage before the optimizer is created"
            )

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.collator is not None:
            self.collator.epoch = int(state.epoch or 0)

    def on_save(self, args, state, control, **kwargs):
        # Checkpoints of a LoRA stage get the adapter card of the final output, not PEFT's template.
        if self.spec.lora and state.is_world_process_zero:
            write_adapter_card(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


__all__ = [
    "STAGES",
    "PanoVLMStageCallback",
    "StageSpec",
    "apply_stage",
    "base_model",
    "vision_tower_blocks",
]
