"""`panovlm train`: train one PanoVLM stage from flags, or the stages of a run file in order."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import torch.distributed as dist
from accelerate import PartialState

from modeling_panovlm.training.plan import (
    evaluate_after_training,
    format_plan,
    format_stage_line,
    plan_stages,
    plot_run,
    run_plan,
)
from modeling_panovlm.training.run_file import TrainArgumentParser, resolve_stages, split_run_options

from .console import attach_log_file, configure_logging, library_warnings_logged


logger = logging.getLogger(__name__)

DESCRIPTION = """\
Train one PanoVLM stage, or the stages of a run file in order, with transformers.Trainer.

examples:
  one stage from flags:
    panovlm train --model out/tiny-panovlm --stage vision --train-csv data/train.csv \\
        --output-dir out/run/vision --max-steps 150 --learning-rate 2e-3 --batch-size 16
  every stage of a run file, each starting from the previous stage's output (<output_dir>/<stage>):
    panovlm train --config examples/stages.yaml
  only the finetune stage of it, 5 steps at another learning rate (flags override the file):
    panovlm train --config examples/stages.yaml --stage finetune --max-steps 5 --learning-rate 1e-5
  see what would run, with every option resolved:
    panovlm train --config examples/stages.yaml --dry-run
  two CPU processes (gloo) or several GPUs:
    accelerate launch --multi_gpu --num_processes 2 -m modeling_panovlm.cli train --config stages.yaml

Stages whose complete output exists are skipped (--force trains them again). With --eval-csv, the last stage's
output is evaluated on that table afterwards (<output-dir>/evaluation). The terminal shows the plan, progress bars
and one line per stage; <output-dir>/train.log keeps every detail. Every flag below is also a run-file key
(`max_steps: 150`); DeepSpeed: --deepspeed ds_config.json; FSDP: --fsdp "full_shard auto_wrap".
"""


def build_parser() -> TrainArgumentParser:
    return TrainArgumentParser(prog="panovlm train", description=DESCRIPTION)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    run, given = split_run_options(parser.given(sys.argv[1:] if argv is None else list(argv)))
    configure_logging(given.get("log_level"), run.quiet, given.get("log_level_replica"))
    _warn_if_processes_were_lost()
    if run.quiet:
        given.setdefault("disable_tqdm", True)
    try:
        stages = resolve_stages(run.config, given, run.stages)
        plan = plan_stages(stages.stages, force=run.force, data_args=stages.data_args)
    except ValueError as error:
        parser.error(str(error))
    main_process = PartialState().is_main_process
    if main_process and (run.dry_run or not run.quiet):
        print(format_plan(plan, stages, details=run.dry_run), flush=True)
    if run.dry_run:
        _end_distributed(main_process, leave=True)
        return 0
    log_file = attach_log_file(stages.run_dir / "train.log")
    for summary in run_plan(plan):
        if main_process:
            print(format_stage_line(summary), flush=True)
    # Training is over: the other processes leave, and the main one evaluates alone (no barrier to time out).
    distributed = _end_distributed(main_process, leave=False)
    if main_process:
        evaluation = evaluate_after_training(plan, stages.run_dir, show_progress=not run.quiet)
        if len(plan) > 1:
            curves = plot_run(plan, stages.run_dir / "training_curves.png")
            if curves is not None:
                print(f"training curves of the {len(plan)} stages: {curves}")
        if evaluation is not None:
            print((evaluation / "report.md").read_text(encoding="utf-8"))
        dropped = library_warnings_logged()
        if dropped and log_file is not None:
            print(f"{dropped} warning(s) from libraries were written to {log_file}")
    if distributed:
        _exit()
    return 0


def _end_distributed(main_process: bool, leave: bool) -> bool:
    """End the process group, if any: the other processes exit, and the main one too when `leave`. Returns whether
    there was one. torch's gloo teardown can abort at interpreter exit, so processes that had one end explicitly."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()
    dist.destroy_process_group()
    if leave or not main_process:
        _exit()
    return True


def _exit() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _warn_if_processes_were_lost() -> None:
    """`accelerate launch --num_processes 2` without `--multi_gpu` on a machine without GPUs starts one process (its
    simple launcher), which trains alone on all the data. The launcher sets MASTER_ADDR only when more than one
    process was asked for, and a real distributed launch sets WORLD_SIZE."""
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ
    if launched_by_accelerate and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        logger.warning(
            "accelerate launch was asked for several processes but started this one alone, which trains on all the "
            "data: on a machine without GPUs, add --multi_gpu (accelerate launch --multi_gpu --num_processes N ...)"
        )


if __name__ == "__main__":
    sys.exit(main())
