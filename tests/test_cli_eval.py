"""The evaluate / infer / convert / export commands through `main(argv)`: --help, every flag explained, values out of
range refused naming the range, missing directories named, the saved prompt format and its overrides, decoding
flags, <think> removal, adapters, and a tiny run of convert and export."""

import csv
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForImageTextToText

from modeling_panovlm.cli import convert as convert_cli
from modeling_panovlm.cli import evaluate as evaluate_cli
from modeling_panovlm.cli import export as export_cli
from modeling_panovlm.cli import infer as infer_cli
from modeling_panovlm.evaluation import generation, load_model_and_processor
from modeling_panovlm.evaluation.loading import check_checkpoint_source
from modeling_panovlm.evaluation.thinking import strip_thinking, thinks_by_default
from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from modeling_panovlm.training.lora import lm_lora_config
from tests.cli_runner import run_cli
from tests.test_legacy_conversion import hparams_for, legacy_state_dict, tiny, write_run  # noqa: F401 (fixture)


ROOT = Path(__file__).resolve().parents[1]
# Scoring without Java (PanoLLaVA's metrics), where what is scored is not the point of the test.
QUICK_SCORING = ["--metrics-style", "panollava"]
COMMANDS = {"evaluate": evaluate_cli, "infer": infer_cli, "convert": convert_cli, "export": export_cli}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny PanoVLM, one with a custom saved prompt format, a LoRA adapter, two panoramas and a table
    (3 (image, query) groups, 4 rows)."""
    root = tmp_path_factory.mktemp("cli")
    build_tiny_checkpoint(root / "tiny")
    model, processor = build_tiny_checkpoint()
    processor.set_prompts("Saved system prompt.", "Saved template about {query}.")
    model.save_pretrained(root / "prompted")
    processor.save_pretrained(root / "prompted")
    base = AutoModelForImageTextToText.from_pretrained(root / "tiny")
    adapted = get_peft_model(base, lm_lora_config(r=4, lora_alpha=8, lora_dropout=0.0, module_names=["q_proj"]))
    torch.manual_seed(1)
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_()
    adapted.save_pretrained(root / "adapter")
    (root / "images").mkdir()
    render_panorama([SceneObject("red", "circle", 0.0)], height=64).save(root / "images" / "a.jpg")
    render_panorama([SceneObject("blue", "square", 90.0)], height=64, seed=1).save(root / "images" / "b.jpg")
    with open(root / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "query", "annotation"])
        writer.writerows(
            [
                ("images/a.jpg", "location", "a red circle in front"),
                ("images/b.jpg", "location", "a blue square on the right"),
                ("images/a.jpg", "people", "nobody"),
                ("images/a.jpg", "location", "a red circle"),
            ]
        )
    return root


def record_prompts(monkeypatch) -> list[str]:
    """Record the prompts PanoVLM generation is given (chat-templated, image tokens expanded)."""
    prompts = []
    original = generation.generate_from_features

    def recording(model, processor, texts, *args, **kwargs):
        prompts.extend(texts)
        return original(model, processor, texts, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_from_features", recording)
    return prompts


# ---- help and flags -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_an_example_and_explains_every_flag(name, capsys):
    status, out, _ = run_cli(COMMANDS[name], ["--help"], capsys)
    assert status == 0 and f"panovlm {name} " in out and "usage:" in out
    unexplained = [action.dest for action in COMMANDS[name].build_parser()._actions if not action.help]
    assert unexplained == []


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_runs_as_a_module(name, monkeypatch, capsys):
    """`python -m modeling_panovlm.cli.<name>` (run in this process: the module's `__main__` guard calls main)."""
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(f"modeling_panovlm.cli.{name}", run_name="__main__")
    assert exit_info.value.code == 0 and f"panovlm {name}" in capsys.readouterr().out


GENERATE = ["--model", "m", "--csv", "t.csv", "--output-dir", "o"]
ASK = ["--model", "m", "--image", "p.jpg", "--prompt", "q"]


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("evaluate", [*GENERATE, "--do-sample", "--top-p", "0"], "--top-p: must be in (0, 1], got 0"),
        ("evaluate", [*GENERATE, "--do-sample", "--top-p", "1.5"], "--top-p: must be in (0, 1], got 1.5"),
        ("evaluate", [*GENERATE, "--do-sample", "--temperature", "-1"], "--temperature: must be in (0, inf)"),
        ("infer", [*ASK, "--do-sample", "--temperature", "nan"], "--temperature: must be in (0, inf)"),
        ("evaluate", [*GENERATE, "--do-sample", "--top-k", "0"], "--top-k: must be >= 1, got 0"),
        ("evaluate", [*GENERATE, "--num-beams", "0"], "--num-beams: must be >= 1, got 0"),
        ("evaluate", [*GENERATE, "--repetition-penalty", "0"], "--repetition-penalty: must be in (0, inf)"),
        ("evaluate", [*GENERATE, "--seed", "-1"], "--seed: must be >= 0, got -1"),
        ("infer", [*ASK, "--max-new-tokens", "0"], "--max-new-tokens: must be >= 1, got 0"),
        ("evaluate", [*GENERATE, "--max-samples", "-5"], "--max-samples: must be >= 1, got -5"),
        ("evaluate", [*GENERATE, "--log-interval", "0"], "--log-interval: must be >= 1"),
        ("evaluate", [*GENERATE, "--batch-size", "two"], "--batch-size: expected an integer >= 1, got 'two'"),
        ("infer", [*ASK, "--baseline-image-size", "0x10"], "--baseline-image-size: width and height must be in"),
        ("infer", [*ASK, "--baseline-image-size", "wide"], "expected S or WxH"),
        ("convert", ["--checkpoint-dir", "r", "--output-dir", "o", "--image-token-id", "-1"], "must be >= 0"),
        ("evaluate", [*GENERATE, "--temperature", "0.7"], "--temperature only applies to sampling: add --do-sample"),
        ("infer", [*ASK, "--top-p", "0.9", "--top-k", "3"], "--top-p, --top-k only apply to sampling"),
        ("evaluate", [*GENERATE, "--user-template", "no field"], "--user-template must hold {query} exactly once"),
        ("infer", [*ASK, "--user-template", "{query} and {query}"], "--user-template must hold {query} exactly once"),
        (
            "evaluate",
            ["--predictions", "p.csv", "--output-dir", "o", "--seed", "1", "--system-prompt", "x"],
            "--seed, --system-prompt only apply when generating",
        ),
        ("infer", ["--model", "m", "--image", "p.jpg"], "give at least one --prompt or a --prompts-file"),
        ("infer", [*ASK, "--prompt", " "], "--prompt number 2 is empty"),
        ("infer", [*ASK, "--stream", "--num-beams", "2"], "cannot be combined with --num-beams above 1"),
        ("infer", [*ASK, "--show-views", "/nonexistent-dir/v.png"], "the directory /nonexistent-dir does not exist"),
    ],
)
def test_bad_flag_values_are_refused_naming_the_valid_range(name, argv, message, capsys):
    status, _, err = run_cli(COMMANDS[name], argv, capsys)
    assert status == 2 and message in err


