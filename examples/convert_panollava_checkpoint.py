"""Convert a PanoLLaVA training run into a PanoVLM checkpoint and, for LoRA runs, a standard PEFT adapter.

    python examples/convert_panollava_checkpoint.py --checkpoint-dir RUN_DIR --output-dir OUT \\
        [--vision-config google/siglip2-so400m-patch16-256] [--text-config Qwen/Qwen3-0.6B]

RUN_DIR is a PanoLLaVA stage directory (`runs/{experiment}/{stage}/{crop}_{resampler}/`): `best.ckpt`, else
`last.ckpt`, else the newest `.ckpt` is converted, with `checkpoint_metadata.json` and `lora_weights/` when present.
OUT becomes a `from_pretrained` directory (config.json, model.safetensors, generation_config.json), plus
`OUT/adapter/` for LoRA runs. PanoLLaVA saved no tower configs: `--vision-config` / `--text-config` (a config.json,
a model directory or a Hub id) default to the model names the run recorded.

Prints the resolved settings (as recorded, as observed in the weights, as used; disagreements flagged) and the key
table (mapped / alias / adapter / unused / missing / mismatched). Exit status: 0 converted; 1 keys left unmapped
(nothing is written); 2 the run cannot be read or configured.
"""

import argparse
import logging
import sys

from configuration_panovlm import CROP_STRATEGIES
from modeling_panovlm.conversion.panollava import (
    ConversionReport,
    LegacyConversionError,
    load_legacy_run,
    plan_conversion,
    write_conversion,
)


def format_report(report: ConversionReport) -> str:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", required=True, help="the PanoLLaVA stage run directory")
    parser.add_argument("--output-dir", required=True, help="where to write the PanoVLM checkpoint (new or empty)")
    parser.add_argument("--vision-config", help="vision tower config: config.json, model directory or Hub id")
    parser.add_argument("--text-config", help="language model config: config.json, model directory or Hub id")
    parser.add_argument("--crop-strategy", choices=CROP_STRATEGIES, help="override the recorded crop strategy")
    parser.add_argument("--image-token-id", type=int, default=151655, help="image placeholder id (Qwen <|image_pad|>)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

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
        sys.exit(1)
    try:
        output = write_conversion(conversion, args.output_dir)
    except FileExistsError as error:
        parser.error(str(error))
    adapter = f" and a LoRA adapter in {output / 'adapter'}" if conversion.adapter_config else ""
    print(f"\nwrote {output}{adapter}")


if __name__ == "__main__":
    main()
