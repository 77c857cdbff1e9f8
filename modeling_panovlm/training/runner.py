"""Run one training stage, or all three in order, from options a CLI or a YAML file provides.

Every stage starts from a directory (or Hub id) that the Auto classes load, and writes one: full model + processor
for `vision` and `resampler`, a standard PEFT adapter + processor for `finetune` (its `base_model_name_or_path` is
the previous stage's output). Each Trainer checkpoint is complete as well. Next to the weights a stage writes, for
people: `<split>_data_report.json` (rows dropped and why), `trainer_state.json` and `training_curves.png`.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import yaml
from peft import get_peft_model
from torch.distributed.tensor import DTensor
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainingArguments, set_seed

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

from .lora import DEFAULT_LORA_MODULES, lm_lora_config
from .losses import VICREG_MODES, VICRegWeights
from .plots import plot_training_curves
from .stages import STAGES, PanoVLMStageCallback
from .trainer import PanoVLMTrainer


logger = logging.getLogger(__name__)


def _union_members(kind: type) -> tuple:
    """`(float, NoneType)` for `float | None`, `(list[str],)` for `list[str]`."""
    return typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)


@dataclass
class StageOptions:
    """Everything one stage needs. Field names double as CLI flags (`--max-steps`) and YAML keys (`max_steps`).

    `trainer_args` passes any further `TrainingArguments` field through (e.g. `{"fsdp": "full_shard"}`); DeepSpeed
    is `deepspeed: path/to/ds_config.json`.
    """

    stage: str
    model: str
    train_csv: str | list[str]  # any source processing_panovlm.data.load_caption_table reads; a list is concatenated
    output_dir: str
    eval_csv: str | list[str] | None = None
    max_steps: int = -1
    num_train_epochs: float = 1.0
    learning_rate: float = 1e-4
    module_learning_rates: dict[str, float] = field(default_factory=dict)
    batch_size: int = 4
    eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.05
    warmup_steps: float = 0.1  # < 1: a fraction of the total steps (PanoLLaVA warmed up over 10 %)
    max_grad_norm: float = 1.0
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    eval_steps: int | None = None
    resume_from_checkpoint: str | None = None
    # vision stage
    vision_trainable_blocks: int = 0
    vicreg_invariance: float = 25.0
    vicreg_variance: float = 25.0
    vicreg_covariance: float = 1.0
    vicreg_mode: str = "pairwise"  # or "batchwise" (see modeling_panovlm.training.losses)
    # finetune stage
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    lora_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_MODULES))
    lora_modules_to_save: list[str] = field(default_factory=lambda: ["resampler", "multi_modal_projector"])
    # data
    augment: bool = True
    yaw_roll_probability: float = 0.5
    max_roll_fraction: float = 0.3
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1
    # The prompt format; None keeps the one saved with the model's processor, "" (system prompt) means none.
    system_prompt: str | None = None
    user_template: str | None = None
    max_length: int | None = None
    dataloader_num_workers: int = 0
    # runtime
    gradient_checkpointing: bool = False
    bf16: bool = False
    deepspeed: str | None = None
    report_to: str = "none"
    trainer_args: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {self.stage!r}")
        if self.vicreg_mode not in VICREG_MODES:
            raise ValueError(f"vicreg_mode must be one of {list(VICREG_MODES)}, got {self.vicreg_mode!r}")
        # Checked here, because a wrongly typed value (a YAML string where a number belongs) would otherwise fail
        # deep inside TrainingArguments or, worse, be compared as a string.
        for name, kind in typing.get_type_hints(StageOptions).items():
            value = getattr(self, name)
            allowed = tuple(typing.get_origin(t) or t for t in _union_members(kind))
            if float in allowed:
                allowed += (int,)
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                expected = " or ".join(t.__name__ for t in allowed)
                raise TypeError(f"option {name!r} must be {expected}, got {type(value).__name__} {value!r}")


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


def run_stage(options: StageOptions, data_args: DataArguments | None = None) -> Path:
    """Train one stage and write its output directory; returns it. `data_args` says how the tables are read."""
    spec = STAGES[options.stage]
    output_dir = Path(options.output_dir)
    # A local directory is loaded by its absolute path: PEFT records the base's path as the adapter's
    # `base_model_name_or_path`, and a relative one would not load from another working directory. Hub ids stay.
    source = str(Path(options.model).resolve()) if Path(options.model).is_dir() else options.model
    processor = AutoProcessor.from_pretrained(source)
    if options.system_prompt is not None or options.user_template is not None:
        # Set on the processor, which every checkpoint and the output save: evaluation and inference then ask the
        # way training did.
        processor.set_prompts(
            processor.system_prompt if options.system_prompt is None else (options.system_prompt or None),
            options.user_template or processor.user_template,
        )
    model = AutoModelForImageTextToText.from_pretrained(source)
    needs_text = spec.loss == "lm"
    data_args = data_args or DataArguments()
    if data_args.streaming and options.max_steps <= 0:
        raise ValueError(f"a streamed table has no length: set max_steps > 0 (got {options.max_steps})")
    train = prepare_table(options.train_csv, output_dir, "train", needs_text, options.augment, data_args)
    evaluation = (
        prepare_table(options.eval_csv, output_dir, "eval", needs_text, False, data_args) if options.eval_csv else None
    )
    if spec.lora:
        lora = lm_lora_config(
            options.lora_r, options.lora_alpha, options.lora_dropout, options.lora_modules, options.lora_modules_to_save
        )
        # The adapters' random initialisation must be the same in every process (FSDP2, unlike DDP, does not
        # broadcast rank 0's weights) and the same from run to run.
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
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=options.max_steps,
        num_train_epochs=options.num_train_epochs,
        learning_rate=options.learning_rate,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.eval_batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        weight_decay=options.weight_decay,
        warmup_steps=options.warmup_steps,
        max_grad_norm=options.max_grad_norm,
        seed=options.seed,
        logging_steps=options.logging_steps,
        save_steps=options.save_steps,
        save_total_limit=options.save_total_limit,
        eval_strategy="steps" if evaluation is not None else "no",
        eval_steps=options.eval_steps or options.logging_steps,
        remove_unused_columns=False,  # the collator needs the raw table columns
        label_names=[] if spec.loss == "overlap_vicreg" else ["labels"],
        activation_checkpointing=options.gradient_checkpointing,
        bf16=options.bf16,
        deepspeed=options.deepspeed,
        dataloader_num_workers=options.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        report_to=options.report_to,
        # Without an accelerator, accelerate only sets up data parallelism over CPU processes (gloo) when told to use
        # the CPU; otherwise each rank of `torchrun` / `accelerate launch --multi_gpu` trains alone on all the data.
        **{"use_cpu": not torch.accelerator.is_available(), **options.trainer_args},
    )
    trainer = PanoVLMTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        callbacks=[PanoVLMStageCallback(spec, options.vision_trainable_blocks, collator)],
        stage=spec,
        vicreg_weights=VICRegWeights(options.vicreg_invariance, options.vicreg_variance, options.vicreg_covariance),
        vicreg_mode=options.vicreg_mode,
        module_learning_rates=options.module_learning_rates,
    )
    trainer.train(resume_from_checkpoint=options.resume_from_checkpoint)
    _check_ranks_in_sync(trainer)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        if data_args.streaming:  # every reader of the streams is done: their data reports
            finish_streaming_report(output_dir)
        trainer.save_state()
        plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", f"stage {spec.name}")
        if spec.lora:  # instead of PEFT's template card, which names no PanoVLM base and the wrong pipeline
            write_adapter_card(output_dir, training_data=options.train_csv)
    # No process returns before the output is complete: the next stage of a run file starts from it.
    trainer.accelerator.wait_for_everyone()
    return output_dir


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


def stage_options_from_yaml(path: str | Path, overrides: dict | None = None) -> list[StageOptions]:
    """The stages of a YAML run file, in order, each starting from the previous stage's output.

    Top-level keys are `StageOptions` fields shared by all stages (`model` is where the first stage starts,
    `output_dir` the run directory); `stages` lists per-stage overrides, each with at least `stage`. A stage's
    output goes to `<output_dir>/<stage>` unless it sets `output_dir`. `overrides` (e.g. from the command line)
    replace top-level keys.
    """
    config = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of options with a `stages` list")
    stages = config.pop("stages", None)
    if not stages or not isinstance(stages, list):
        raise ValueError(f"{path}: no `stages` list")
    config.update(overrides or {})
    known = {f.name for f in dataclasses.fields(StageOptions)}
    options, model = [], config.get("model")
    for index, stage in enumerate(stages):
        # Checked here so that a malformed file names the stage and key, not a KeyError/TypeError from below.
        if not isinstance(stage, dict) or "stage" not in stage:
            raise ValueError(f"{path}: stage {index} must be a mapping with at least a `stage` key, got {stage!r}")
        merged = {**config, **stage}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"{path}: stage {index} has unknown keys {unknown}")
        merged["model"] = model
        for name, kind in typing.get_type_hints(StageOptions).items():
            # YAML 1.1 reads `1e-4` (no dot) as a string; numbers written that way are meant as numbers.
            if isinstance(merged.get(name), str) and float in _union_members(kind):
                try:
                    merged[name] = float(merged[name])
                except ValueError:
                    raise ValueError(f"{path}: stage {index} option {name!r} must be a number, got {merged[name]!r}") from None
        if "output_dir" not in stage and config.get("output_dir"):
            merged["output_dir"] = str(Path(config["output_dir"]) / stage["stage"])
        missing = [key for key in ("model", "train_csv", "output_dir") if not merged.get(key)]
        if missing:
            raise ValueError(f"{path}: stage {index} ({stage['stage']}) has no value for {missing}")
        options.append(StageOptions(**merged))
        model = merged["output_dir"]
    return options


__all__ = ["StageOptions", "prepare_table", "run_stage", "stage_options_from_yaml"]
