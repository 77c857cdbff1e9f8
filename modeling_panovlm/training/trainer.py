"""`PanoVLMTrainer`: `Trainer` with the vision stage's overlap VICReg loss and per-module learning rates."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from transformers import Trainer

from .losses import VICRegWeights, overlap_vicreg_loss
from .stages import StageSpec, base_model, base_parameter_name


# Tensors that are not weight matrices get no weight decay (mamba-ssm also exempts A_log and D).
_NO_DECAY = ("bias", "norm", "A_log", ".D", "latents", "query_tokens")


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
        # Through the (possibly DDP-wrapped) model's forward, so distributed gradient hooks see the computation; the
        # layout comes from the unwrapped model, which a distributed wrapper does not expose.
        views = {k: v for k, v in inputs.items() if k == "pixel_values" or k.startswith("view_")}
        outputs = model(**views, output_view_embeddings=True)
        layout = base_model(self.model).config.view_layout
        loss, terms = overlap_vicreg_loss(outputs.view_embeddings, layout, self.vicreg_weights)
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
            base = base_parameter_name(name)
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


__all__ = ["PanoVLMTrainer"]
