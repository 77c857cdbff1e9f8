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
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .hub import write_adapter_card
from .losses import VICRegWeights, overlap_vicreg_loss


logger = logging.getLogger(__name__)

# Tensors that are not weight matrices get no weight decay (mamba-ssm also exempts A_log and D).
_NO_DECAY = ("bias", "norm", "A_log", ".D", "latents", "query_tokens")


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


def _base_name(name: str) -> str:
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
            if _base_name(name).startswith(spec.trainable):
                parameter.requires_grad_(True)
        if vision_trainable_blocks:
            for block in vision_tower_blocks(model)[-vision_trainable_blocks:]:
                block.requires_grad_(True)
    counts: dict[str, int] = defaultdict(int)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            parts = _base_name(name).split(".")
            counts[".".join(parts[:2]) if parts[0] == "model" else parts[0]] += parameter.numel()
    if not counts:
        raise ValueError(f"stage {spec.name!r} leaves no parameter trainable")
    return dict(counts)


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


class PanoVLMTrainer(Trainer):
    """`Trainer` with the vision stage's overlap VICReg loss and per-module learning rates.

    Args:
        stage: the `StageSpec` being trained.
        vicreg_weights: weights of the VICReg terms (vision stage).
        module_learning_rates: `{module path prefix: lr}` (relative to `PanoVLMForConditionalGeneration`, e.g.
            `{"model.vicreg_projector": 1e-3}`); other trainable tensors use `args.learning_rate`.
    """

    def __init__(
        self,
        *args,
        stage: StageSpec,
        vicreg_weights: VICRegWeights | None = None,
        module_learning_rates: dict[str, float] | None = None,
        **kwargs,
    ):
        self.stage = stage
        self.vicreg_weights = vicreg_weights or VICRegWeights()
        self.module_learning_rates = dict(module_learning_rates or {})
        self._vicreg_terms: dict[str, list[float]] = defaultdict(list)
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.stage.loss != "overlap_vicreg":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Through the (possibly DDP-wrapped) model's forward, so distributed gradient hooks see the computation.
        outputs = model(**{k: v for k, v in inputs.items() if k == "pixel_values" or k.startswith("view_")})
        loss, terms = overlap_vicreg_loss(outputs.view_embeddings, base_model(model).config.view_layout, self.vicreg_weights)
        if model.training:  # evaluation batches must not leak into the logged training terms
            for name, value in terms.items():
                self._vicreg_terms[name].append(value.item())
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self.stage.loss != "overlap_vicreg":
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        # The vision stage has no labels, so `Trainer` would compute no loss and only collect the view embeddings
        # (no `eval_loss` at all): evaluate the overlap VICReg loss instead; there are no predictions to keep.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._vicreg_terms and "loss" in logs:
            for name, values in self._vicreg_terms.items():
                logs[f"vicreg_{name}"] = sum(values) / len(values)
            self._vicreg_terms.clear()
        super().log(logs, *args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
        unused_prefixes = set(self.module_learning_rates)
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            base = _base_name(name)
            lr = self.args.learning_rate
            for prefix, prefix_lr in self.module_learning_rates.items():
                if base.startswith(prefix):
                    lr = prefix_lr
                    unused_prefixes.discard(prefix)
            decay = 0.0 if any(marker in base for marker in _NO_DECAY) else self.args.weight_decay
            groups[(lr, decay)].append(parameter)
        if unused_prefixes:
            raise ValueError(f"module_learning_rates names modules with no trainable parameters: {sorted(unused_prefixes)}")
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        param_groups = [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer


__all__ = [
    "STAGES",
    "PanoVLMStageCallback",
    "PanoVLMTrainer",
    "StageSpec",
    "apply_stage",
    "base_model",
    "vision_tower_blocks",
]
