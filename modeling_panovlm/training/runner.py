"""Run one training stage: `run_stage(StageOptions(...))`.

Every stage starts from a directory (or Hub id) that the Auto classes load, and writes one: full model + processor
for `vision` and `resampler`, a standard PEFT adapter + processor for `finetune` (its `base_model_name_or_path` is
the previous stage's output). Each Trainer checkpoint is complete as well. Next to the weights a stage writes, for
people: `<split>_data_report.json` (rows dropped and why), `trainer_state.json`, `training_curves.png`, and last
`stage_summary.json` (the stage's figures and resolved options): its presence marks a complete output, which
`panovlm train` does not train again.

The Trainer's figures of each logging step go to the log (INFO), not under the progress bar: a person sees the bar
and the stage's summary line, the log file keeps the details.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import datasets
import torch
from peft import get_peft_model
from torch.distributed.tensor import DTensor
from transformers import AutoModelForImageTextToText, AutoProcessor, EarlyStoppingCallback, TrainerCallback, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from configuration_panovlm.atomic_files import write_text_atomically
from modeling_panovlm.adapter_identity import base_fingerprint, record_adapter_base
from modeling_panovlm.hub.cards import write_adapter_card
from processing_panovlm.data import (
    DataArguments,
    ProblemLog,
    finish_streaming_report,
    prepare_caption_table,
    stream_caption_table,
)
from processing_panovlm.data.augmentation import PanoramaAugmentation
from processing_panovlm.data.collator import PanoVLMDataCollator

from .lora import lm_lora_config
from .losses import VICRegWeights
from .options import StageOptions
from .plots import plot_training_curves
from .stages import STAGES, PanoVLMStageCallback, vision_tower_blocks
from .trainer import PanoVLMTrainer


logger = logging.getLogger(__name__)

SUMMARY_FILE = "stage_summary.json"
# What a finished stage leaves besides its summary: a full checkpoint or a PEFT adapter.
_WEIGHTS = (("config.json", "model.safetensors"), ("adapter_config.json", "adapter_model.safetensors"))


def resolve_model_source(model: str) -> str:
    """Where a stage loads from: a local directory as its absolute path (PEFT records the base's path in the
    adapter, and a relative one would not load from another working directory), a Hub id unchanged.

    A value that names a local path (absolute, `./`, `~`, several `/`, or inside an existing folder) but no
    directory is refused here, instead of reaching the Hub client as a malformed repo id.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise ValueError(f"model {model!r} is a file; give a checkpoint directory or a Hub id")
    parent = path.parent
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1 or (parent != Path(".") and parent.is_dir()):
        raise ValueError(f"model directory {model!r} does not exist (a Hub id has the form 'name' or 'org/name')")
    return model


# ---- data (processing_panovlm.data) -------------------------------------------------------------------------------
def _mark_augment(row: dict, augment: bool) -> dict:
    return {"augment": augment}


def prepare_table(
    csv, output_dir: Path, split: str, needs_text: bool, augment: bool, data_args: DataArguments | None = None
) -> datasets.Dataset | datasets.IterableDataset:
    """Read a caption table (any source `load_caption_table` reads, as `data_args` says), drop (and report in
    `<split>_data_report.json`) unusable rows, and mark whether its rows may be augmented. `split` is `"train"` or
    `"eval"` (read from `data_args.train_split` / `eval_split` where the source has splits).

    With `data_args.streaming` the table is a stream whose rows are checked as they pass (by every DataLoader
    worker); `finish_streaming_report` writes its report once training is over.
    """
    data_args = data_args or DataArguments()
    table_split = data_args.train_split if split == "train" else data_args.eval_split
    if data_args.streaming:
        # Every rank resets its log before any rank reads data (the model is wrapped, a collective, in between).
        log = ProblemLog(output_dir, split)
        log.reset()
        stream = stream_caption_table(csv, data_args, recorder=log, split=table_split, needs_text=needs_text)
        return stream.map(_mark_augment, fn_kwargs={"augment": augment})
    prepared = prepare_caption_table(csv, data_args, split=table_split, needs_text=needs_text)
    report = prepared.write_report(output_dir, split)
    table = prepared.rows
    if len(table) == 0:
        raise ValueError(f"{csv}: no usable rows left (see {report})")
    logger.info("%s: %d of %d rows usable (report: %s)", split, len(table), prepared.rows_read, report)
    return table.add_column("augment", [augment] * len(table))
