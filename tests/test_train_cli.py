"""`panovlm train` as people run it (`python -m modeling_panovlm.cli train`, the installed console script's code):
one stage from flags, the stages of a run file with flags overriding it, stage selection, skipping complete
outputs, --force, --dry-run, the evaluation after the last stage, early stopping, refused values, reproducible
seeds, readable output with the details in train.log, and two CPU processes under `accelerate launch` (gloo)
that split the data and end in sync, with the weights of a single-process run over the same batches."""

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling_panovlm  # noqa: F401  (registers the Auto classes)
from modeling_panovlm.cli.train import main as train_main
from modeling_panovlm.testing.synthetic_panoramas import write_synthetic_dataset
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from modeling_panovlm.training.plots import integer_ticks, plot_run_curves, plot_training_curves
from modeling_panovlm.training.run_file import TrainArgumentParser, resolve_stages
from modeling_panovlm.training.runner import StageOptions, read_stage_summary, resolve_model_source, run_stage


ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "modeling_panovlm.cli"]
# One OpenMP thread per process: two processes share the two cores, and tiny models gain nothing from more.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
NO_LOADING_PROBLEMS = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}


def run(command: list, timeout: int = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


def loads_cleanly(directory: Path):
    model, info = AutoModelForImageTextToText.from_pretrained(directory, output_loading_info=True)
    assert {k: list(v) for k, v in info.items()} == NO_LOADING_PROBLEMS, directory
    AutoProcessor.from_pretrained(directory)
    return model


def summary(directory: Path) -> dict:
    return json.loads((directory / "stage_summary.json").read_text())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny checkpoint, six training rows (two scenes x three rows) and a test table."""
    root = tmp_path_factory.mktemp("train_cli")
    build_tiny_checkpoint(root / "tiny")
    train_csv, _ = write_synthetic_dataset(root / "data", num=3, height=64, test_fraction=0.34, num_objects=1)
    with train_csv.open(newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 6
    return root


def write_run_file(workspace: Path, run_dir: Path) -> Path:
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(
        f"model: {workspace / 'tiny'}\n"
        f"train_csv: {workspace / 'data' / 'train.csv'}\n"
        f"eval_csv: {workspace / 'data' / 'test.csv'}\n"
        f"output_dir: {run_dir}\n"
        "max_steps: 5\nbatch_size: 2\nlogging_steps: 1\nwarmup_steps: 0\nlearning_rate: 1e-3\n"
        "metrics_tokenizer: python\nevaluation_max_new_tokens: 4\n"
        "stages:\n  - stage: vision\n  - stage: resampler\n  - stage: finetune\n    lora_r: 4\n    lora_alpha: 8\n"
    )
    return path


def test_one_stage_from_flags_shows_a_few_lines_and_logs_the_details(workspace):
    out = workspace / "vision"
    result = run(
        [*CLI, "train", "--model", workspace / "tiny", "--stage", "vision", "--train-csv",
         workspace / "data" / "train.csv", "--output-dir", out, "--max-steps", "3", "--batch-size", "2",
         "--logging-steps", "1", "--system-prompt", "", "--user-template", "Q: {query}"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stage_lines = [line for line in result.stdout.splitlines() if line.startswith("stage vision: 3 steps, loss ")]
    assert len(stage_lines) == 1 and stage_lines[0].endswith(f"-> {out}")
    assert "INFO" not in result.stderr and "step 1: loss" not in result.stdout + result.stderr
    log = (out / "train.log").read_text()
    assert "step 1: loss" in log and "stage vision: model.resampler trains" in log and "***** Running training" in log
    assert loads_cleanly(out).config.training_stage == "vision"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and sum("loss" in entry for entry in state["log_history"]) == 3
    assert summary(out)["global_step"] == 3 and summary(out)["options"]["max_steps"] == 3
    with Image.open(out / "training_curves.png") as image:
        assert image.format == "PNG"
    assert json.loads((out / "train_data_report.json").read_text())["kept"] == 6
    # The prompt flags are saved with the processor: an empty system prompt means none.
    processor = AutoProcessor.from_pretrained(out)
    assert processor.system_prompt is None and processor.user_template == "Q: {query}"


def test_run_file_selection_skips_overrides_and_force(workspace):
    run_dir = workspace / "run"
    config = write_run_file(workspace, run_dir)

    # Two stages of the file, with a flag overriding every stage's max_steps.
    first = run([*CLI, "train", "--config", config, "--stages", "vision", "resampler", "--max-steps", "2",
                 "--no-evaluate-after-training"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert [line.split(":")[0] for line in first.stdout.splitlines() if line.startswith("stage ")] == [
        "stage vision", "stage resampler"
    ]
    assert not (run_dir / "finetune").exists()
    assert summary(run_dir / "resampler")["model"] == str(run_dir / "vision")

    # The whole file: the two complete stages are kept, finetune starts from the kept resampler output, and the
    # evaluation after the last stage scores the finetune adapter.
    kept = {stage: (run_dir / stage / "model.safetensors").stat().st_mtime_ns for stage in ("vision", "resampler")}
    second = run([*CLI, "train", "--config", config, "--max-steps", "2"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("skip (complete output from") == 2
    assert {s: (run_dir / s / "model.safetensors").stat().st_mtime_ns for s in kept} == kept
    adapter = json.loads((run_dir / "finetune" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((run_dir / "resampler").resolve()) and adapter["r"] == 4
    assert summary(run_dir / "finetune")["global_step"] == 2
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["generation"]["model"] == str(run_dir / "finetune")
    assert {"predictions.csv", "report.md"} <= {p.name for p in (run_dir / "evaluation").iterdir()}
    assert "# PanoVLM caption evaluation" in second.stdout  # the final table
    assert (run_dir / "training_curves.png").is_file()  # all three stages in one picture

    tiny, vision, resampler = (load_file(d / "model.safetensors") for d in (workspace / "tiny", run_dir / "vision", run_dir / "resampler"))
    head = [k for k in tiny if k.startswith("model.vicreg_projector.")]
    # The resampler stage does not train the VICReg head: it carries the vision stage's trained head, so it
    # started from the vision stage's output.
    assert any(not torch.equal(tiny[k], vision[k]) for k in head)
    assert all(torch.equal(vision[k], resampler[k]) for k in head)
    assert all(torch.equal(tiny[k], resampler[k]) for k in tiny if k.startswith("model.language_model."))
    for stage in ("vision", "resampler", "finetune"):
        loads_cleanly(run_dir / stage)

    # One stage of the file with other settings: its complete output is not silently kept, nor overwritten.
    finetune = ["--config", config, "--stage", "finetune", "--max-steps", "3", "--learning-rate", "1e-5",
                "--no-evaluate-after-training"]
    refused = run([*CLI, "train", *finetune])
    assert refused.returncode == 2
    assert "trained with other options (learning_rate: 0.001 there, 1e-05 now; max_steps: 2 there, 3 now)" in refused.stderr
    assert "--force" in refused.stderr

    dry = run([*CLI, "train", *finetune, "--force", "--dry-run"])
    assert dry.returncode == 0, dry.stderr[-3000:]
    plan = dry.stdout.splitlines()
    assert f"  finetune  {run_dir / 'resampler'} -> {run_dir / 'finetune'}: train 3 steps, learning rate 1e-05" in plan
    assert "      learning_rate = 1e-05" in plan and not any(line.startswith("  vision") for line in plan)
    assert summary(run_dir / "finetune")["global_step"] == 2  # a dry run trains nothing

    forced = run([*CLI, "train", *finetune, "--force"])
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert {s: (run_dir / s / "model.safetensors").stat().st_mtime_ns for s in kept} == kept
    state = json.loads((run_dir / "finetune" / "trainer_state.json").read_text())
    rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    assert state["global_step"] == 3 and max(rates) == pytest.approx(1e-5)

    # The same command with its evaluation on: the stage is kept, and the evaluation, older than the retrained
    # output, is made again.
    evaluated = (run_dir / "evaluation" / "metrics.json").stat().st_mtime_ns
    again = run([*CLI, "train", *finetune[:-1]])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage finetune: kept (3 steps)" in again.stdout
    assert (run_dir / "evaluation" / "metrics.json").stat().st_mtime_ns > evaluated


def test_rerunning_a_finished_command_trains_nothing(workspace):
    out = workspace / "again"
    command = [*CLI, "train", "--model", workspace / "tiny", "--stage", "resampler", "--train-csv",
               workspace / "data" / "train.csv", "--output-dir", out, "--max-steps", "1", "--batch-size", "2"]
    assert run(command).returncode == 0
    before = (out / "model.safetensors").stat().st_mtime_ns
    again = run(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skip (complete output from" in again.stdout and "stage resampler: kept (1 step)" in again.stdout
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    # An evaluation table given afterwards: the output is kept (without early stopping the table does not change
    # the weights) and evaluated.
    evaluated = run([*command, "--eval-csv", workspace / "data" / "test.csv", "--metrics-tokenizer", "python",
                     "--evaluation-max-new-tokens", "4"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "stage resampler: kept (1 step)" in evaluated.stdout and "# PanoVLM caption evaluation" in evaluated.stdout
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    assert json.loads((out / "evaluation" / "metrics.json").read_text())["tokenizer"] == "python"


def test_a_run_shorter_than_logging_steps_succeeds_without_a_plot(workspace):
    out = workspace / "short"
    result = run(
        [*CLI, "train", "--model", workspace / "tiny", "--stage", "resampler", "--train-csv",
         workspace / "data" / "train.csv", "--output-dir", out, "--max-steps", "2", "--batch-size", "2"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean loss" in result.stdout and "fewer steps than --logging-steps" in result.stdout
    assert not (out / "training_curves.png").exists()
    assert "no loss or learning rate was logged" in (out / "train.log").read_text()
    loads_cleanly(out)


def test_out_of_range_values_and_missing_models_are_refused_naming_the_range(workspace, tmp_path, capsys):
    flags = ["--stage", "vision", "--model", str(workspace / "tiny"), "--train-csv", "t.csv", "--output-dir", str(tmp_path / "o")]
    for extra, message in [
        (["--max-steps", "0"], "--max-steps must be -1 (train --num-train-epochs) or at least 1, got 0"),
        (["--max-steps", "-5"], "--max-steps must be -1 (train --num-train-epochs) or at least 1, got -5"),
        (["--vision-trainable-blocks", "-1"], "--vision-trainable-blocks must be between 0 and the tower's block count, got -1"),
        (["--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--early-stopping-patience", "2"], "--early-stopping-patience watches eval_loss: give --eval-csv too"),
        (["--model", str(tmp_path / "no" / "such")], f"model directory '{tmp_path / 'no' / 'such'}' does not exist"),
        (["--trainer-args", '{"learning_rate": 1}'], "--trainer-args cannot set 'learning_rate': it is the option --learning-rate"),
        (["--max-step", "2"], "unrecognized arguments: --max-step 2"),  # no abbreviations: --lora would pick a --lora-*
        (["--streaming"], "a streamed table has no length: set max_steps > 0 (got -1)"),
        (["--num-proc", "0"], "num_proc must be >= 1"),
    ]:
        with pytest.raises(SystemExit) as error:
            train_main([*flags, *extra])
        assert error.value.code == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "o").exists()
    # The tower's block count is known once the model is loaded.
    with pytest.raises(ValueError, match=r"--vision-trainable-blocks must be between 0 and 2 \(the vision tower of .* has 2 blocks\), got 3"):
        run_stage(StageOptions(stage="vision", model=str(workspace / "tiny"), train_csv=str(workspace / "data" / "train.csv"),
                               output_dir=str(tmp_path / "v"), vision_trainable_blocks=3))
    assert resolve_model_source("org/name") == "org/name"  # a Hub id stays a Hub id
    assert resolve_model_source(str(workspace / "tiny")) == str((workspace / "tiny").resolve())
    with pytest.raises(ValueError, match="model directory 'missing/dir/tiny' does not exist"):
        resolve_model_source("missing/dir/tiny")


def test_bad_command_lines_and_run_files_give_clear_errors(workspace, tmp_path, capsys):
    def error_of(*argv) -> str:
        with pytest.raises(SystemExit) as error:
            train_main([str(a) for a in argv])
        assert error.value.code == 2, argv
        return capsys.readouterr().err

    assert "unrecognized arguments: --learning-rte" in error_of("--model", "m", "--learning-rte", "0.1")
    assert "give --config, or all of --train-csv, --output-dir" in error_of("--model", "m", "--stage", "vision")
    assert "argument --stage: invalid choice: 'vison'" in error_of("--stage", "vison")
    assert "argument --max_steps/--max-steps: invalid int value: 'ten'" in error_of("--max-steps", "ten")
    assert "--stages selects stages of a run file" in error_of("--stages", "vision", "--model", "m")
    config = tmp_path / "run.yaml"
    for text, message in [
        ("model: m\ntrain_csv: t.csv\noutput_dir: o\n", "no `stages` list (nor a `stage` key"),
        ("model: m\noutput_dir: o\nstages:\n  - vision\n", "stage 0 must be a mapping with at least a `stage` key"),
        ("model: m\noutput_dir: o\nstages:\n  - max_steps: 2\n", "stage 0 must be a mapping"),
        ("model: m\noutput_dir: o\nstages: []\n", "`stages` must be a non-empty list"),
        ("model: m\ntrain_csv: t.csv\nstages:\n  - stage: vision\n", "no output_dir (the run directory)"),
        ("train_csv: t.csv\noutput_dir: o\nstages:\n  - stage: vision\n", "stage 0 (vision): no value for --model"),
        ("model: m\noutput_dir: o\nstages:\n  - stage: vision\n  - stage: finetune\n", "stage 0 (vision): no value for --train-csv"),
        ("model: m\ntrain_csv: t.csv\noutput_dir: o\nstages:\n  - stage: vison\n", "argument --stage: invalid choice: 'vison'"),
        ("model: m\ntrain_csv: t.csv\noutput_dir: o\nstages:\n  - stage: vision\n    learning_rat: 0.1\n",
         "stage 0 (vision) has unknown keys ['learning_rat']"),
        ("model: m\ntrain_csv: t.csv\noutput_dir: o\nstages:\n  - stage: vision\n  - stage: vision\n",
         "stages 0 and 1 both write o/vision"),
        ("model: m\ntrain_csv: t.csv\noutput_dir: o\nstages: [\n", "is not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping of options with a `stages` list, got list"),
    ]:
        config.write_text(text)
        assert message in error_of("--config", config), text
    config.write_text(f"model: m\ntrain_csv: t.csv\noutput_dir: {tmp_path / 'o'}\nstages:\n  - stage: vision\n")
    assert "has no stage 'finetune' (its stages: vision)" in error_of("--config", config, "--stage", "finetune")
    assert "give --stage (one stage) or --stages" in error_of("--config", config, "--stage", "vision", "--stages", "vision")
    config.write_text(f"model: m\ntrain_csv: t.csv\noutput_dir: {tmp_path / 'o'}\nstages:\n  - stage: vision\n  - stage: resampler\n")
    assert (
        f"stage 1 (resampler) starts from {tmp_path / 'o' / 'vision'}, the output of the vision stage, which is not "
        "complete: run that stage too (--stages vision resampler), or give --model"
    ) in error_of("--config", config, "--stage", "resampler")
    assert "run file nowhere.yaml does not exist" in error_of("--config", "nowhere.yaml")
    assert f"run file {tmp_path} is not a file" in error_of("--config", tmp_path)
    assert not (tmp_path / "o").exists()


def test_run_files_are_typed_by_the_command_line_parser_yaml_and_json(tmp_path):
    config = tmp_path / "stages.yaml"
    base = "model: m\ntrain_csv: t.csv\noutput_dir: o\n"
    # PyYAML reads `1e-4` (no dot) as a string; the parser reads it as the flag --learning-rate 1e-4 would be.
    config.write_text(base + "learning_rate: 1e-4\nsave_total_limit: null\nstages:\n  - stage: finetune\n    lora_modules: q_proj\n")
    (options,) = resolve_stages(config).stages
    assert options.learning_rate == 1e-4 and options.save_total_limit is None and options.lora_modules == ["q_proj"]
    config.write_text(base + "image_column: image\nstages:\n  - stage: finetune\n  - stage: vision\n    streaming: true\n    max_steps: 3\n")
    run = resolve_stages(config)
    assert [(d.image_column, d.streaming) for d in run.data_args] == [("image", False), ("image", True)]
    for text, message in [
        ("max_steps: 1.5", "stage 0 (finetune): argument --max_steps/--max-steps: invalid int value: '1.5'"),
        ("num_proc: 0", "stage 0 (finetune): num_proc must be >= 1"),
        ("augment: sometimes", "argument --augment: Truthy value expected: got sometimes"),
        ("learning_rate: fast", "argument --learning_rate/--learning-rate: invalid float value: 'fast'"),
        ("learning_rate: [1, 2]", "stage 0 (finetune): learning_rate takes one value, got the list [1, 2]"),
        ("max_steps: null", "stage 0 (finetune): max_steps cannot be null"),
    ]:
        config.write_text(base + f"stages:\n  - stage: finetune\n    {text}\n")
        with pytest.raises(ValueError, match=None) as error:
            resolve_stages(config)
        assert message in str(error.value), text
    as_json = tmp_path / "stages.json"
    as_json.write_text(json.dumps({"model": "m", "train_csv": "t.csv", "output_dir": "o", "learning_rate": 0.002,
                                   "stages": [{"stage": "vision", "max_steps": 3}, {"stage": "resampler"}]}))
    vision, resampler = resolve_stages(as_json, {"max_steps": 7}).stages
    assert (vision.max_steps, resampler.max_steps, resampler.learning_rate) == (7, 7, 0.002)
    assert resampler.model == str(Path("o") / "vision")
    # A file without `stages` holds one stage's options; --output-dir then is that stage's directory.
    single = tmp_path / "one.yaml"
    single.write_text("stage: resampler\nmodel: m\ntrain_csv: t.csv\noutput_dir: o/resampler\nmax_steps: 4\n")
    run = resolve_stages(single, {"output_dir": "elsewhere"})
    assert [(o.stage, o.output_dir, o.max_steps) for o in run.stages] == [("resampler", "elsewhere", 4)]


def test_python_callers_get_errors_naming_the_option():
    base = dict(stage="finetune", model="m", train_csv="t.csv", output_dir="o")
    for bad, error, message in [
        ({"max_steps": 1.5}, TypeError, "--max-steps must be int, got float 1.5"),
        ({"augment": "sometimes"}, TypeError, "--augment must be bool, got str 'sometimes'"),
        ({"lora_modules": "q_proj"}, TypeError, "--lora-modules must be list, got str 'q_proj'"),
        ({"learning_rate": True}, TypeError, "--learning-rate must be float or int, got bool True"),
        ({"stage": "vison"}, ValueError, "--stage must be one of ['vision', 'resampler', 'finetune'], got 'vison'"),
        ({"trainer_args": {"per_device_train_batch_size": 3}}, ValueError, "PanoVLM derives it from its own options"),
        ({"trainer_args": {"no_such_field": 3}}, ValueError, "'no_such_field': it is not a TrainingArguments field"),
    ]:
        with pytest.raises(error) as raised:
            StageOptions(**{**base, **bad})
        assert message in str(raised.value), bad
    options = StageOptions(**base, batch_size=3, trainer_args={"optim": "sgd"}, gradient_checkpointing=True)
    assert (options.per_device_train_batch_size, options.optim.value, options.activation_checkpointing) == (3, "sgd", True)


def test_the_example_run_file_describes_three_valid_stages_in_order():
    run = resolve_stages(ROOT / "examples" / "stages.yaml", {"model": "m", "output_dir": "run"})
    assert [(o.stage, o.model, o.output_dir) for o in run.stages] == [
        ("vision", "m", str(Path("run") / "vision")),
        ("resampler", str(Path("run") / "vision"), str(Path("run") / "resampler")),
        ("finetune", str(Path("run") / "resampler"), str(Path("run") / "finetune")),
    ]
    # One stage of it, from a given model, with the file's options for that stage and the flags over them.
    (finetune,) = resolve_stages(ROOT / "examples" / "stages.yaml", {"stage": "finetune", "model": "m", "max_steps": 5}).stages
    assert (finetune.model, finetune.max_steps, finetune.learning_rate, finetune.lora_dropout) == ("m", 5, 3e-3, 0.0)


def test_help_documents_every_flag_with_an_example_and_the_stage_choices():
    parser = TrainArgumentParser(prog="panovlm train")
    undocumented = [a.option_strings for a in parser._actions if a.option_strings and not (a.help or "").strip()]
    assert undocumented == []
    from modeling_panovlm.cli.train import build_parser

    text = build_parser().format_help()
    assert "examples:" in text and "panovlm train --config examples/stages.yaml --stage finetune" in text
    assert "--stage {vision,resampler,finetune}" in text
    contract = ["--stage", "--model", "--train-csv", "--eval-csv", "--output-dir", "--max-steps", "--learning-rate",
                "--batch-size", "--config", "--trainer-args", "--resume-from-checkpoint", "--module-learning-rates",
                "--vision-trainable-blocks", "--lora-r", "--lora-alpha", "--lora-dropout", "--lora-modules",
                "--lora-modules-to-save", "--system-prompt", "--user-template", "--augment", "--no-augment",
                "--gradient-checkpointing", "--bf16", "--deepspeed", "--seed", "--stages", "--force", "--dry-run",
                "--early-stopping-patience", "--log-level", "--quiet", "--vicreg-mode",
                # the data sources' options (processing_panovlm.data.DataArguments)
                "--image-column", "--query-column", "--answer-column", "--streaming", "--train-split", "--num-proc"]
    flags = {option for action in parser._actions for option in action.option_strings}
    assert [flag for flag in contract if flag not in flags] == []


def test_seed_makes_every_stage_bit_reproducible_on_cpu(workspace, tmp_path):
    def train(stage: str, model: Path, name: str, seed: int = 7) -> dict:
        output = run_stage(StageOptions(
            stage=stage, model=str(model), train_csv=str(workspace / "data" / "train.csv"), output_dir=str(tmp_path / name),
            max_steps=2, batch_size=2, logging_steps=1, warmup_steps=0, learning_rate=1e-3, seed=seed, lora_r=4,
            lora_alpha=8, save_steps=100, lora_dropout=0.1,
        ))
        return load_file(output / ("adapter_model.safetensors" if stage == "finetune" else "model.safetensors"))

    previous = workspace / "tiny"
    for stage in ("vision", "resampler", "finetune"):
        first, second = train(stage, previous, f"{stage}-1"), train(stage, previous, f"{stage}-2")
        assert first.keys() == second.keys()
        assert [k for k in first if not torch.equal(first[k], second[k])] == [], stage
        previous = tmp_path / f"{stage}-1"
    other = train("finetune", tmp_path / "resampler-1", "finetune-seed-8", seed=8)
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)  # the seed does matter

    # A run into a complete output that stops halfway leaves it incomplete, not vouched for by the old summary.
    assert read_stage_summary(tmp_path / "vision-2") is not None
    with pytest.raises(ValueError, match="--vision-trainable-blocks must be between 0 and 2"):
        run_stage(StageOptions(stage="vision", model=str(workspace / "tiny"), train_csv=str(workspace / "data" / "train.csv"),
                               output_dir=str(tmp_path / "vision-2"), vision_trainable_blocks=3))
    assert read_stage_summary(tmp_path / "vision-2") is None


def test_early_stopping_on_eval_loss_keeps_the_best_checkpoint(workspace, tmp_path):
    # A threshold no decrease can meet: the second evaluation counts as no improvement, so patience 1 stops there.
    output = run_stage(StageOptions(
        stage="resampler", model=str(workspace / "tiny"), train_csv=str(workspace / "data" / "train.csv"),
        eval_csv=str(workspace / "data" / "test.csv"), output_dir=str(tmp_path / "early"), max_steps=6, batch_size=2,
        eval_steps=1, logging_steps=1, early_stopping_patience=1, early_stopping_threshold=1e9, learning_rate=1e-3,
    ))
    figures = summary(output)
    assert figures["stopped_early"] and figures["global_step"] == 2
    state = json.loads((output / "trainer_state.json").read_text())
    assert figures["best_checkpoint"] == state["best_model_checkpoint"] and Path(state["best_model_checkpoint"]).is_dir()
    assert figures["best_eval_loss"] == state["best_metric"]
    loads_cleanly(output)


def test_training_curves_have_integer_steps_and_skip_empty_histories(tmp_path, caplog):
    assert integer_ticks(3) == [0, 1, 2, 3] and integer_ticks(17) == [0, 5, 10, 15, 20]
    assert integer_ticks(3000) == [0, 500, 1000, 1500, 2000, 2500, 3000] and integer_ticks(0) == [0, 1]
    history = [{"loss": 2.0, "learning_rate": 0.0, "step": 1}, {"eval_loss": 1.7, "step": 2},
               {"loss": 1.5, "learning_rate": 1e-3, "step": 2}, {"train_loss": 1.7, "step": 2}]
    with Image.open(plot_training_curves(history, tmp_path / "one.png", "stage vision")) as image:
        assert image.size == (900, 420)
    with Image.open(plot_run_curves([("vision", history), ("resampler", history)], tmp_path / "run.png")) as image:
        assert image.size == (1100, 420)
    with caplog.at_level(logging.INFO, logger="modeling_panovlm.training.plots"):
        assert plot_training_curves([{"train_loss": 1.0, "step": 1}], tmp_path / "none.png") is None
    assert "no loss or learning rate was logged" in caplog.text and not (tmp_path / "none.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "run.png"]  # no staging file left


def test_accelerate_launch_that_lost_its_processes_is_reported(workspace, tmp_path):
    result = run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "modeling_panovlm.cli", "train", "--stage",
         "vision", "--model", workspace / "tiny", "--train-csv", "t.csv", "--output-dir", tmp_path / "o", "--dry-run"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accelerate launch was asked for several processes but started this one alone" in result.stderr
    assert "add --multi_gpu" in result.stderr


def test_two_cpu_processes_split_the_data_stay_in_sync_and_match_one_process(workspace, tmp_path):
    options = ["--model", workspace / "tiny", "--stage", "resampler", "--train-csv", workspace / "data" / "train.csv",
               "--max-steps", "3", "--logging-steps", "1", "--warmup-steps", "0", "--learning-rate", "0.001"]
    result = run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         "-m", "modeling_panovlm.cli", "train", *options, "--output-dir", tmp_path / "two", "--batch-size", "1"]
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # Only the main process prints and logs: one plan, one stage line, one in-sync record (both ranks ran the
    # check: it gathers from every rank).
    assert result.stdout.count("stage resampler: 3 steps") == 1 and result.stdout.count("plan (") == 1
    assert "several processes but started this one alone" not in result.stderr
    assert (tmp_path / "two" / "train.log").read_text().count("trainable weights identical on all 2 ranks") == 1
    state = json.loads((tmp_path / "two" / "trainer_state.json").read_text())
    # 3 steps x 2 ranks x 1 row = the 6 rows once; a rank training alone would have seen half an epoch.
    assert state["global_step"] == 3 and state["epoch"] == pytest.approx(1.0)
    loads_cleanly(tmp_path / "two")

    # One process with batches of 2 sees the same rows per step (accelerate shards each global batch in order),
    # so data parallelism must reproduce its weights.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run_stage(StageOptions(
            stage="resampler", model=str(workspace / "tiny"), train_csv=str(workspace / "data" / "train.csv"),
            output_dir=str(tmp_path / "one"), max_steps=3, logging_steps=1, warmup_steps=0, learning_rate=1e-3,
            batch_size=2,
        ))
    finally:
        torch.set_num_threads(threads)
    initial, single, parallel = (load_file(d / "model.safetensors") for d in (workspace / "tiny", one, tmp_path / "two"))
    trained = [k for k in initial if k.startswith(("model.resampler.", "model.multi_modal_projector."))]
    assert max((single[k] - initial[k]).abs().max() for k in trained) > 1e-3
    for key in initial:
        torch.testing.assert_close(parallel[key], single[key], atol=1e-6, rtol=1e-5, msg=key)
