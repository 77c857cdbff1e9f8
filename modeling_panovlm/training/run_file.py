"""`panovlm train`'s options and run files, through `HfArgumentParser`.

The parser is `HfArgumentParser((RunOptions, StageOptions, DataArguments))`: every field is a flag with its help
text, and the same parser types and checks a run file's values, so a file and the command line accept exactly the
same values (a stage's data source options, `processing_panovlm.data.DataArguments`, included).

A run file (YAML, or JSON by its `.json` suffix) holds the options shared by all stages at the top level and a
`stages` list, in order, each entry a mapping with at least `stage` and any options of its own. A file without
`stages` holds the options of one stage. Precedence: defaults < top level < stage entry < command-line flags,
except that `--model` and `--output-dir` replace the top level's: `output_dir` is the run directory (each stage
writes `<output_dir>/<stage>` unless its entry sets `output_dir`) and `model` is where the first stage starts. Each
later stage starts from the output of the stage run before it; `--stage` / `--stages` run only some of the file's
stages, the first of them starting from the complete output of the stage before it in the file.
"""

import argparse
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

import yaml
from transformers import HfArgumentParser, TrainingArguments

from processing_panovlm.data import DataArguments

from .options import DataOptions, StageOptions, flag
from .runner import read_stage_summary
from .stages import STAGES


@dataclass
class RunOptions:
    """What `panovlm train` runs: one stage from flags, or the stages of a run file."""

    _argument_group_name = "run"

    config: str | None = field(
        default=None,
        metadata={
            "help": "YAML or JSON run file: options shared by every stage at the top level, a `stages` list of "
            "stages in order with their own options; flags override both."
        },
    )
    stages: list[str] | None = field(
        default=None,
        metadata={
            "help": "With --config: run only these stages of the file, in the file's order (--stage: one).",
            "choices": list(STAGES),
        },
    )
    force: bool = field(
        default=False,
        metadata={"help": "Train stages again even when their complete output exists (by default they are skipped)."},
    )
    dry_run: bool = field(
        default=False, metadata={"help": "Print the resolved plan and each stage's options, then stop."}
    )
    quiet: bool = field(
        default=False,
        metadata={"help": "Print only errors and one line per stage: no plan, no progress bars (the log file keeps all)."},
    )


# Options that name one caption table or several (`str | list[str] | None`).
_TABLES = ("train_csv", "eval_csv")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's examples as written and shows each flag's default."""


# Where each flag is listed in --help: PanoVLM's own options first, then every TrainingArguments field.
_SECTIONS = (
    (StageOptions, "stage options"),
    (DataOptions, "data options"),
    (TrainingArguments, "transformers.TrainingArguments (every field; PanoVLM's defaults for those above)"),
)


class TrainArgumentParser(HfArgumentParser):
    """`HfArgumentParser((RunOptions, StageOptions, DataArguments))` with the stage's flags grouped by where they
    are declared.

    With `raise_errors=True` a bad value raises `ValueError` (the message argparse would print) instead of exiting:
    that is how run-file values are checked.
    """

    def __init__(self, raise_errors: bool = False, **kwargs):
        self.raise_errors = raise_errors
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("usage", "%(prog)s [--config RUN_FILE] [--stage STAGE] [--model MODEL] [--output-dir DIR] [options]")
        kwargs.setdefault("allow_abbrev", False)  # `--lora` would silently pick one of several `--lora-*` flags
        super().__init__((RunOptions, StageOptions, DataArguments), **kwargs)

    def _add_dataclass_arguments(self, dtype):
        if dtype is DataArguments:
            group = self.add_argument_group("data sources (processing_panovlm.data.DataArguments)")
            hints = get_type_hints(DataArguments)
            for option in fields(DataArguments):
                option.type = hints[option.name]
                self._parse_dataclass_field(group, option)
            return None
        if dtype is not StageOptions:
            return super()._add_dataclass_arguments(dtype)
        hints = get_type_hints(StageOptions)
        options = {option.name: option for option in fields(StageOptions) if option.init}
        listed = set()
        for owner, title in _SECTIONS:
            group = self.add_argument_group(title)
            # PanoVLM's sections in the order their classes declare them (stage, model, data... first).
            names = list(vars(owner)["__annotations__"]) if owner is not TrainingArguments else list(options)
            for name in names:
                if name in options and name not in listed:
                    listed.add(name)
                    # HfArgumentParser takes one type per flag; a table option takes one value or several.
                    options[name].type = list[str] | None if name in _TABLES else hints[name]
                    self._parse_dataclass_field(group, options[name])

    def error(self, message):
        if self.raise_errors:
            raise ValueError(message)
        super().error(message)

    def given(self, argv: list[str]) -> dict:
        """The options `argv` sets, typed, and only those (a run file's values must not be replaced by defaults)."""
        unset = object()
        names = [option.name for dtype in self.dataclass_types for option in fields(dtype) if option.init]
        namespace = self.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(names, unset)))
        return {name: value for name, value in vars(namespace).items() if value is not unset}