def test_missing_directories_and_files_are_named(workspace, tmp_path, capsys):
    image, table = workspace / "images" / "a.jpg", workspace / "test.csv"
    for command, argv, message in [
        (infer_cli, ["--model", tmp_path / "nope", "--image", image, "--prompt", "q"], "model directory"),
        (infer_cli, ["--model", "./nope", "--image", image, "--prompt", "q"], "model directory nope does not exist"),
        (evaluate_cli, ["--model", tmp_path / "a" / "b" / "c", "--csv", table, "--output-dir", tmp_path], "does not exist"),
        (evaluate_cli, ["--model", workspace / "tiny", "--adapter", tmp_path / "x", "--csv", table, "--output-dir", tmp_path], "adapter directory"),
        (infer_cli, ["--model", table, "--image", image, "--prompt", "q"], "is a file; give the directory"),
        (infer_cli, ["--model", workspace / "images", "--image", image, "--prompt", "q"], "holds no config.json"),
        (infer_cli, ["--model", workspace / "tiny", "--image", tmp_path / "none.jpg", "--prompt", "q"], "none.jpg"),
        (evaluate_cli, ["--model", workspace / "tiny", "--csv", tmp_path / "none.csv", "--output-dir", tmp_path], "none.csv does not exist"),
        (evaluate_cli, ["--predictions", tmp_path / "p.csv", "--output-dir", tmp_path], "p.csv does not exist"),
        (convert_cli, ["--checkpoint-dir", tmp_path / "run", "--output-dir", tmp_path / "o"], "run does not exist"),
        (export_cli, [tmp_path / "gone"], "gone does not exist"),
        (evaluate_cli, ["--model", workspace / "tiny", "--csv", table, "--output-dir", table], "is a file, not a directory"),
    ]:
        status, _, err = run_cli(command, argv, capsys)
        assert status == 2 and message in err and "Repo id" not in err, (argv, err)
    assert not (tmp_path / "metrics.json").exists()


