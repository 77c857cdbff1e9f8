"""`PanoVLMTrainer`: `Trainer` with the vision stage's overlap VICReg loss, per-module learning rates, and what
data-parallel and sharded (FSDP2) runs need on top of accelerate: FSDP2 over CPU processes and one ordinary
checkpoint (tied weights saved once) from a gathered state dict."""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, parse_flag_from_env
from torch import nn
from transformers import Trainer
from transformers.trainer import FSDP_MODEL_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from configuration_panovlm.atomic_files import (
    STAGING_MARK,
    atomic_directory,
    remove_abandoned_staging,
    remove_directory_atomically,
)

from .losses import VICREG_MODES, VICRegWeights, gather_across_processes, overlap_vicreg_loss
from .stages import StageSpec, base_model, base_parameter_name


logger = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."


def no_weight_decay_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters the optimizer does not decay: biases, normalisation layers' parameters, and what a
    module declares in `no_weight_decay` (Mamba's `A_log` and `D`, learned queries; mamba-ssm exempts the same)."""
    names = set()
    for prefix, module in model.named_modules():
        norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__.endswith("RMSNorm")
        declared = set(getattr(module, "no_weight_decay", ()))
        for name, _ in module.named_parameters(recurse=False):
            if norm or name == "bias" or name in declared:
                names.add(f"{prefix}.{name}" if prefix else name)
    return names


class PanoVLMTrainer(Trainer):
    """`Trainer` with the vision stage's overlap VICReg loss and per-module learning rates.

    Args:
        stage: the `StageSpec` being trained.
        vicreg_weights: weights of the VICReg terms (vision stage).
        vicreg_mode: `"pairwise"` or `"batchwise"` statistics (see `overlap_vicreg_loss`). Under data parallelism
            `batchwise` pools the tokens of every process, so it sees the global batch as one process would.
        module_learning_rates: `{module path prefix: lr}` (relative to `PanoVLMForConditionalGeneration`, e.g.
            `{"model.vicreg_projector": 1e-3}`); other trainable tensors use `args.learning_rate`.

    `fsdp=True` with `fsdp_config={"version": 2}` shards through accelerate on GPUs and, over gloo, on CPU
    processes too (see `_enable_fsdp2_on_cpu`).
    """

    def __init__(
        self,
        *args,
        stage: StageSpec,
        vicreg_weights: VICRegWeights | None = None,
        vicreg_mode: str = "pairwise",
        module_learning_rates: dict[str, float] | None = None,
        **kwargs,
    ):
        if vicreg_mode not in VICREG_MODES:
            raise ValueError(f"vicreg_mode must be one of {list(VICREG_MODES)}, got {vicreg_mode!r}")
        self.stage = stage
        self.vicreg_weights = vicreg_weights or VICRegWeights()
        self.vicreg_mode = vicreg_mode
        self.module_learning_rates = dict(module_learning_rates or {})
        self._vicreg_terms: dict[str, list[float]] = defaultdict(list)
        super().__init__(*args, **kwargs)
        if self._gathers_vicreg_tokens and not self.accelerator.even_batches:
            # Every process must contribute a batch of the same shape to the gathered statistics.
            raise ValueError("vicreg_mode='batchwise' over several processes needs accelerator_config even_batches=True")

    @property
    def _gathers_vicreg_tokens(self) -> bool:
        return self.stage.loss == "overlap_vicreg" and self.vicreg_mode == "batchwise" and self.accelerator.num_processes > 1

    # ---- distributed set-up ----------------------------------------------------------------------------------------
    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        # FSDP is asked for in TrainingArguments or by `accelerate launch --use_fsdp` (environment).
        if not self.is_fsdp_enabled and (self.args.fsdp or parse_flag_from_env("ACCELERATE_USE_FSDP")):
            self._enable_fsdp2_on_cpu()

    def _enable_fsdp2_on_cpu(self) -> None:
        """accelerate enables its FSDP plugin only on accelerator devices: CPU processes asking for FSDP silently
        get DDP instead. FSDP2 itself runs on CPU over gloo, so record the state accelerate records when it enables
        FSDP on GPUs, and the Trainer takes accelerate's own FSDP2 path (sharding, optimizer, gathered state dict on
        save, checkpoints and resume)."""
        state = self.accelerator.state
        from_args = bool(self.args.fsdp)
        version = self.args.fsdp_plugin_args["fsdp_version"] if from_args else int(os.environ.get("FSDP_VERSION", "1"))
        if state.distributed_type != DistributedType.MULTI_CPU or version != 2:
            raise ValueError(
                f"FSDP version {version} was requested, but accelerate set up {state.distributed_type.value} without "
                "it: FSDP needs several processes (torchrun, or accelerate launch --multi_gpu --num_processes N), "
                "and on CPU fsdp_config {'version': 2} (accelerate launch --fsdp_version 2)"
            )
        # As accelerate builds it: from the arguments, or from the launcher's environment.
        plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args) if from_args else FullyShardedDataParallelPlugin()
        # The checks `Trainer` makes when accelerate enables FSDP.
        if plugin.activation_checkpointing and self.args.activation_checkpointing:
            raise ValueError(
                "fsdp_config['activation_checkpointing'] and activation_checkpointing (--gradient-checkpointing) "
                "cannot both be set: use one of them"
            )
        if self.args.save_only_model and (self.args.load_best_model_at_end or "SHARDED" in str(plugin.state_dict_type)):
            raise ValueError("FSDP supports save_only_model neither with load_best_model_at_end nor with sharded state dicts")
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        state.fsdp_plugin = plugin
        # Like accelerate's own FSDP set-up, the process state follows the accelerator state (both are re-read
        # whenever accelerate builds an `AcceleratorState`).
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.is_fsdp_enabled = True
        logger.info("FSDP2 over %d CPU processes (gloo)", state.num_processes)

    # ---- vision stage loss -----------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.stage.loss != "overlap_vicreg":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Through the (possibly DDP / FSDP wrapped) model's forward, so the distributed hooks see the computation; the
        # layout comes from the unwrapped model, which a distributed wrapper does not expose.
        views = {k: v for k, v in inputs.items() if k == "pixel_values" or k.startswith("view_")}
        outputs = model(**views, output_view_embeddings=True)
        layout = base_model(self.model).config.view_layout
        loss, terms = overlap_vicreg_loss(
            outputs.view_embeddings,
            layout,
            self.vicreg_weights,
            self.vicreg_mode,
            gather=gather_across_processes if self._gathers_vicreg_tokens else None,
        )
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
        # Every process logs the training loss at the same steps; like the loss, the terms are averaged over them.
        if self._vicreg_terms and "loss" in logs:
            means = torch.tensor([sum(v) / len(v) for v in self._vicreg_terms.values()], device=self.accelerator.device)
            means = self.accelerator.reduce(means, reduction="mean")
            for name, value in zip(self._vicreg_terms, means.tolist()):
                logs[f"vicreg_{name}"] = value
            self._vicreg_terms.clear()
        super().log(logs, *args, **kwargs)

    # ---- optimizer -------------------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        no_decay = no_weight_decay_parameters(opt_model)
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
            decay = 0.0 if name in no_decay else self.args.weight_decay
            groups[(lr, decay)].append(parameter)
        if unused_prefixes:
            raise ValueError(f"module_learning_rates names modules with no trainable parameters: {sorted(unused_prefixes)}")
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        param_groups = [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    # ---- checkpoints -----------------------------------------------------------------------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # `Trainer` refuses an FSDP checkpoint without FSDP; the other way round it fails on a missing file.
        if self.is_fsdp_enabled and os.path.isdir(resume_from_checkpoint) and not any(
            name.startswith(FSDP_MODEL_NAME) for name in os.listdir(resume_from_checkpoint)
        ):
            raise ValueError(
                f"{resume_from_checkpoint} was written without FSDP (it has no {FSDP_MODEL_NAME}.bin): resume it "
                "without FSDP, or start a new FSDP run from its weights"
            )
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    # ---- saving ----------------------------------------------------------------------------------------------------
    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        """`Trainer._save_checkpoint`, publishing `checkpoint-N` as a whole or not at all: every process writes into
        a staging run directory, then the main process moves the finished checkpoint into place with
        `atomic_directory` (a kill leaves no partial `checkpoint-N` for `--resume-from-checkpoint` to pick up)."""
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_run = run_dir / f".{name}{STAGING_MARK}run"  # one name shared by every process of the run
        if self.args.should_save:
            shutil.rmtree(staging_run, ignore_errors=True)  # left by a killed run
            staging_run.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        final_output = self.args.output_dir
        self.args.output_dir = str(staging_run)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = final_output
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if self.state.best_model_checkpoint:  # found by the parent inside the staging run directory
                self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(str(staging_run), str(run_dir))
            staged = staging_run / name
            self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
            with atomic_directory(run_dir / name, replaces=lambda _: True) as staging:
                for entry in staged.iterdir():
                    os.replace(entry, staging / entry.name)
            shutil.rmtree(staging_run)
            self._rotate_checkpoints_atomically(run_dir)
        self.accelerator.wait_for_everyone()

    def _rotate_checkpoints_atomically(self, run_dir: Path) -> None:
        """transformers' `rotate_checkpoints` rule (keep `save_total_limit`, always the newest and the best), but
        each old `checkpoint-N` goes at once (`remove_directory_atomically`): transformers deletes it in place, so a
        kill mid-delete left a partial `checkpoint-N` that neither loads nor resumes."""
        remove_abandoned_staging(run_dir)
        limit = self.args.save_total_limit
        checkpoints = sort_checkpoints(str(run_dir), PREFIX_CHECKPOINT_DIR, use_mtime=True)
        if not limit or limit <= 0 or len(checkpoints) <= limit:
            return
        protected = {checkpoints[-1]} | ({str(Path(self.state.best_model_checkpoint))} if self.state.best_model_checkpoint else set())
        doomed = [c for c in checkpoints if c not in protected][: len(checkpoints) - max(limit, len(protected))]
        for checkpoint in doomed:
            remove_directory_atomically(checkpoint)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        sharded = self.is_fsdp_enabled and "FULL_STATE_DICT" not in str(self.accelerator.state.fsdp_plugin.state_dict_type)
        if not sharded:
            super().save_model(output_dir, _internal_call)
            return
        # With a sharded state dict type `Trainer` writes no weights at all (checkpoints keep only the sharded files
        # for resuming): stage outputs and checkpoints are ordinary directories, so gather the full state dict.
        self._save(output_dir or self.args.output_dir, state_dict=self.accelerator.get_state_dict(self.model))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        if state_dict:
            state_dict = self._alias_tied_weights(state_dict)
        super()._save(output_dir, state_dict)

    def _alias_tied_weights(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A gathered state dict (FSDP, DeepSpeed) holds tied weights as separate copies, which `save_pretrained`
        would write twice (it finds ties by shared storage): point each tied entry back at its source."""
        model = self.accelerator.unwrap_model(self.model)
        prefix = PEFT_PREFIX if base_model(model) is not model else ""
        state_dict = dict(state_dict)
        for target, source in base_model(model).all_tied_weights_keys.items():
            target, source = prefix + target, prefix + source
            if target not in state_dict or source not in state_dict:
                continue
            if not torch.equal(state_dict[target], state_dict[source]):
                raise RuntimeError(f"{target} is tied to {source} in the model, but the gathered state dict differs")
            state_dict[target] = state_dict[source]
        return state_dict


__all__ = ["PanoVLMTrainer"]
