"""`examples/train.py` as people run it: one stage from flags, all three stages from a YAML run file, clear errors
for bad flags and run files, and two CPU processes under `accelerate launch` (gloo) that really split the data and
end in sync, with the weights of a single-process run over the same batches."""

import csv
import importlib.util
import json
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
from modeling_panovlm.testing.synthetic_panoramas import write_synthetic_dataset
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from modeling_panovlm.training.runner import StageOptions, run_stage


ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train.py"
# One OpenMP thread per process: two processes share the two cores, and tiny models gain nothing from more.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
NO_LOADING_PROBLEMS = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}


def run(command: list, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, env=ENV)


def loads_cleanly(directory: Path):
    model, info = AutoModelForImageTextToText.from_pretrained(directory, output_loading_info=True)
    assert {k: list(v) for k, v in info.items()} == NO_LOADING_PROBLEMS, directory
    AutoProcessor.from_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny checkpoint and six training rows (two scenes x three rows)."""
    root = tmp_path_factory.mktemp("train_cli")
    build_tiny_checkpoint(root / "tiny")
    train_csv, _ = write_synthetic_dataset(root / "data", num=3, height=64, test_fraction=0.34, num_objects=1)
    with train_csv.open(newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 6
    return root


@pytest.fixture(scope="module")
def train_module():
    """`examples/train.py` imported as a module, to call `main()` in-process."""
    spec = importlib.util.spec_from_file_location("train_example", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_stage_from_flags(workspace):
    out = workspace / "vision"
    result = run(
        [sys.executable, TRAIN, "--model", workspace / "tiny", "--stage", "vision", "--train-csv",
         workspace / "data" / "train.csv", "--output-dir", out, "--max-steps", "3", "--batch-size", "2",
         "--logging-steps", "1"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage vision done" in result.stderr
    assert loads_cleanly(out).config.training_stage == "vision"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and sum("loss" in entry for entry in state["log_history"]) == 3
    with Image.open(out / "training_curves.png") as image:
        assert image.format == "PNG"
    assert json.loads((out / "train_data_report.json").read_text())["kept"] == 6


def test_config_runs_the_three_stages_in_order_each_from_the_previous_output(workspace):
    run_dir = workspace / "run"
    config = workspace / "stages.yaml"
    config.write_text(
        f"model: {workspace / 'tiny'}\n"
        f"train_csv: {workspace / 'data' / 'train.csv'}\n"
        f"output_dir: {run_dir}\n"
        "max_steps: 5\nbatch_size: 2\nlogging_steps: 1\nwarmup_steps: 0\nlearning_rate: 0.001\n"
        "stages:\n  - stage: vision\n  - stage: resampler\n  - stage: finetune\n    lora_r: 4\n    lora_alpha: 8\n"
    )
    result = run([sys.executable, TRAIN, "--config", config, "--max-steps", "2"])  # the flag overrides the file
    assert result.returncode == 0, result.stderr[-3000:]
    done = [line.split("stage ")[1].split(" done")[0] for line in result.stderr.splitlines() if " done: " in line]
    assert done == ["vision", "resampler", "finetune"]
    for stage in ("vision", "resampler", "finetune"):
        assert json.loads((run_dir / stage / "trainer_state.json").read_text())["global_step"] == 2
        loads_cleanly(run_dir / stage)

    tiny, vision, resampler = (load_file(d / "model.safetensors") for d in (workspace / "tiny", run_dir / "vision", run_dir / "resampler"))
    head = [k for k in tiny if k.startswith("model.vicreg_projector.")]
    # The resampler stage does not train the VICReg head: it carries the vision stage's trained head, so it
    # started from the vision stage's output.
    assert any(not torch.equal(tiny[k], vision[k]) for k in head)
    assert all(torch.equal(vision[k], resampler[k]) for k in head)
    assert all(torch.equal(tiny[k], resampler[k]) for k in tiny if k.startswith("model.language_model."))
    adapter = json.loads((run_dir / "finetune" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(run_dir / "resampler") and adapter["r"] == 4
    assert loads_cleanly(run_dir / "vision").config.training_stage == "vision"
    assert loads_cleanly(run_dir / "resampler").config.training_stage == "resampler"


def test_bad_flags_and_run_files_give_clear_errors(workspace, train_module, monkeypatch, tmp_path):
    result = run([sys.executable, TRAIN, "--model", workspace / "tiny", "--learning-rte", "0.1"])
    assert result.returncode == 2 and "unrecognized arguments: --learning-rte" in result.stderr
    config = tmp_path / "typo.yaml"
    config.write_text(f"model: m\ntrain_csv: t.csv\noutput_dir: {tmp_path}\nstages:\n  - stage: vision\n    learning_rat: 0.1\n")
    result = run([sys.executable, TRAIN, "--config", config])
    assert result.returncode != 0 and "stage 0 has unknown keys ['learning_rat']" in result.stderr
    assert not (tmp_path / "vision").exists()

    def main(*argv):
        monkeypatch.setattr(sys, "argv", ["train.py", *map(str, argv)])
        train_module.main()

    with pytest.raises(SystemExit, match="give --config, or all of --train-csv, --output-dir"):
        main("--model", workspace / "tiny", "--stage", "vision")
    with pytest.raises(ValueError, match="stage must be one of \\['vision', 'resampler', 'finetune'\\], got 'vison'"):
        main("--model", "m", "--stage", "vison", "--train-csv", "t.csv", "--output-dir", tmp_path / "o")
    with pytest.raises(SystemExit) as error:
        main("--stage", "vision", "--max-steps", "ten")
    assert error.value.code == 2
    for text, message in [
        ("model: m\ntrain_csv: t.csv\noutput_dir: o\n", "no `stages` list"),
        ("model: m\ntrain_csv: t.csv\noutput_dir: o\nstages:\n  - vision\n", "stage 0 must be a mapping with at least a `stage` key"),
        ("model: m\ntrain_csv: t.csv\noutput_dir: o\nstages:\n  - max_steps: 2\n", "stage 0 must be a mapping"),
        ("model: m\ntrain_csv: t.csv\nstages:\n  - stage: vision\n", r"stage 0 \(vision\) has no value for \['output_dir'\]"),
        ("train_csv: t.csv\noutput_dir: o\nstages:\n  - stage: vision\n", r"has no value for \['model'\]"),
        ("model: m\noutput_dir: o\nstages:\n  - stage: vision\n  - stage: finetune\n", r"has no value for \['train_csv'\]"),
        ("model: m\ntrain_csv: t.csv\noutput_dir: o\nstages:\n  - stage: vison\n", "stage must be one of"),
    ]:
        config.write_text(text)
        with pytest.raises(ValueError, match=message):
            main("--config", config)
    # Abbreviated flags are refused: `--lora` would otherwise silently pick one of the `--lora-*` flags.
    with pytest.raises(SystemExit) as error:
        main("--model", "m", "--stage", "vision", "--train-csv", "t.csv", "--output-dir", tmp_path / "o", "--max-step", "2")
    assert error.value.code == 2


def test_run_file_values_are_type_checked_and_yaml_exponents_read_as_numbers(tmp_path):
    from modeling_panovlm.training.runner import stage_options_from_yaml

    config = tmp_path / "stages.yaml"
    # PyYAML reads `1e-4` (no dot) as a string; it is meant as a number.
    config.write_text("model: m\ntrain_csv: t.csv\noutput_dir: o\nlearning_rate: 1e-4\nstages:\n  - stage: vision\n")
    (options,) = stage_options_from_yaml(config)
    assert options.learning_rate == 1e-4 and isinstance(options.learning_rate, float)
    config.write_text("model: m\ntrain_csv: t.csv\noutput_dir: o\nstages:\n  - stage: vision\n    learning_rate: fast\n")
    with pytest.raises(ValueError, match="stage 0 option 'learning_rate' must be a number, got 'fast'"):
        stage_options_from_yaml(config)
    for text, message in [
        ("max_steps: 1.5", "option 'max_steps' must be int, got float 1.5"),
        ("augment: sometimes", "option 'augment' must be bool, got str 'sometimes'"),
        ("lora_modules: q_proj", "option 'lora_modules' must be list, got str 'q_proj'"),
    ]:
        config.write_text(f"model: m\ntrain_csv: t.csv\noutput_dir: o\nstages:\n  - stage: finetune\n    {text}\n")
        with pytest.raises(TypeError, match=message):
            stage_options_from_yaml(config)


def test_two_cpu_processes_split_the_data_stay_in_sync_and_match_one_process(workspace, tmp_path):
    options = ["--model", workspace / "tiny", "--stage", "resampler", "--train-csv", workspace / "data" / "train.csv",
               "--max-steps", "3", "--logging-steps", "1", "--warmup-steps", "0", "--learning-rate", "0.001"]
    result = run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         TRAIN, *options, "--output-dir", tmp_path / "two", "--batch-size", "1"]
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert log.count("trainable weights identical on all 2 ranks") == 2  # both ranks ran the in-sync check
    assert log.count("stage resampler done") == 2
    state = json.loads((tmp_path / "two" / "trainer_state.json").read_text())
    # 3 steps x 2 ranks x 1 row = the 6 rows once; a rank training alone would have seen half an epoch.
    assert state["global_step"] == 3 and state["epoch"] == pytest.approx(1.0)
    loads_cleanly(tmp_path / "two")

    # One process with batches of 2 sees the same rows per step (accelerate shards each global batch in order),
    # so data parallelism must reproduce its weights.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flags = dict(zip([str(o).removeprefix("--").replace("-", "_") for o in options[::2]], [str(o) for o in options[1::2]]))
        one = run_stage(StageOptions(
            stage=flags["stage"], model=flags["model"], train_csv=flags["train_csv"], output_dir=str(tmp_path / "one"),
            max_steps=3, logging_steps=1, warmup_steps=0, learning_rate=1e-3, batch_size=2,
        ))
    finally:
        torch.set_num_threads(threads)
    initial, single, parallel = (load_file(d / "model.safetensors") for d in (workspace / "tiny", one, tmp_path / "two"))
    trained = [k for k in initial if k.startswith(("model.resampler.", "model.multi_modal_projector."))]
    assert max((single[k] - initial[k]).abs().max() for k in trained) > 1e-3
    for key in initial:
        torch.testing.assert_close(parallel[key], single[key], atol=1e-6, rtol=1e-5, msg=key)


def test_the_example_run_file_describes_three_valid_stages_in_order():
    from modeling_panovlm.training.runner import stage_options_from_yaml

    stages = stage_options_from_yaml(ROOT / "examples" / "stages.yaml", {"model": "m", "output_dir": "run"})
    assert [(o.stage, o.model, o.output_dir) for o in stages] == [
        ("vision", "m", str(Path("run") / "vision")),
        ("resampler", str(Path("run") / "vision"), str(Path("run") / "resampler")),
        ("finetune", str(Path("run") / "resampler"), str(Path("run") / "finetune")),
    ]
