"""Evaluate a PanoVLM checkpoint on a QuIC-360-style table, or score an existing predictions file.

    python examples/evaluate.py --model DIR_OR_HUB_ID [--adapter DIR] --csv CSV --output-dir OUT
        [--max-samples N] [--batch-size B] [--max-new-tokens T] [--protocol grouped|per-row|both]
        [--metrics-style coco|panollava] [--tokenizer java-ptb|python] [--log-samples] [--log-interval K]
    python examples/evaluate.py --predictions predictions.csv --output-dir OUT [--protocol ...] [--metrics-style ...]
        [--tokenizer ...]

Writes OUT/predictions.csv (url,query,prediction,annotation: one row per reference, rows of one (url, query) share
one prediction), OUT/metrics.json (every metric per protocol, units, dropped rows with reasons, generation
settings, metrics style, tokenizer) and OUT/report.md. Generation is greedy, once per (image, query).
"""

import argparse
import logging
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from modeling_panovlm.evaluation import (
    DEFAULT_MAX_NEW_TOKENS,
    evaluate_caption_table,
    greedy_generation_config,
    load_model_and_processor,
    write_evaluation_outputs,
)
from modeling_panovlm.evaluation.metrics import PROTOCOLS, TOKENIZERS, read_predictions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory or Hub id")
    parser.add_argument("--adapter", help="PEFT adapter directory, merged into --model")
    parser.add_argument("--csv", help="QuIC-360-style table (url,query,annotation or url,instruction,response)")
    parser.add_argument("--predictions", help="score this predictions.csv instead of generating")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-samples", type=int, help="evaluate the first N (image, query) groups")
    parser.add_argument("--batch-size", type=int, default=8, help="groups per generate call (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--protocol", choices=[*PROTOCOLS, "both"], help="default: both (coco), per-row (panollava)")
    parser.add_argument("--metrics-style", choices=["coco", "panollava"], default="coco")
    parser.add_argument(
        "--tokenizer",
        choices=TOKENIZERS,
        default="java-ptb",
        help="PTB tokenizer of the coco style: java-ptb (Stanford's, as pycocoevalcap; needs Java) or python (a "
        "pure-Python re-creation, within about 1%%; recorded in metrics.json). Default: java-ptb",
    )
    parser.add_argument("--log-samples", action="store_true", help="log a prediction and its reference now and then")
    parser.add_argument("--log-interval", type=int, default=25, help="with --log-samples: every K-th caption")
    args = parser.parse_args(argv)
    if args.predictions and (args.model or args.csv or args.adapter):
        parser.error("--predictions scores an existing file: do not combine it with --model, --adapter or --csv")
    if not args.predictions and not (args.model and args.csv):
        parser.error("give --model and --csv to generate and score, or --predictions to score an existing file")
    if args.metrics_style == "panollava" and args.protocol not in (None, "per-row"):
        parser.error("--metrics-style panollava scores each row against its single reference: use --protocol per-row")
    for name in ("max_samples", "batch_size", "max_new_tokens", "log_interval"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    protocols = None if args.protocol is None else list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    output_dir = Path(args.output_dir)
    if args.predictions:
        rows = read_predictions(args.predictions)
        write_evaluation_outputs(
            output_dir, rows, protocols, args.metrics_style, data={"source": args.predictions}, tokenizer=args.tokenizer
        )
    else:
        model, processor = load_model_and_processor(args.model, args.adapter)
        with logging_redirect_tqdm():
            evaluate_caption_table(
                model,
                processor,
                args.csv,
                output_dir,
                protocols=protocols,
                metrics_style=args.metrics_style,
                max_samples=args.max_samples,
                batch_size=args.batch_size,
                generation_config=greedy_generation_config(model, args.max_new_tokens),
                log_interval=args.log_interval if args.log_samples else None,
                model_name=args.model if args.adapter is None else f"{args.model} + adapter {args.adapter}",
                tokenizer=args.tokenizer,
            )
    print((output_dir / "report.md").read_text(encoding="utf-8"))
    written = ["metrics.json", "report.md"] + ([] if args.predictions else ["predictions.csv"])
    print("wrote " + ", ".join(str(output_dir / name) for name in written))


if __name__ == "__main__":
    sys.exit(main())
