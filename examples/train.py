"""Train a PanoVLM stage, or all three stages in order.

One stage:

    python examples/train.py --model DIR_OR_HUB_ID --stage {vision,resampler,finetune} --train-csv CSV \
        [--eval-csv CSV] --output-dir OUT [--max-steps N] [...]

All stages from a run file (each stage starts from the previous stage's output, `<output_dir>/<stage>`):

    python examples/train.py --config stages.yaml [--any-flag value ...]   # flags override the file's top level

Every flag is a field of `modeling_panovlm.training.runner.StageOptions` (`--help` lists them). Two processes on
CPU, or several GPUs: `accelerate launch --multi_gpu --num_processes 2 examples/train.py ...` (on CPU this uses
the gloo backend). DeepSpeed: `--deepspeed ds_config.json`; FSDP: `--trainer-args '{"fsdp": "full_shard"}'`.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing

import torch.distributed as dist

from modeling_panovlm.training.runner import (
    StageOptions,
    run_stage,
    stage_options_from_yaml,
)


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: `--lora` would silently pick one of several `--lora-*` flags.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--config", help="YAML run file with a `stages` list (runs every stage in order)")
    hints = typing.get_type_hints(StageOptions)
    for option in dataclasses.fields(StageOptions):
        flag = "--" + option.name.replace("_", "-")
        kind = hints[option.name]
        kwargs: dict = {"default": None, "dest": option.name}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list or kind is list:
            kwargs["nargs"] = "*"
        elif kind is dict or typing.get_origin(kind) is dict:
            kwargs["type"] = json.loads
            kwargs["help"] = "JSON object"
        else:
            base = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
            kwargs["type"] = base[0]
        parser.add_argument(flag, **kwargs)
    return parser


def main() -> None:
    args = vars(build_parser().parse_args())
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = args.pop("config")
    given = {key: value for key, value in args.items() if value is not None}
    if config:
        stages = stage_options_from_yaml(config, given)
    else:
        missing = [name for name in ("stage", "model", "train_csv", "output_dir") if name not in given]
        if missing:
            sys.exit(f"error: give --config, or all of {', '.join('--' + m.replace('_', '-') for m in missing)}")
        stages = [StageOptions(**given)]
    for options in stages:
        output = run_stage(options)
        logging.getLogger("train").info("stage %s done: %s", options.stage, output)
    if dist.is_available() and dist.is_initialized():
        # torch's gloo teardown can abort at interpreter exit; end the ranks explicitly once all work is done.
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