# ---- end of data ---------------------------------------------------------------------------------------------------


def check_stage_data(options: StageOptions, data_args: DataArguments) -> None:
    """What a stage's options and its data options must agree on, checked before anything is loaded."""
    if data_args.streaming and options.max_steps <= 0:
        raise ValueError(f"a streamed table has no length: set max_steps > 0 (got {options.max_steps})")


def run_stage(options: StageOptions, data_args: DataArguments | None = None) -> Path:
    """Train one stage and write its output directory; returns it. `data_args` says how the tables are read."""
    begin = time.perf_counter()
    spec = STAGES[options.stage]
    output_dir = Path(options.output_dir)
    data_args = data_args or DataArguments()
    check_stage_data(options, data_args)
    source = resolve_model_source(options.model)
    if options.process_index == 0:
        # From here on the directory no longer holds the complete output it may have held: a run stopped halfway
        # must not leave the old summary to vouch for a mix of old and new files.
        (output_dir / SUMMARY_FILE).unlink(missing_ok=True)
    processor = AutoProcessor.from_pretrained(source)
    if options.system_prompt is not None or options.user_template is not None:
        # Set on the processor, which every checkpoint and the output save: evaluation and inference then ask the
        # way training did.
        processor.set_prompts(
            processor.system_prompt if options.system_prompt is None else (options.system_prompt or None),
            options.user_template or processor.user_template,
        )
    model = AutoModelForImageTextToText.from_pretrained(source)
    if options.vision_trainable_blocks:
        blocks = len(vision_tower_blocks(model))
        if options.vision_trainable_blocks > blocks:
            raise ValueError(
                f"--vision-trainable-blocks must be between 0 and {blocks} (the vision tower of {options.model} "
                f"has {blocks} blocks), got {options.vision_trainable_blocks}"
            )
    needs_text = spec.loss == "lm"
    train = prepare_table(options.train_csv, output_dir, "train", needs_text, options.augment, data_args)
    evaluation = (
        prepare_table(options.eval_csv, output_dir, "eval", needs_text, False, data_args) if options.eval_csv else None
    )
    if spec.lora:
        lora = lm_lora_config(
            options.lora_r, options.lora_alpha, options.lora_dropout, options.lora_modules, options.lora_modules_to_save
        )
        # Taken before the adapters wrap it: recorded in the adapter, so that applying it to another base warns.
        base_identity = base_fingerprint(model)
        # PEFT initialises the adapters at random before the Trainer seeds: the same in every process (FSDP2, unlike
        # DDP, does not broadcast rank 0's weights) and from run to run.
        set_seed(options.seed)
        model = get_peft_model(model, lora)

    augmentation = None
    if options.augment:
        augmentation = PanoramaAugmentation(
            options.yaw_roll_probability,
            options.max_roll_fraction,
            options.brightness,
            options.contrast,
            options.saturation,
            options.hue,
            seed=options.seed,
        )
    collator = PanoVLMDataCollator(
        processor,
        views_only=not needs_text,
        augmentation=augmentation,
        max_length=options.max_length,
    )
    callbacks = [PanoVLMStageCallback(spec, options.vision_trainable_blocks, collator)]
    if options.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(options.early_stopping_patience, options.early_stopping_threshold))
    trainer = PanoVLMTrainer(
        model=model,
        args=options,
        data_collator=collator,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        callbacks=callbacks,
        stage=spec,
        vicreg_weights=VICRegWeights(options.vicreg_invariance, options.vicreg_variance, options.vicreg_covariance),
        vicreg_mode=options.vicreg_mode,
        module_learning_rates=options.module_learning_rates,
    )
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_BarProgressCallback)
    trainer.pop_callback(PrinterCallback)
    trainer.add_callback(_LogFiguresCallback)
    trainer.train(resume_from_checkpoint=options.resume_from_checkpoint)
    _check_ranks_in_sync(trainer)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        if data_args.streaming:  # every reader of the streams is done: their data reports
            finish_streaming_report(output_dir)
        trainer.save_state()
        plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", f"stage {spec.name}")
        if spec.lora:  # instead of PEFT's template card, which names no PanoVLM base and the wrong pipeline
            record_adapter_base(output_dir, base_identity, source)
            write_adapter_card(output_dir, training_data=options.train_csv)
        _write_summary(trainer, options, data_args, time.perf_counter() - begin)
    # No process returns before the output is complete: the next stage of a run file starts from it.
    trainer.accelerator.wait_for_everyone()
    return output_dir