def test_predictions_files_with_bad_rows_are_refused_naming_the_line(tmp_path, capsys):
    header = "url,query,prediction,annotation\n"
    files = {
        "short.csv": (header + "a.jpg,q,p,r\na.jpg,q,p\n").encode(),
        "long.csv": (header + "a.jpg,q,red, blue,r\n").encode(),
        "latin1.csv": (header + "a.jpg,q,caf\xe9,r\n").encode("latin-1"),
    }
    messages = {
        "short.csv": "line 3: 3 fields where the header has 4 (a value is missing)",
        "long.csv": "line 2: 5 fields where the header has 4 (quote values that hold a comma)",
        "latin1.csv": "is not UTF-8 text",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        status, _, err = run_cli(evaluate_cli, ["--predictions", tmp_path / name, "--output-dir", tmp_path / "o"], capsys)
        assert status == 2 and f"{tmp_path / name}" in err and messages[name] in err, err
    assert not (tmp_path / "o").exists()
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + (header + "a.jpg,q,a red circle,a red circle\n").encode())
    status, _, err = run_cli(evaluate_cli, ["--predictions", tmp_path / "bom.csv", "--output-dir", tmp_path / "o", *QUICK_SCORING], capsys)
    assert status == 0, err


def test_checkpoint_sources_that_can_only_be_paths_are_checked_locally(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory .*nope does not exist"):
        check_checkpoint_source(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no adapter_config.json"):
        check_checkpoint_source(tmp_path, "adapter", ("adapter_config.json",))
    with pytest.raises(FileNotFoundError, match="holds no config.json or adapter_config.json: it is not a saved model"):
        check_checkpoint_source(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    check_checkpoint_source(tmp_path)  # an adapter directory: the Auto classes load it on top of its base
    check_checkpoint_source("org/some-model")  # a Hub id: looked up by transformers, not here


# ---- prompt format --------------------------------------------------------------------------------------------------
def test_evaluate_asks_in_the_saved_prompt_format_and_the_flags_override_it(workspace, tmp_path, monkeypatch, capsys):
    prompts = record_prompts(monkeypatch)
    common = ["--csv", workspace / "test.csv", "--max-new-tokens", 3, "--max-samples", 1, *QUICK_SCORING]
    status, _, err = run_cli(evaluate_cli, ["--model", workspace / "prompted", *common, "--output-dir", tmp_path / "saved"], capsys)
    assert status == 0, err
    assert len(prompts) == 1 and prompts[0].startswith("<|im_start|>system\nSaved system prompt.<|im_end|>")
    assert "Saved template about location.<|im_end|>" in prompts[0]
    saved = json.loads((tmp_path / "saved" / "metrics.json").read_text())["generation"]["prompting"]
    assert saved["system_prompt"] == "Saved system prompt." and saved["user_template"] == "Saved template about {query}."

    prompts.clear()
    overrides = ["--system-prompt", "", "--user-template", "Q: {query}?"]
    status, _, err = run_cli(evaluate_cli, ["--model", workspace / "prompted", *common, *overrides, "--output-dir", tmp_path / "o"], capsys)
    assert status == 0, err
    assert prompts[0].startswith("<|im_start|>user\n") and "\nQ: location?<|im_end|>" in prompts[0]
    recorded = json.loads((tmp_path / "o" / "metrics.json").read_text())["generation"]["prompting"]
    assert recorded["system_prompt"] is None and recorded["user_template"] == "Q: {query}?"


# ---- decoding -------------------------------------------------------------------------------------------------------
def test_decoding_flags_are_applied_recorded_and_seeded(workspace, tmp_path, capsys):
    flags = ["--do-sample", "--temperature", 0.7, "--top-p", 0.9, "--top-k", 5, "--num-beams", 2]
    flags += ["--repetition-penalty", 1.3, "--seed", 3, "--max-new-tokens", 4, "--max-samples", 2, *QUICK_SCORING]
    outputs = []
    for name in ("first", "second"):
        argv = ["--model", workspace / "tiny", "--csv", workspace / "test.csv", "--output-dir", tmp_path / name, *flags]
        status, _, err = run_cli(evaluate_cli, argv, capsys)
        assert status == 0, err
        outputs.append((tmp_path / name / "predictions.csv").read_text())
    settings = json.loads((tmp_path / "first" / "metrics.json").read_text())["generation"]["settings"]
    assert settings["decoding"] == "sampling" and settings["do_sample"] is True and settings["seed"] == 3
    assert (settings["temperature"], settings["top_p"], settings["top_k"]) == (0.7, 0.9, 5)
    assert (settings["num_beams"], settings["repetition_penalty"], settings["max_new_tokens"]) == (2, 1.3, 4)
    assert outputs[0] == outputs[1]  # the same seed gives the same samples


def test_sampling_keeps_the_checkpoints_own_settings_unless_overridden(workspace):
    model, _ = load_model_and_processor(workspace / "tiny")
    model.generation_config.top_k, model.generation_config.temperature = 20, 0.6  # e.g. Qwen3's recommendation
    greedy = generation.greedy_generation_config(model, 5)
    sampled = generation.greedy_generation_config(model, 5, do_sample=True, temperature=0.9)
    assert greedy.top_k is None and greedy.temperature is None and not greedy.do_sample
    assert sampled.top_k == 20 and sampled.temperature == 0.9 and sampled.do_sample


# ---- <think> --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nLet me look.\n</think>\n\nA red circle.", "A red circle."),
        ("<think>a</think>one <think>b</think>two", "one two"),
        ("opened by the prompt</think> the answer", "the answer"),
        ("the answer <think> cut off while thinking", "the answer"),
        ("no reasoning at all", "no reasoning at all"),
    ],
)
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected


def test_think_is_removed_by_default_for_qwen3_and_reported(workspace, tmp_path, monkeypatch, capsys):
    model, _ = load_model_and_processor(workspace / "tiny")
    assert thinks_by_default(model.config)  # the tiny checkpoints have a Qwen3 language model

    def thinking(model, processor, texts, *args, **kwargs):
        return ["<think>which shape?</think> a red circle" if "location" in t else "nobody" for t in texts]

    monkeypatch.setattr(generation, "generate_from_features", thinking)
    common = ["--model", workspace / "tiny", "--csv", workspace / "test.csv", *QUICK_SCORING]
    status, out, err = run_cli(evaluate_cli, [*common, "--output-dir", tmp_path / "default"], capsys)
    assert status == 0, err
    summary = json.loads((tmp_path / "default" / "metrics.json").read_text())
    assert summary["think"] == {"removed": True, "with_think": 2, "out_of": 3, "unit": "caption"}
    with open(tmp_path / "default" / "predictions.csv", newline="") as handle:
        predictions = {row["prediction"] for row in csv.DictReader(handle)}
    assert predictions == {"a red circle", "nobody"}
    assert "<think> reasoning in 2 of 3 captions: removed before scoring" in out

    status, _, err = run_cli(evaluate_cli, [*common, "--output-dir", tmp_path / "kept", "--no-strip-think"], capsys)
    assert status == 0, err
    assert json.loads((tmp_path / "kept" / "metrics.json").read_text())["think"]["removed"] is False
    assert "which shape?" in (tmp_path / "kept" / "predictions.csv").read_text()
    assert "2 captions hold <think> reasoning" in err

    # Rescoring a file: counted always, removed on request.
    kept = tmp_path / "kept" / "predictions.csv"
    for flags, removed in (([], False), (["--strip-think"], True)):
        argv = ["--predictions", kept, "--output-dir", tmp_path / "re", *QUICK_SCORING, *flags]
        status, _, err = run_cli(evaluate_cli, argv, capsys)
        assert status == 0, err
        rescored = json.loads((tmp_path / "re" / "metrics.json").read_text())
        assert rescored["think"] == {"removed": removed, "with_think": 3, "out_of": 4, "unit": "row"}


def test_evaluate_reads_other_column_names_and_streams(workspace, tmp_path, capsys):
    with open(workspace / "test.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    with open(tmp_path / "renamed.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption", "picture", "question"])
        writer.writerows([annotation, str(workspace / url), query] for url, query, annotation in rows)
    columns = ["--image-column", "picture", "--query-column", "question", "--answer-column", "caption"]
    common = ["--model", workspace / "tiny", "--max-new-tokens", 3, *QUICK_SCORING, *columns]
    summaries = {}
    for name, flags in (("prepared", []), ("streamed", ["--streaming"])):
        argv = [*common, "--csv", tmp_path / "renamed.csv", "--output-dir", tmp_path / name, *flags]
        status, _, err = run_cli(evaluate_cli, argv, capsys)
        assert status == 0, err
        summaries[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert summaries["streamed"]["data"]["streaming"] is True and summaries["prepared"]["data"]["streaming"] is False
    for summary in summaries.values():
        assert summary["data"]["rows_scored"] == 4 and summary["generation"]["generations"] == 3
        assert summary["think"] == {"removed": True, "with_think": 0, "out_of": 3, "unit": "caption"}
    assert (tmp_path / "prepared" / "predictions.csv").read_text() == (tmp_path / "streamed" / "predictions.csv").read_text()
    status, _, err = run_cli(evaluate_cli, ["--predictions", tmp_path / "prepared" / "predictions.csv", "--output-dir", tmp_path, "--streaming"], capsys)
    assert status == 2 and "--streaming only apply when generating" in err


# ---- adapters -------------------------------------------------------------------------------------------------------
def test_adapter_is_merged_for_evaluate_and_infer(workspace, tmp_path, capsys):
    base, _ = load_model_and_processor(workspace / "tiny")
    merged, _ = load_model_and_processor(workspace / "tiny", workspace / "adapter")
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base.state_dict()[name], merged.state_dict()[name])
    argv = ["--model", workspace / "tiny", "--adapter", workspace / "adapter", "--max-new-tokens", 3]
    scoring = ["--csv", workspace / "test.csv", "--output-dir", tmp_path, *QUICK_SCORING]
    status, _, err = run_cli(evaluate_cli, [*argv, *scoring], capsys)
    assert status == 0, err
    model_name = json.loads((tmp_path / "metrics.json").read_text())["generation"]["model"]
    assert model_name == f"{workspace / 'tiny'} + adapter {workspace / 'adapter'}"
    status, out, err = run_cli(infer_cli, [*argv, "--image", workspace / "images" / "a.jpg", "--prompt", "red object"], capsys)
    assert status == 0 and out.strip(), err


# ---- convert and export -------------------------------------------------------------------------------------------
def test_convert_runs_through_main(tmp_path, tiny, capsys):  # noqa: F811 (the imported fixture)
    run_dir = write_run(tmp_path / "run", legacy_state_dict(tiny["model"]), hparams_for(tiny), metadata="complete")
    argv = ["--checkpoint-dir", run_dir, "--output-dir", tmp_path / "out", "--image-token-id", tiny["model"].config.image_token_id]
    status, out, err = run_cli(convert_cli, argv, capsys)
    assert status == 0, err
    assert "mapped" in out and f"wrote {tmp_path / 'out'}" in out
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "out").config.model_type == "panovlm"
    status, _, err = run_cli(convert_cli, argv, capsys)  # the output exists now
    assert status == 2 and "exists and is not empty" in err


def test_export_runs_through_main(workspace, tmp_path, capsys):
    build_tiny_checkpoint(tmp_path / "tiny")
    status, out, err = run_cli(export_cli, [tmp_path / "tiny"], capsys)
    assert status == 0, err
    assert "modeling_panovlm.py" in out and "trust_remote_code=True" in out
    assert "auto_map" in json.loads((tmp_path / "tiny" / "config.json").read_text())
    (tmp_path / "other").mkdir()
    status, _, err = run_cli(export_cli, [tmp_path / "other"], capsys)
    assert status == 2 and "neither config.json nor processor_config.json" in err
