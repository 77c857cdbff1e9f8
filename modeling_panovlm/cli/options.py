"""Flags shared by the generating commands (`evaluate`, `infer`): prompt format, decoding, baselines, logging.

Range-checked argument types refuse out-of-range values at parse time, naming the valid range.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Callable
from pathlib import Path

from transformers import GenerationConfig, PreTrainedModel

from modeling_panovlm.evaluation import DEFAULT_MAX_NEW_TOKENS, greedy_generation_config, override_prompts
from modeling_panovlm.evaluation.baseline import (
    DEFAULT_BASELINE_IMAGE_SIZE,
    OneImagePrompting,
    check_one_image_model,
)
from modeling_panovlm.evaluation.loading import is_panovlm
from processing_panovlm.data import DataArguments
from processing_panovlm.processing_panovlm import DEFAULT_SYSTEM_PROMPT, DEFAULT_USER_TEMPLATE, QUERY_FIELD

from .console import LEVELS


SAMPLING_FLAGS = ("temperature", "top_p", "top_k")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's example command lines as written."""


# ---- range-checked argument types ---------------------------------------------------------------------------------
def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_in(low: float, high: float | None = None, *, low_open: bool = True) -> Callable[[str], float]:
    """A float in `(low, high]` (`[low, high]` when `low_open=False`; no upper bound when `high` is None)."""
    shown = ("(" if low_open else "[") + f"{low:g}, " + ("inf)" if high is None else f"{high:g}]")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {shown}, got {text!r}") from None
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be in {shown}, got {text}")
        return value

    parse.__name__ = f"number in {shown}"
    return parse


def image_size(text: str) -> tuple[int, int]:
    """`S` (an S x S square) or `WxH`, in pixels, each from 1 to 8192."""
    parts = text.lower().split("x")
    try:
        width, height = (int(parts[0]),) * 2 if len(parts) == 1 else tuple(map(int, parts))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or WxH in pixels (e.g. 448 or 896x448), got {text!r}") from None
    if not (1 <= width <= 8192 and 1 <= height <= 8192):
        raise argparse.ArgumentTypeError(f"width and height must be in [1, 8192], got {text!r}")
    return width, height


# ---- PanoLLaVA run directories --------------------------------------------------------------------------------------
def add_panollava_flags(parser: argparse.ArgumentParser, group) -> None:
    """PanoLLaVA's `--checkpoint-dir` (an alias of `--model` that may name a PanoLLaVA run directory) and `--config`
    (the run's training YAML)."""
    group.add_argument(
        "--checkpoint-dir",
        help="PanoLLaVA's flag, an alias of --model: a PanoVLM checkpoint directory, or a PanoLLaVA run directory "
        "(Lightning .ckpt files, checkpoint_metadata.json, lora_weights/), converted on the fly into a cache "
        "directory ($PANOVLM_CONVERTED_CACHE, else $HF_HOME/panovlm/converted) that is reported and reused",
    )
    group.add_argument(
        "--config",
        help="PanoLLaVA's flag: the run's training YAML (configs/*.yaml). When --model is a PanoLLaVA run, it names "
        "the towers if the run records none, and gives the PE, crop and prompt settings the checkpoint does not record",
    )
    group.add_argument(
        "--vision-config",
        help="with a PanoLLaVA run: its vision tower (a model directory, a config.json or a Hub id; default: the name "
        "the run recorded, else --config's)",
    )
    group.add_argument(
        "--text-config",
        help="with a PanoLLaVA run: its language model, whose tokenizer the converted processor uses (a model "
        "directory or a Hub id; default: the name the run recorded, else --config's)",
    )


