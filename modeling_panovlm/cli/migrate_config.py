"""Translate a PanoLLaVA experiment config (configs/*.yaml) into a PanoVLM run file and the model it starts from.

examples:
    panovlm migrate-config configs/anyres_e2p.yaml --output run.yaml
    panovlm migrate-config configs/anyres_e2p.yaml --output run.yaml --build     # also build the start checkpoint
    panovlm train --config run.yaml

Writes OUTPUT (the run file `panovlm train --config` reads: one entry per stage of training.stages, with its epochs,
learning rate, batch size, accumulation, text length, tables, VICReg and LoRA settings) and OUTPUT's sibling
`<name>.model.yaml`: the arguments of PanoVLMForConditionalGeneration.from_vision_text_pretrained (towers, resampler
config with PanoLLaVA's field names, views, PE, stitching, VICReg head), the prompt format and the generation
settings. The run file's `model` is `<run dir>/start`, the checkpoint built from those arguments: --build builds it
now (it loads both towers), or run this command again with --build when the towers are at hand.

Prints a mapping table: every key of the YAML, where it went (`run:` the run file, `model:` the model arguments,
`evaluate:` the evaluation command) or why it was not carried over. Where PanoLLaVA's code used another value than
its YAML wrote (the model's stitching came from `models:` only, resampler defaults depended on whether
`resampler_config` was given, stage-level VICReg keys were never read), the effective value is written and the note
says so. Exit status: 0 written; 2 the config cannot be translated or a flag is wrong. Also run as
`python examples/migrate_config.py` or `python -m modeling_panovlm.cli.migrate_config`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from configuration_panovlm.atomic_files import write_text_atomically
from modeling_panovlm.conversion.config_migration import ConfigMigration, format_mapping_table, migrate_config
from modeling_panovlm.conversion.legacy_run import LegacyConversionError
from modeling_panovlm.conversion.start_checkpoint import build_start_checkpoint

from .console import configure_logging
from .options import HelpFormatter, add_log_level_flag


def model_args_path(run_file: Path) -> Path:
    """Where the model arguments of `run_file` go: `run.yaml` -> `run.model.yaml`."""
    return run_file.with_name(f"{run_file.stem}.model.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panovlm migrate-config", description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False
    )
    parser.add_argument("config", type=Path, help="the PanoLLaVA experiment YAML (configs/*.yaml)")
    parser.add_argument("--output", required=True, type=Path, help="the run file to write (YAML, e.g. run.yaml)")
    parser.add_argument(
        "--output-dir", help="the run directory (default: PanoLLaVA's paths.runs_dir/<experiment name>)"
    )
    parser.add_argument(
        "--build", action="store_true", help="also build the start checkpoint (<run dir>/start) from the towers now"
    )
    parser.add_argument("--vision-model", help="with --build: a local copy (or another id) of the vision tower")
    parser.add_argument("--text-model", help="with --build: a local copy (or another id) of the language model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT and its .model.yaml")
    add_log_level_flag(parser, default="warning")
    return parser


def write_migration(migration: ConfigMigration, output: Path) -> Path:
    """Write the run file and its model arguments (each atomically); returns the model arguments' path."""
    source = migration.source or "a PanoLLaVA config"
    header = (f"# PanoVLM run file translated from {source} by `panovlm migrate-config`.\n"
              f"# The first stage starts from `model`, built by `panovlm migrate-config ... --build` from "
              f"{model_args_path(output).name}.\n")
    write_text_atomically(output, header + yaml.safe_dump(migration.run_file, sort_keys=False, allow_unicode=True))
    model_file = model_args_path(output)
    write_text_atomically(model_file, f"# from_vision_text_pretrained arguments translated from {source}\n"
                          + yaml.safe_dump(migration.model_args, sort_keys=False, allow_unicode=True))
    return model_file


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0 when written (argument errors and untranslatable configs exit with status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if (args.vision_model or args.text_model) and not args.build:
        parser.error("--vision-model / --text-model choose the towers of --build: add --build")
    if not args.overwrite:
        existing = [str(p) for p in (args.output, model_args_path(args.output)) if p.exists()]
        if existing:
            parser.error(f"{', '.join(existing)} exist(s): give --overwrite to replace, or another --output")
    try:
        migration = migrate_config(args.config, output_dir=args.output_dir)
    except LegacyConversionError as error:
        parser.error(str(error))
    print(format_mapping_table(migration))
    model_file = write_migration(migration, args.output)
    print(f"\nwrote {args.output} (run file) and {model_file} (model arguments)")
    start = Path(migration.run_file["model"])
    if args.build:
        try:
            build_start_checkpoint(migration.model_args, start, args.vision_model, args.text_model)
        except (OSError, ValueError) as error:
            parser.error(f"cannot build the start checkpoint: {error}")
        print(f"built the start checkpoint {start}")
    else:
        print(f"the run starts from {start}: build it with `panovlm migrate-config {args.config} --output "
              f"{args.output} --overwrite --build`")
    print(f"train:    panovlm train --config {args.output}")
    if migration.test_csv is not None:
        tables = migration.test_csv if isinstance(migration.test_csv, str) else " ".join(migration.test_csv)
        last = migration.run_file["stages"][-1]["stage"]
        print(f"evaluate: panovlm evaluate --model {Path(migration.run_file['output_dir']) / last} --csv {tables} "
              f"--output-dir {Path(migration.run_file['output_dir']) / 'evaluation'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
