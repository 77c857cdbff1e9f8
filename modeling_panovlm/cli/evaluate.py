"""Evaluate a checkpoint on a QuIC-360-style table, or score an existing predictions file.

examples:
    panovlm evaluate --model DIR_OR_HUB_ID [--adapter DIR] --csv test.csv --output-dir eval/
    panovlm evaluate --model runs/finetune --csv test.csv --output-dir eval/ --max-samples 50 --batch-size 4 \\
        --do-sample --temperature 0.7 --top-p 0.9 --seed 0
    panovlm evaluate --model llava-hf/llava-1.5-7b-hf --csv test.csv --output-dir eval-llava/   # a baseline
    panovlm evaluate --predictions eval/predictions.csv --output-dir rescored/ --metrics-style panollava
    panovlm evaluate --checkpoint-dir runs/exp/finetune/anyres-e2p_bimamba --csv-input test.csv --max-samples 100 \
        --config configs/anyres_e2p.yaml                            # a PanoLLaVA run, with PanoLLaVA's flags

--model is a PanoVLM checkpoint (asked through its panorama processor, in the prompt format saved with it), or any
other AutoModelForImageTextToText checkpoint, scored as a baseline. PanoLLaVA's flags work too: --checkpoint-dir
(a PanoLLaVA run directory is converted on the fly and the converted directory reported; see `panovlm convert`),
--csv-input, --config (its YAML: the test table when --csv-input is not given, and what the checkpoint does not
record); --output-dir then defaults to results/eval_results/<run name>. A general model is scored the whole panorama resized to one image
(--baseline-image-size) and asked through the model's own processor and chat template, with PanoVLM's default
prompt words unless --system-prompt / --user-template say otherwise. Both are scored by the same code.

Writes OUT/predictions.csv (url,query,prediction,annotation: one row per reference, rows of one (url, query) share
one prediction), OUT/metrics.json (every metric per protocol, units, dropped rows with reasons, the generation
settings and prompt format, the <think> handling, metrics style, tokenizer) and OUT/report.md. Generation is
greedy, once per (image, query), unless the decoding flags say otherwise. With a Qwen3 language model, <think>
reasoning is removed from the answers before scoring (--no-strip-think keeps it); metrics.json says how many held
one. Also run as `python examples/evaluate.py` or `python -m modeling_panovlm.cli.evaluate`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from modeling_panovlm.evaluation import (
    evaluate_caption_table,
    load_model_and_processor,
    strip_thinking,
    write_evaluation_outputs,
)
from modeling_panovlm.evaluation.metrics import (
    PROTOCOLS,
    TOKENIZERS,
    check_scoring_requirements,
    read_predictions,
)
from modeling_panovlm.evaluation.scorers import MetricUnavailableError
from modeling_panovlm.evaluation.thinking import has_thinking
from processing_panovlm.data.captions import load_caption_table

from .console import configure_logging
from .options import (
    HelpFormatter,
    add_baseline_flags,
    add_data_flags,
    add_generation_flags,
    add_log_level_flag,
    add_panollava_flags,
    add_prompt_flags,
    check_generation_flags,
    check_prompt_flags,
    convert_panollava_run,
    data_args_from_flags,
    data_flags_given,
    generation_config_from_flags,
    generation_flags_given,
    int_at_least,
    prompting_from_flags,
    read_panollava_flags,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panovlm evaluate", description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False
    )
    source = parser.add_argument_group("what to score")
    source.add_argument(
        "--model", help="checkpoint directory or Hub id: a PanoVLM, or any image-text-to-text model (a baseline)"
    )
    source.add_argument("--adapter", help="PEFT adapter directory, applied to --model and merged")
    source.add_argument(
        "--csv",
        "--csv-input",
        help="the caption table to generate for: a CSV / TSV / JSON Lines / Parquet / WebDataset file, a glob, a "
        "save_to_disk folder or a Hub dataset id (QuIC-360's url,query,annotation columns by default; see the "
        "table-reading flags)",
    )
    source.add_argument("--predictions", help="score this predictions.csv instead of generating")
    add_panollava_flags(parser, source)
    parser.add_argument(
        "--output-dir",
        help="where predictions.csv, metrics.json and report.md go (required, except with --checkpoint-dir: "
        "results/eval_results/<its name>)",
    )
    run = parser.add_argument_group("generation run")
    run.add_argument("--max-samples", type=int_at_least(1), help="evaluate the first N (image, query) groups (>= 1)")
    run.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=8,
        help="(image, query) groups per generate call (>= 1; default 8)",
    )
    run.add_argument(
        "--log-samples", action="store_true", help="log a prediction and its reference every --log-interval captions"
    )
    run.add_argument(
        "--log-interval", type=int_at_least(1), default=25, help="with --log-samples: every K-th caption (default 25)"
    )
    add_data_flags(parser)
    add_generation_flags(parser)
    add_prompt_flags(parser)
    add_baseline_flags(parser)
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--protocol",
        choices=[*PROTOCOLS, "both"],
        help="grouped: each (image, query) against all its references; per-row: each row against its one "
        "reference (default: both for --metrics-style coco, per-row for panollava)",
    )
    scoring.add_argument(
        "--metrics-style",
        choices=["coco", "panollava"],
        default="coco",
        help="coco: pycocoevalcap's metrics on PTB-tokenized text; panollava: PanoLLaVA's own scoring, to compare "
        "with its numbers (default coco)",
    )
    scoring.add_argument(
        "--tokenizer",
        choices=TOKENIZERS,
        default="java-ptb",
        help="PTB tokenizer of the coco style: java-ptb (Stanford's, as pycocoevalcap; needs Java) or python (a "
        "pure-Python re-creation, within about 1%%; recorded in metrics.json). Default: java-ptb",
    )
    scoring.add_argument(
        "--strip-think",
        action=argparse.BooleanOptionalAction,
        help="remove <think>...</think> reasoning from predictions before scoring (default: on when generating "
        "with a Qwen3 language model, off otherwise and when rescoring --predictions)",
    )
    add_log_level_flag(parser)
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flag combinations that cannot mean anything (exits with status 2, naming them)."""
    if args.output_dir is None:
        if args.checkpoint_dir is None:
            parser.error("the following arguments are required: --output-dir")
        args.output_dir = str(Path("results") / "eval_results" / Path(args.checkpoint_dir).resolve().name)
    if args.predictions:
        if args.model or args.csv or args.adapter or args.config:
            parser.error(
                "--predictions scores an existing file: do not combine it with --model / --checkpoint-dir, --adapter, "
                "--csv or --config"
            )
        given = {
            "--system-prompt": args.system_prompt,
            "--user-template": args.user_template,
            "--baseline-image-size": args.baseline_image_size,
            "--max-samples": args.max_samples,
        }
        generation_only = generation_flags_given(args) + [flag for flag, value in given.items() if value is not None]
        generation_only += data_flags_given(args)
        if generation_only:
            parser.error(f"{', '.join(generation_only)} only apply when generating (--model and --csv)")
    elif not (args.model and args.csv):
        parser.error(
            "give --model and --csv (PanoLLaVA's --checkpoint-dir and --csv-input) to generate and score, or "
            "--predictions to score an existing file"
        )
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output-dir {args.output_dir} is a file, not a directory")
    if args.metrics_style == "panollava" and args.protocol not in (None, "per-row"):
        parser.error("--metrics-style panollava scores each row against its single reference: use --protocol per-row")
    check_generation_flags(parser, args)
    check_prompt_flags(parser, args)


