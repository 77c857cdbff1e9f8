"""Convert a PanoLLaVA training run into a PanoVLM checkpoint and, for LoRA runs, a standard PEFT adapter.

examples:
    panovlm convert --checkpoint-dir runs/exp1/finetune/anyres_e2p_bimamba --output-dir panovlm-exp1
    panovlm convert --checkpoint-dir RUN_DIR --output-dir OUT \\
        --vision-config google/siglip2-so400m-patch16-256 --text-config Qwen/Qwen3-0.6B

RUN_DIR is a PanoLLaVA stage directory (`runs/{experiment}/{stage}/{crop}_{resampler}/`): `best.ckpt`, else the
`.ckpt` whose name records the lowest validation loss (`..._loss2.4910.ckpt`), else `last.ckpt`, else the newest
`.ckpt` is converted, with `checkpoint_metadata.json` and `lora_weights/` when present.
OUT becomes a `from_pretrained` directory (config.json, model.safetensors, generation_config.json), plus
`OUT/adapter/` for LoRA runs. PanoLLaVA saved no tower configs: `--vision-config` / `--text-config` (a config.json,
a model directory or a Hub id) default to the model names the run recorded.

Prints the resolved settings (as recorded, as observed in the weights, as used; disagreements flagged) and the key
table (mapped / alias / adapter / unused / missing / mismatched). Exit status: 0 converted; 1 keys left unmapped
(nothing is written); 2 the run cannot be read or configured, or a flag is wrong. Also run as
`python examples/convert_panollava_checkpoint.py` or `python -m modeling_panovlm.cli.convert`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from configuration_panovlm import CROP_STRATEGIES
from configuration_panovlm.configuration_panovlm import QWEN_IMAGE_PAD_ID
from modeling_panovlm.conversion.panollava import (
    ConversionReport,
    LegacyConversionError,
    load_legacy_run,
    plan_conversion,
    write_conversion,
)

from .console import configure_logging
from .options import HelpFormatter, add_log_level_flag, int_at_least


def format_report(report: ConversionReport) -> str:
    """The settings table and the key table of a planned conversion, as printed."""
    run = report.run
    lines = [
        f"run: {run.run_dir}",
        f"checkpoint: {run.checkpoint.name} -> {run.checkpoint.resolve().name}",
        f"metadata: checkpoint_metadata.json {run.metadata_status}",
        f"lora: {run.lora_dir or 'none'}",
        "",
        f"{'setting':32} {'recorded':>14} {'observed':>14} {'used':>14}",
    ]
    for row in report.rows:
        note = "  DISAGREES: the observed value is used" if row.disagrees else ""
        lines.append(f"{row.name:32} {row.recorded!s:>14} {row.observed!s:>14} {row.used!s:>14}{note}")
    lines += ["", f"{'keys':10} {'count':>6}  source -> PanoVLM"]
    lines += [f"{'mapped':10} {count:>6}  {src} -> {dst}" for (src, dst), count in sorted(report.mapped.items())]
    lines.append(f"{'alias':10} {len(report.aliases):>6}  second copies of converted tensors (checked equal)")
    lines.append(f"{'adapter':10} {len(report.adapter):>6}  LoRA tensors -> adapter/")
    for kind in ("unused", "missing", "mismatched"):
        keys = getattr(report, kind)
        lines += [f"{kind:10} {len(keys):>6}"] + [f"{'':18}{key}" for key in keys]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panovlm convert", description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--checkpoint-dir", required=True, type=Path, help="the PanoLLaVA stage run directory")
    parser.add_argument(
        "--output-dir", required=True, type=Path, help="where to write the PanoVLM checkpoint (new or empty)"
    )
    parser.add_argument(
        "--vision-config",
        help="vision tower config: a config.json, a model directory or a Hub id (default: the name the run recorded)",
    )
    parser.add_argument(
        "--text-config",
        help="language model config: a config.json, a model directory or a Hub id (default: the name the run recorded)",
    )
    parser.add_argument("--crop-strategy", choices=CROP_STRATEGIES, help="override the crop strategy the run recorded")
    parser.add_argument(
        "--image-token-id",
        type=int_at_least(0),
        default=QWEN_IMAGE_PAD_ID,
        help=f"id of the image placeholder token (>= 0; default {QWEN_IMAGE_PAD_ID}, Qwen's <|image_pad|>)",
    )
    add_log_level_flag(parser, default="warning")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0 when converted, 1 when keys are left unmapped (argument errors and runs that
    cannot be read exit with status 2, as argparse does)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if not args.checkpoint_dir.is_dir():
        what = "is not a directory" if args.checkpoint_dir.exists() else "does not exist"
        parser.error(f"--checkpoint-dir {args.checkpoint_dir} {what}")
    try:
        run = load_legacy_run(args.checkpoint_dir)
        conversion = plan_conversion(
            run, args.vision_config, args.text_config, args.crop_strategy, image_token_id=args.image_token_id
        )
    except (FileNotFoundError, LegacyConversionError) as error:
        parser.error(str(error))
    report = conversion.report
    print(format_report(report))
    if not report.complete:
        problems = len(report.unused) + len(report.missing) + len(report.mismatched)
        print(f"\nFAILED: {problems} keys left unmapped; nothing written", file=sys.stderr)
        return 1
    try:
        output = write_conversion(conversion, args.output_dir)
    except FileExistsError as error:
        parser.error(str(error))
    adapter = f" and a LoRA adapter in {output / 'adapter'}" if conversion.adapter_config else ""
    print(f"\nwrote {output}{adapter}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