STAGE_OPTION_NAMES = frozenset(option.name for option in fields(StageOptions) if option.init)
DATA_OPTION_NAMES = frozenset(option.name for option in fields(DataArguments))
# Options a run file may set to null (`save_total_limit: null`: no limit).
_NULLABLE = frozenset(
    name
    for dtype in (StageOptions, DataArguments)
    for name, hint in get_type_hints(dtype).items()
    if type(None) in getattr(hint, "__args__", ())
)


def split_run_options(values: dict) -> tuple[RunOptions, dict]:
    """`RunOptions` and the stage (and data source) options of a `TrainArgumentParser.given` result."""
    run_names = {option.name for option in fields(RunOptions)}
    run = RunOptions(**{name: value for name, value in values.items() if name in run_names})
    return run, {name: value for name, value in values.items() if name not in run_names}


def stage_and_data(values: dict) -> tuple[StageOptions, DataArguments]:
    """A stage's `StageOptions` and `DataArguments` from one mapping of their options."""
    data = {name: value for name, value in values.items() if name in DATA_OPTION_NAMES}
    return StageOptions(**{k: v for k, v in values.items() if k not in data}), DataArguments(**data)


def read_options_file(path: Path):
    """The parsed content of a YAML file (JSON by its `.json` suffix); `ValueError` naming the file when it does not
    parse. Run files and probe files are read by this one function."""
    text = path.read_text(encoding="utf-8")
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        return json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path} is not valid {kind}: {error}") from None


def read_run_file(path: str | Path) -> tuple[dict, list[dict], bool]:
    """`(top-level options, stage entries, whether the file holds a single stage)`, checked for shape only."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"run file {path} {'is not a file' if path.exists() else 'does not exist'}")
    content = read_options_file(path)
    content = {} if content is None else content
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a mapping of options with a `stages` list, got {type(content).__name__}")
    if "stages" not in content:
        if "stage" in content:  # the options of one stage, as the flags would give them
            return {}, [content], True
        raise ValueError(f"{path}: no `stages` list (nor a `stage` key for a file holding one stage)")
    top = dict(content)
    entries = top.pop("stages")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: `stages` must be a non-empty list of stages, got {entries!r}")
    if "stage" in top:
        raise ValueError(f"{path}: `stage` belongs in each entry of `stages`, not at the top level")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "stage" not in entry:
            raise ValueError(f"{path}: stage {index} must be a mapping with at least a `stage` key, got {entry!r}")
    return top, entries, False


def typed_values(parser: TrainArgumentParser, values: dict, where: str) -> dict:
    """A run file's `{key: value}` typed and checked by the command-line parser; errors name `where` and the key."""
    known = STAGE_OPTION_NAMES | DATA_OPTION_NAMES
    unknown = sorted(set(values) - known)
    if unknown:
        hints = [f"{key} (write {key.replace('-', '_')})" for key in unknown if key.replace("-", "_") in known]
        raise ValueError(f"{where} has unknown keys {unknown}" + (f": {', '.join(hints)}" if hints else ""))
    actions = {action.dest: action for action in parser._actions}
    argv, direct = [], {}
    for key, value in values.items():
        takes_list = actions[key].nargs in ("+", "*")
        if value is None:
            if key not in _NULLABLE:
                raise ValueError(f"{where}: {key} cannot be null")
            direct[key] = None
        elif isinstance(value, list):
            if not takes_list:
                raise ValueError(f"{where}: {key} takes one value, got the list {value!r}")
            if value:
                argv += [f"--{key}", *map(str, value)]
            else:
                direct[key] = []
        elif isinstance(value, dict):
            argv.append(f"--{key}={json.dumps(value)}")
        elif isinstance(value, bool):
            argv.append(f"--{key}={str(value).lower()}")
        else:
            argv += [f"--{key}", str(value)] if takes_list else [f"--{key}={value}"]
    try:
        return {**parser.given(argv), **direct}
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None



