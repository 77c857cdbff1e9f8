"""`panovlm`: PanoVLM's command-line tools, one command with sub-commands.

    panovlm train --model DIR --stage vision --train-csv train.csv --output-dir out/vision
    panovlm train --config stages.yaml
    panovlm evaluate --model out/run/finetune --csv test.csv --output-dir eval
    panovlm demo --quick

Each sub-command lives in `modeling_panovlm.cli.<name>` with `build_parser()` and `main(argv) -> int`, imported
only when it runs (`panovlm train --help` loads no evaluation code), and is also installed as `panovlm-<name>`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


# name -> (module, one line for `panovlm --help`)
COMMANDS = {
    "train": ("modeling_panovlm.cli.train", "train a stage, or the stages of a run file, with transformers.Trainer"),
    "evaluate": (
        "modeling_panovlm.cli.evaluate",
        "caption metrics of a checkpoint on a table, or of a predictions file",
    ),
    "infer": ("modeling_panovlm.cli.infer", "answer questions about one panorama"),
    "convert": ("modeling_panovlm.cli.convert", "convert a PanoLLaVA checkpoint to a PanoVLM one"),
    "migrate-config": (
        "modeling_panovlm.cli.migrate_config",
        "translate a PanoLLaVA config.yaml into a run file and the model it starts from",
    ),
    "export": ("modeling_panovlm.cli.export", "export a checkpoint with its modelling code (trust_remote_code)"),
    "demo": ("modeling_panovlm.cli.demo", "end to end on CPU: tiny model, synthetic panoramas, three stages"),
    "probe": ("modeling_panovlm.cli.probe", "which model part carries which panoramic skill: ablations on CPU"),
}


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<14} {summary}" for name, (_, summary) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="panovlm",
        description=__doc__.split("\n\n", 2)[1] if __doc__ else None,
        epilog=f"commands:\n{listing}\n\n`panovlm COMMAND --help` shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's options (panovlm COMMAND --help)")
    return parser


def load_command(name: str):
    """The module of sub-command `name`, imported only now (each command loads only what it needs)."""
    return importlib.import_module(COMMANDS[name][0])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return load_command(args.command).main(args.arguments)


__all__ = ["COMMANDS", "build_parser", "load_command", "main"]