def _rescore(parser: argparse.ArgumentParser, args: argparse.Namespace, protocols: list[str] | None) -> None:
    try:
        rows = read_predictions(args.predictions)
    except FileNotFoundError:
        parser.error(f"predictions file {args.predictions} does not exist")
    except ValueError as error:
        parser.error(str(error))
    with_think = sum(has_thinking(row.prediction) for row in rows)
    if args.strip_think:
        rows = [dataclasses.replace(row, prediction=strip_thinking(row.prediction)) for row in rows]
    think = {"removed": bool(args.strip_think), "with_think": with_think, "out_of": len(rows), "unit": "row"}
    data = {"source": args.predictions}
    write_evaluation_outputs(
        args.output_dir, rows, protocols, args.metrics_style, data=data, tokenizer=args.tokenizer, think=think
    )


def _generate_and_score(parser: argparse.ArgumentParser, args: argparse.Namespace, protocols: list[str] | None) -> None:
    try:
        data_args = data_args_from_flags(args)
        # Opened before the model is loaded, so that a wrong path or header fails in seconds, not after minutes.
        load_caption_table(args.csv, data_args, split=data_args.eval_split)
        model, processor = load_model_and_processor(args.model, args.adapter)
    except (OSError, ValueError) as error:  # a missing file or directory, a bad table header, an unloadable model
        parser.error(str(error))
    one_image = prompting_from_flags(parser, args, model, processor)
    evaluate_caption_table(
        model,
        processor,
        args.csv,
        args.output_dir,
        protocols=protocols,
        metrics_style=args.metrics_style,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        generation_config=generation_config_from_flags(model, args),
        seed=args.seed,
        log_interval=args.log_interval if args.log_samples else None,
        model_name=args.model if args.adapter is None else f"{args.model} + adapter {args.adapter}",
        tokenizer=args.tokenizer,
        data_args=data_args,
        strip_think=args.strip_think,
        one_image=one_image,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (argument errors exit with status 2, as argparse does)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    migration = read_panollava_flags(parser, args)
    if args.csv is None and migration is not None and migration.test_csv is not None and not args.predictions:
        if not isinstance(migration.test_csv, str):
            parser.error(f"--config {args.config} names several test tables {migration.test_csv}: give --csv-input")
        args.csv = migration.test_csv
    if migration is not None and args.max_new_tokens is None and not args.predictions:
        args.max_new_tokens = migration.model_args["generation"]["max_new_tokens"]  # the YAML's generation block
    check_args(parser, args)
    configure_logging(args.log_level, default="info")
    protocols = None if args.protocol is None else list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    try:
        # What scoring needs (the metrics extra, Java for the java-ptb tokenizer) is checked before anything runs.
        check_scoring_requirements(args.metrics_style, args.tokenizer)
    except (ImportError, MetricUnavailableError) as error:
        parser.error(str(error))
    if args.predictions:
        _rescore(parser, args, protocols)
    else:
        convert_panollava_run(parser, args, migration)
        _generate_and_score(parser, args, protocols)
    output_dir = Path(args.output_dir)
    print((output_dir / "report.md").read_text(encoding="utf-8"))
    written = ["metrics.json", "report.md"] + ([] if args.predictions else ["predictions.csv"])
    print("wrote " + ", ".join(str(output_dir / name) for name in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
