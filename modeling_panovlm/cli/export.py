"""Make a saved PanoVLM directory loadable without the PanoVLM library, through transformers' remote code.

examples:
    panovlm export tiny-panovlm
    panovlm export runs/finetune/merged

DIR is a directory written by `save_pretrained` (a model, a processor, or both, e.g. one made by
`examples/build_tiny_checkpoint.py`). The flat modules `configuration_panovlm.py`, `modeling_panovlm.py`,
`processing_panovlm.py` and their siblings are written into it, and `auto_map` is added to `config.json` and
`processor_config.json`. Afterwards, with only transformers and torch (plus numpy and pillow) installed:

    AutoModelForImageTextToText.from_pretrained(DIR, trust_remote_code=True)
    AutoProcessor.from_pretrained(DIR, trust_remote_code=True)

Upload DIR as it is, or push with `modeling_panovlm.hub.push_to_hub(repo_id, model, processor, export_remote_code=True)`.
Also run as `python examples/export_remote_code.py` or `python -m modeling_panovlm.cli.export`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modeling_panovlm.hub.remote_code import export_remote_code

from .console import configure_logging
from .options import HelpFormatter, add_log_level_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panovlm export", description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "directory", type=Path, help="a directory written by save_pretrained (a PanoVLM model, processor or both)"
    )
    add_log_level_flag(parser, default="warning")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0 (argument errors and directories that cannot be exported exit with status 2, as
    argparse does)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if not args.directory.is_dir():
        what = "is not a directory" if args.directory.exists() else "does not exist"
        parser.error(f"{args.directory} {what}: give a directory written by save_pretrained")
    try:
        written = export_remote_code(args.directory)
    except (FileNotFoundError, ValueError) as error:  # not a PanoVLM directory, or an UnsupportedImportError
        parser.error(str(error))
    code = [name for name in written if name.endswith(".py")]
    configs = [name for name in written if name.endswith(".json")]
    print(f"wrote {len(code)} modules ({', '.join(code)}) and auto_map in {', '.join(configs)} to {args.directory}")
    print(f"load with: AutoModelForImageTextToText.from_pretrained({str(args.directory)!r}, trust_remote_code=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