def read_panollava_flags(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Merge `--checkpoint-dir` into `--model` and translate `--config` (fast: nothing is loaded). Returns the
    config's `ConfigMigration`, or None. Errors exit with status 2, naming the problem."""
    from modeling_panovlm.conversion.config_migration import migrate_config
    from modeling_panovlm.conversion.legacy_run import LegacyConversionError

    if args.checkpoint_dir is not None:
        if args.model is not None:
            parser.error("give --model or --checkpoint-dir (its PanoLLaVA name), not both")
        args.model = args.checkpoint_dir
    if args.config is None:
        return None
    try:
        return migrate_config(args.config)
    except LegacyConversionError as error:
        parser.error(f"--config {args.config}: {error}")


def convert_panollava_run(parser: argparse.ArgumentParser, args: argparse.Namespace, migration) -> None:
    """When `--model` is a PanoLLaVA run directory, convert it (or reuse its conversion) and point `args.model` at the
    converted directory, and `args.adapter` at its LoRA adapter unless one was given; says which on stdout."""
    from modeling_panovlm.conversion.run_cache import convert_run_dir, is_legacy_run_dir

    legacy = args.model is not None and Path(args.model).is_dir() and not (Path(args.model) / "config.json").is_file()
    if not legacy:
        given = [flag for flag in ("--vision-config", "--text-config") if getattr(args, flag[2:].replace("-", "_"))]
        if given:
            parser.error(f"{', '.join(given)} describe(s) a PanoLLaVA run's towers; {args.model} is not a PanoLLaVA run")
        return
    if not is_legacy_run_dir(args.model):
        stages = sorted({str(path.parent) for pattern in ("*/*.ckpt", "*/*/*.ckpt") for path in Path(args.model).glob(pattern)})
        if stages:
            parser.error(f"{args.model} holds PanoLLaVA stage runs, not one: give one of {', '.join(stages)}")
        return
    try:
        converted = convert_run_dir(args.model, migration, args.vision_config, args.text_config)
    except (OSError, ValueError) as error:  # LegacyConversionError is a ValueError
        parser.error(f"{args.model} is a PanoLLaVA run directory that does not convert: {error}")
    how = "reused its conversion" if converted.reused else "converted it"
    print(f"{args.model} is a PanoLLaVA run: {how} into {converted.directory}", flush=True)
    args.model = str(converted.directory)
    if converted.adapter is not None and args.adapter is None:
        args.adapter = str(converted.adapter)
        print(f"applying its LoRA adapter {converted.adapter}", flush=True)


# ---- logging ------------------------------------------------------------------------------------------------------
def add_log_level_flag(parser: argparse.ArgumentParser, default: str = "info") -> None:
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        help="log lines shown on stderr, for PanoVLM and transformers alike (default: the TRANSFORMERS_VERBOSITY "
        f"environment variable if set, else {default} for PanoVLM and warning for transformers)",
    )


