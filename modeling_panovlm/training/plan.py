"""The plan of a training run: which stages train, which are skipped, what follows the last stage.

A stage whose complete output exists (its `stage_summary.json`, written last) is skipped, unless `force`; once a stage
trains, every later stage trains too (it starts from the new output). A complete output trained with other options
is refused rather than reused or overwritten silently. After the last stage, with `eval_csv`, the output is
evaluated on that table with `modeling_panovlm.evaluation.evaluate_caption_table` (`<run_dir>/evaluation`), and a
run of several stages gets one combined training-curve PNG (`<run_dir>/training_curves.png`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from modeling_panovlm.evaluation import evaluate_caption_table, greedy_generation_config, load_model_and_processor
from modeling_panovlm.hub.cards import write_adapter_card
from processing_panovlm.data import DataArguments

from .options import StageOptions
from .plots import plot_run_curves
from .run_file import RunStages
from .runner import SUMMARY_FILE, check_stage_data, read_stage_summary, resolve_model_source, run_stage
from .stages import STAGES


logger = logging.getLogger(__name__)

# Options that do not change what a stage trains: a complete output trained with other values of these is reused.
_NOT_COMPARED = frozenset(
    {
        "resume_from_checkpoint", "local_rank", "disable_tqdm", "log_level", "log_level_replica", "report_to",
        "logging_steps", "logging_strategy", "logging_first_step", "logging_nan_inf_filter", "run_name", "project",
        "save_steps", "save_total_limit", "save_on_each_node", "dataloader_num_workers", "dataloader_prefetch_factor",
        "dataloader_persistent_workers", "evaluate_after_training", "evaluation_max_samples",
        "evaluation_max_new_tokens", "metrics_tokenizer", "push_to_hub", "skip_memory_metrics",
    }
)
# What is evaluated during training, and when: it changes the weights only through early stopping.
_EVALUATION_ONLY = frozenset(
    {
        "eval_csv", "eval_steps", "eval_strategy", "do_eval", "eval_delay", "eval_on_start", "eval_batch_size",
        "eval_accumulation_steps", "prediction_loss_only",
    }
)


@dataclass
class PlannedStage:
    """A stage of the plan, how it reads its tables, and why it is not trained (`skip`; None: it trains)."""

    options: StageOptions
    data_args: DataArguments = field(default_factory=DataArguments)
    skip: str | None = None


def plan_stages(
    stages: list[StageOptions], force: bool = False, data_args: list[DataArguments] | None = None
) -> list[PlannedStage]:
    """Decide, for each stage in order (read as `data_args` says, default `DataArguments()`), whether it trains (see
    the module docstring). Raises `ValueError` for a complete output trained with other options, and for a stage
    whose starting model does not exist or whose options and data options disagree."""
    plan, trains = [], False
    for options, data in zip(stages, data_args or [DataArguments() for _ in stages], strict=True):
        check_stage_data(options, data)
        summary = None if force or trains else read_stage_summary(options.output_dir)
        if summary is None:
            trains = True
            plan.append(PlannedStage(options, data))
            continue
        changed = option_differences(summary["options"], options)
        recorded_data = summary.get("data_args", {})
        changed += [
            f"{name}: {recorded_data.get(name)!r} there, {value!r} now"
            for name, value in dataclasses.asdict(data).items()
            if name != "num_proc" and recorded_data.get(name) != value  # processes read faster, not differently
        ]
        if changed:
            raise ValueError(
                f"{options.output_dir} holds a complete {options.stage} stage trained with other options "
                f"({'; '.join(changed)}): --force trains it again, or give another --output-dir"
            )
        plan.append(PlannedStage(options, data, skip=f"complete output from {summary['finished']}"))
    produced = {str(planned.options.output_dir) for planned in plan}
    for planned in plan:
        if planned.skip is None and planned.options.model not in produced:
            resolve_model_source(planned.options.model)
    return plan


def option_differences(recorded: dict, options: StageOptions) -> list[str]:
    """`name: value there, value now` for each option that changes what is trained (see `_NOT_COMPARED`; the
    evaluation during training counts only with early stopping)."""
    current = json.loads(json.dumps(options.to_dict()))
    ignored = _NOT_COMPARED
    if recorded.get("early_stopping_patience") is None and options.early_stopping_patience is None:
        ignored |= _EVALUATION_ONLY
    names = sorted((set(recorded) | set(current)) - ignored)
    return [
        f"{name}: {recorded.get(name)!r} there, {current.get(name)!r} now"
        for name in names
        if recorded.get(name) != current.get(name) and not name.startswith(("hub_", "trackio_"))
    ]


def run_plan(plan: list[PlannedStage]) -> Iterator[dict]:
    """Train the plan's stages in order (skipped ones are not touched) and yield each stage's summary."""
    for planned in plan:
        if planned.skip is None:
            run_stage(planned.options, planned.data_args)
        yield read_stage_summary(planned.options.output_dir) | {"skipped": planned.skip is not None}


def evaluation_target(plan: list[PlannedStage], run_dir: Path) -> Path | None:
    """Where the evaluation after the last stage writes, or None when there is none to run: no `eval_csv`, turned
    off, or a last stage (vision) that does not train the language side."""
    last = plan[-1].options
    if not last.eval_csv or not last.evaluate_after_training or STAGES[last.stage].loss != "lm":
        return None
    return Path(run_dir) / "evaluation"


def evaluate_after_training(plan: list[PlannedStage], run_dir: Path, show_progress: bool = True) -> Path | None:
    """Evaluate the last stage's output on its `eval_csv` into `<run_dir>/evaluation` and return that directory;
    None when there is nothing to evaluate (see `evaluation_target`). A current evaluation of a skipped last stage
    is kept. Runs in the calling process alone: under distributed training, call it on the main process once the
    others are done (a long evaluation would otherwise outlast their barrier's timeout)."""
    target = evaluation_target(plan, run_dir)
    last = plan[-1].options
    if target is None:
        if last.eval_csv and STAGES[last.stage].loss != "lm":
            logger.info("no caption evaluation after a %s stage: it does not train the language side", last.stage)
        return None
    if plan[-1].skip is not None and _evaluation_is_current(target, last):
        logger.info("evaluation of %s kept: %s", last.output_dir, target)
        return target
    model, processor = load_model_and_processor(last.output_dir)
    evaluate_caption_table(
        model,
        processor,
        last.eval_csv,
        target,
        max_samples=last.evaluation_max_samples,
        batch_size=last.eval_batch_size,
        generation_config=greedy_generation_config(model, last.evaluation_max_new_tokens),
        seed=last.seed,
        show_progress=show_progress,
        model_name=str(last.output_dir),
        tokenizer=last.metrics_tokenizer,
        data_args=plan[-1].data_args,
    )
    if STAGES[last.stage].lora:  # the adapter's card gets the scores
        write_adapter_card(last.output_dir, training_data=last.train_csv, metrics=target / "metrics.json")
    return target


def _evaluation_is_current(target: Path, options: StageOptions) -> bool:
    """Whether `target` holds an evaluation of this very output on this table, made after the output was."""
    metrics, summary = target / "metrics.json", Path(options.output_dir) / SUMMARY_FILE
    if not metrics.is_file() or metrics.stat().st_mtime < summary.stat().st_mtime:
        return False
    recorded = json.loads(metrics.read_text(encoding="utf-8"))
    return recorded.get("data", {}).get("source") == str(options.eval_csv) and (
        recorded.get("generation", {}).get("model") == str(options.output_dir)
    )


def plot_run(plan: list[PlannedStage], path: Path) -> Path | None:
    """One PNG of every stage's curves, one after the other (main process only)."""
    histories = []
    for planned in plan:
        state = Path(planned.options.output_dir) / "trainer_state.json"
        history = json.loads(state.read_text(encoding="utf-8"))["log_history"] if state.is_file() else []
        histories.append((planned.options.stage, history))
    return plot_run_curves(histories, path, f"{len(plan)} stages: {' -> '.join(name for name, _ in histories)}")


def non_default_options(options: StageOptions, data_args: DataArguments | None = None) -> dict:
    """The options of a stage that a run file or flags changed, with what they imply (e.g. `eval_strategy` for an
    `eval_csv`): the differences from the same stage with nothing but its table, model and output given."""
    given = {name: getattr(options, name) for name in ("stage", "model", "train_csv", "output_dir")}
    baseline = json.loads(json.dumps(StageOptions(**given).to_dict()))
    current = json.loads(json.dumps(options.to_dict()))
    data = dataclasses.asdict(data_args or DataArguments())
    return (
        {"train_csv": options.train_csv}
        | {name: value for name, value in current.items() if value != baseline.get(name) and name != "model"}
        | {name: value for name, value in data.items() if value != getattr(DataArguments(), name)}
    )


def format_plan(plan: list[PlannedStage], run: RunStages, details: bool = False) -> str:
    """The plan as people read it: one line per stage (and each stage's non-default options with `details`)."""
    lines = [f"plan ({run.source}, run directory {run.run_dir}):"]
    for planned in plan:
        options = planned.options
        length = _count(options.max_steps, "step") if options.max_steps > 0 else _count(options.num_train_epochs, "epoch")
        action = f"skip ({planned.skip})" if planned.skip else f"train {length}, learning rate {options.learning_rate:g}"
        lines.append(f"  {options.stage:<9} {options.model} -> {options.output_dir}: {action}")
        if details:
            changed = non_default_options(options, planned.data_args)
            lines += [f"      {name} = {value!r}" for name, value in changed.items()]
    target = evaluation_target(plan, run.run_dir)
    if target is not None:
        lines.append(f"  then evaluate {plan[-1].options.output_dir} on {plan[-1].options.eval_csv} -> {target}")
    return "\n".join(lines)


def format_stage_line(summary: dict) -> str:
    """One line with a stage's figures."""
    steps = _count(summary["global_step"], "step")
    if summary["first_loss"] is not None:
        loss = f"loss {summary['first_loss']:.4g} -> {summary['last_loss']:.4g}"
    else:
        loss = f"mean loss {summary['train_loss']:.4g} (no step logged: fewer steps than --logging-steps)"
    parts = [steps if not summary.get("skipped") else f"kept ({steps})", loss]
    if summary["eval_loss"] is not None:
        parts.append(f"eval loss {summary['eval_loss']:.4g}")
    if summary["stopped_early"]:
        parts.append(f"stopped early, best eval loss {summary['best_eval_loss']:.4g}")
    if not summary.get("skipped"):
        parts.append(f"{summary['seconds']:.0f} s")
    return f"stage {summary['stage']}: {', '.join(parts)} -> {summary['output_dir']}"


def _count(number: float, noun: str) -> str:
    return f"{number:g} {noun}" + ("" if number == 1 else "s")


__all__ = [
    "PlannedStage",
    "evaluate_after_training",
    "evaluation_target",
    "format_plan",
    "format_stage_line",
    "non_default_options",
    "option_differences",
    "plan_stages",
    "plot_run",
    "run_plan",
]