@dataclass
class RunStages:
    """The stages a command line asks for, in order, with how each reads its tables, and the run directory (where
    the log, the combined curves and the evaluation after the last stage go: a single stage's own output
    directory)."""

    stages: list[StageOptions]
    data_args: list[DataArguments]
    run_dir: Path
    source: str


def resolve_stages(
    config: str | Path | None = None, overrides: dict | None = None, stages: list[str] | None = None
) -> RunStages:
    """The stages to run: the run file `config`'s (only those named in `stages`, when given), or the one stage
    `overrides` describes, with `overrides` (typed command-line values) applied as the module docstring says."""
    overrides = dict(overrides or {})
    if config is None:
        if stages:
            raise ValueError("--stages selects stages of a run file: give --config too (one stage: --stage)")
        missing = [name for name in ("stage", "model", "train_csv", "output_dir") if name not in overrides]
        if missing:
            raise ValueError(f"give --config, or all of {', '.join(flag(name) for name in missing)}")
        options, data_args = stage_and_data(overrides)
        return RunStages([options], [data_args], Path(options.output_dir), "command line")
    parser = TrainArgumentParser(raise_errors=True)
    top, entries, single = read_run_file(config)
    top = typed_values(parser, top, f"{config}: the top level")
    entries = [typed_values(parser, entry, f"{config}: stage {i} ({entry['stage']})") for i, entry in enumerate(entries)]
    if "stage" in overrides:
        if stages:
            raise ValueError("give --stage (one stage) or --stages (several), not both")
        stages = [overrides.pop("stage")]
    model = overrides.pop("model", None)
    run_dir = overrides.pop("output_dir", top.get("output_dir") or (entries[0].get("output_dir") if single else None))
    if run_dir is None:
        raise ValueError(f"{config}: no output_dir (the run directory): set it at the top level, or give --output-dir")
    names = [entry["stage"] for entry in entries]
    absent = [name for name in stages or [] if name not in names]
    if absent:
        raise ValueError(f"{config} has no stage {absent[0]!r} (its stages: {', '.join(names)})")
    selected = [i for i, name in enumerate(names) if not stages or name in stages]
    outputs = [str(run_dir) if single else entry.get("output_dir", str(Path(run_dir) / entry["stage"])) for entry in entries]
    for i, output in enumerate(outputs):
        if outputs.index(output) != i:
            raise ValueError(f"{config}: stages {outputs.index(output)} and {i} both write {output}; give one an output_dir")
    result, data = [], []
    for position, i in enumerate(selected):
        entry = entries[i]
        if position == 0 and model is not None:
            source = model
        elif "model" in entry:
            source = entry["model"]
        elif position > 0:
            source = outputs[selected[position - 1]]
        elif i == 0:
            source = top.get("model")
        else:  # the output of the stage before it in the file, which this run does not train
            source = outputs[i - 1]
            if read_stage_summary(source) is None:
                previous = entries[i - 1]["stage"]
                raise ValueError(
                    f"{config}: stage {i} ({entry['stage']}) starts from {source}, the output of the {previous} stage, "
                    f"which is not complete: run that stage too (--stages {previous} {entry['stage']}), or give --model"
                )
        values = {**top, **entry, **overrides, "model": source, "output_dir": outputs[i]}
        try:
            options, data_args = stage_and_data(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{config}: stage {i} ({entry['stage']}): {error}") from None
        result.append(options)
        data.append(data_args)
    return RunStages(result, data, Path(run_dir), str(config))


__all__ = [
    "RunOptions",
    "RunStages",
    "TrainArgumentParser",
    "read_run_file",
    "resolve_stages",
    "split_run_options",
    "stage_and_data",
    "typed_values",
]