# ---- prompt format --------------------------------------------------------------------------------------------------
def add_prompt_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prompt format (default: the one saved with the model's processor)")
    group.add_argument(
        "--system-prompt",
        help='system turn; "" for none. Default: the training run\'s, saved with the processor (for a general VLM: '
        "PanoVLM's default)",
    )
    group.add_argument(
        "--user-template",
        help=f"user text around a question, holding {QUERY_FIELD} once. Default: the training run's, saved with the "
        "processor (for a general VLM: PanoVLM's default)",
    )


def check_prompt_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.user_template is not None and args.user_template.count(QUERY_FIELD) != 1:
        parser.error(f"--user-template must hold {QUERY_FIELD} exactly once, got {args.user_template!r}")


# ---- decoding -------------------------------------------------------------------------------------------------------
def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding (greedy unless --do-sample or --num-beams is given)")
    group.add_argument(
        "--max-new-tokens",
        type=int_at_least(1),
        help=f"most tokens generated per answer (>= 1; default {DEFAULT_MAX_NEW_TOKENS})",
    )
    group.add_argument(
        "--do-sample",
        action="store_true",
        help="sample instead of decoding greedily; sampling settings not given are the checkpoint's own "
        "(generation_config.json). Give --seed for repeatable output",
    )
    group.add_argument("--temperature", type=float_in(0.0), help="sampling temperature (> 0; needs --do-sample)")
    group.add_argument(
        "--top-p",
        type=float_in(0.0, 1.0),
        help="nucleus sampling: keep the most likely tokens whose probabilities sum to P (0 < P <= 1; needs "
        "--do-sample)",
    )
    group.add_argument(
        "--top-k", type=int_at_least(1), help="sample among the K most likely tokens (K >= 1; needs --do-sample)"
    )
    group.add_argument(
        "--num-beams", type=int_at_least(1), help="beam search with N beams (N >= 1; default 1: no beam search)"
    )
    group.add_argument(
        "--repetition-penalty",
        type=float_in(0.0),
        help="divide the scores of tokens already present by this (> 0; 1 = none, above 1 discourages repeats)",
    )
    group.add_argument(
        "--seed", type=int_at_least(0), help="seed torch before generating (>= 0; recorded; makes sampling repeatable)"
    )


def generation_flags_given(args: argparse.Namespace) -> list[str]:
    """The decoding flags set on the command line."""
    names = ("max_new_tokens", *SAMPLING_FLAGS, "num_beams", "repetition_penalty", "seed")
    given = [name for name in names if getattr(args, name) is not None] + (["do_sample"] if args.do_sample else [])
    return ["--" + name.replace("_", "-") for name in given]


def check_generation_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.do_sample:
        given = [f"--{name.replace('_', '-')}" for name in SAMPLING_FLAGS if getattr(args, name) is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            parser.error(f"{', '.join(given)} only {verb} to sampling: add --do-sample (decoding is greedy otherwise)")


def generation_config_from_flags(model: PreTrainedModel, args: argparse.Namespace) -> GenerationConfig:
    """`greedy_generation_config` with the decoding flags applied."""
    overrides = {"do_sample": args.do_sample}
    for name in (*SAMPLING_FLAGS, "num_beams", "repetition_penalty"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return greedy_generation_config(model, args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, **overrides)


# ---- general VLMs ---------------------------------------------------------------------------------------------------
def add_baseline_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("general VLMs (baselines)")
    group.add_argument(
        "--baseline-image-size",
        type=image_size,
        metavar="S|WxH",
        help="for a --model that is not a PanoVLM (a general VLM scored as a baseline): the size the whole panorama "
        "is resized to before the model's own processor sees it (default 448: a 448x448 square, which no processor "
        "center-crops)",
    )


# ---- reading a table ------------------------------------------------------------------------------------------------
def add_data_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ("train_split",)) -> None:
    """The `DataArguments` fields as flags (`--image-column`, `--streaming`, ...), with their own help text."""
    group = parser.add_argument_group("reading the table (processing_panovlm.data.DataArguments)")
    hints = typing.get_type_hints(DataArguments)
    for option in dataclasses.fields(DataArguments):
        if option.name in exclude:
            continue
        kwargs: dict = {"dest": option.name, "default": option.default, "help": option.metadata["help"]}
        if hints[option.name] is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = int_at_least(1) if option.name == "num_proc" else str
            kwargs["choices"] = option.metadata.get("choices")
        group.add_argument("--" + option.name.replace("_", "-"), **kwargs)


def data_flags_given(args: argparse.Namespace) -> list[str]:
    """The `DataArguments` flags set to something other than their default."""
    return [
        "--" + option.name.replace("_", "-")
        for option in dataclasses.fields(DataArguments)
        if hasattr(args, option.name) and getattr(args, option.name) != option.default
    ]


def data_args_from_flags(args: argparse.Namespace) -> DataArguments:
    return DataArguments(
        **{
            option.name: getattr(args, option.name)
            for option in dataclasses.fields(DataArguments)
            if hasattr(args, option.name)
        }
    )


def prompting_from_flags(
    parser: argparse.ArgumentParser, args: argparse.Namespace, model: PreTrainedModel, processor
) -> OneImagePrompting | None:
    """Apply the prompt flags to the loaded model's way of being asked: a PanoVLM's processor gets the
    `--system-prompt` / `--user-template` overrides (None is returned); a general VLM gets the `OneImagePrompting`
    they describe, with `--baseline-image-size`. Refuses what does not fit the model (exit status 2)."""
    if is_panovlm(model):
        if args.baseline_image_size is not None:
            parser.error(f"--baseline-image-size is for general VLMs; {args.model} is a PanoVLM, asked with its views")
        override_prompts(processor, args.system_prompt, args.user_template)
        return None
    try:
        check_one_image_model(model, processor)
    except ValueError as error:
        parser.error(f"{args.model}: {error}")
    return OneImagePrompting(
        DEFAULT_SYSTEM_PROMPT if args.system_prompt is None else (args.system_prompt or None),
        args.user_template or DEFAULT_USER_TEMPLATE,
        args.baseline_image_size or DEFAULT_BASELINE_IMAGE_SIZE,
    )


__all__ = [
    "HelpFormatter",
    "add_baseline_flags",
    "add_data_flags",
    "add_generation_flags",
    "add_log_level_flag",
    "add_panollava_flags",
    "add_prompt_flags",
    "check_generation_flags",
    "check_prompt_flags",
    "convert_panollava_run",
    "data_args_from_flags",
    "data_flags_given",
    "float_in",
    "generation_config_from_flags",
    "generation_flags_given",
    "image_size",
    "int_at_least",
    "prompting_from_flags",
    "read_panollava_flags",
]