class _BarProgressCallback(ProgressCallback):
    """The Trainer's progress bars, without the figures it would print under them (`_LogFiguresCallback` logs
    those)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class _LogFiguresCallback(TrainerCallback):
    """Logs the figures of each logging step (loss, learning rate, eval_loss...) at INFO, from the main process."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items())
            logger.info("step %d: %s", state.global_step, figures)


def _write_summary(trainer: PanoVLMTrainer, options: StageOptions, data_args: DataArguments, seconds: float) -> Path:
    """`stage_summary.json`, written last and atomically: the marker of a complete stage output."""
    state = trainer.state
    history = state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    summary = {
        "stage": options.stage,
        "model": options.model,
        "output_dir": str(options.output_dir),
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epoch": state.epoch,
        "seconds": round(seconds, 1),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": next((entry["train_loss"] for entry in reversed(history) if "train_loss" in entry), None),
        "eval_loss": eval_losses[-1] if eval_losses else None,
        "best_eval_loss": min(eval_losses) if eval_losses else None,
        "best_checkpoint": state.best_model_checkpoint,
        "stopped_early": options.early_stopping_patience is not None and state.global_step < state.max_steps,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": options.to_dict(),
        "data_args": dataclasses.asdict(data_args),
    }
    return write_text_atomically(Path(options.output_dir) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def read_stage_summary(output_dir: str | Path) -> dict | None:
    """The summary of the complete stage output in `output_dir`, or None when there is none (never trained, or
    stopped before the end: the summary is written last, after the weights)."""
    output_dir = Path(output_dir)
    path = output_dir / SUMMARY_FILE
    if not path.is_file() or not any(all((output_dir / name).is_file() for name in names) for names in _WEIGHTS):
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it, or re-run the stage with --force") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("options"), dict):
        raise ValueError(f"{path} is not a stage summary; delete it, or re-run the stage with --force")
    return summary


def _check_ranks_in_sync(trainer: PanoVLMTrainer) -> None:
    """Under data parallelism, verify that every rank ends with the same trainable weights. FSDP shards (DTensors)
    have a single owner each, so only replicated tensors are compared."""
    accelerator = trainer.accelerator
    if accelerator.num_processes == 1:
        return
    replicated = [p for p in trainer.model.parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if not replicated:
        logger.info("every trainable tensor is sharded across the %d ranks: nothing replicated to compare", accelerator.num_processes)
        return
    fingerprint = torch.stack([p.detach().double().sum() for p in replicated]).to(accelerator.device)
    gathered = accelerator.gather(fingerprint[None])
    if not torch.equal(gathered.min(0).values, gathered.max(0).values):
        raise RuntimeError(f"trainable weights differ across the {accelerator.num_processes} ranks")
    logger.info("trainable weights identical on all %d ranks", accelerator.num_processes)


__all__ = [
    "SUMMARY_FILE",
    "StageOptions",
    "check_stage_data",
    "prepare_table",
    "read_stage_summary",
    "resolve_model_source",
    "run_stage",
]
