"""Evaluation: one generation per (image, query) with features reused, equal to plain generate; reported drops;
predictions.csv / metrics.json / report.md; the command line."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_panovlm.cli import evaluate as evaluate_cli
from modeling_panovlm.evaluation import (
    evaluate_caption_table,
    generate_captions,
    generation_settings,
    greedy_generation_config,
    group_rows,
)
from modeling_panovlm.testing.synthetic_panoramas import (
    SceneObject,
    describe_scene,
    render_panorama,
)
from processing_panovlm.data.captions import load_caption_table


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCENES = {
    "a": [SceneObject("red", "circle", 0.0), SceneObject("blue", "triangle", 180.0)],
    "b": [SceneObject("green", "square", 90.0)],
}


@pytest.fixture
def no_java(monkeypatch):
    """Without METEOR, as on a machine without Java (and faster); the pure-Python tokenizer must then be asked for."""
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, *args, **kwargs: None if name == "java" else real_which(name, *args, **kwargs)
    )


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    """A QuIC-360-style table: 2 panoramas, 3 (image, query) groups with 1-3 references, one missing image and
    one truncated image."""
    root = tmp_path_factory.mktemp("table")
    (root / "images").mkdir()
    for name, scene in SCENES.items():
        render_panorama(scene, height=64, seed=len(name)).save(root / "images" / f"{name}.jpg")
    (root / "images" / "cut.jpg").write_bytes((root / "images" / "a.jpg").read_bytes()[:200])
    rows = [
        ("a", "location", describe_scene(SCENES["a"])),
        ("b", "location", "A green square on the right."),
        ("a", "people", "nobody"),
        ("missing", "location", "lost"),
        ("a", "location", "A red circle, and a blue triangle behind."),
        ("cut", "trees", "none"),
        ("a", "location", "nan"),
    ]
    with open(root / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "query", "annotation"])
        writer.writerows((f"images/{name}.jpg", query, text) for name, query, text in rows)
    return root


def test_groups_follow_panoramas_and_keep_every_reference(table_dir):
    groups = group_rows(load_caption_table(table_dir / "test.csv"))
    assert [(Path(g.image).name, g.query, g.rows) for g in groups] == [
        ("a.jpg", "location", [0, 4, 6]),
        ("a.jpg", "people", [2]),
        ("b.jpg", "location", [1]),
        ("missing.jpg", "location", [3]),
        ("cut.jpg", "trees", [5]),
    ]
    assert groups[0].references[2] == "nan"


@pytest.mark.parametrize("batch_size", [3, 2])
def test_dedup_generation_equals_plain_generate(tiny_mlp, table_dir, batch_size):
    model, processor = tiny_mlp
    groups = group_rows(load_caption_table(table_dir / "test.csv"))[:3]  # a/location, a/people, b/location
    config = greedy_generation_config(model, max_new_tokens=8)
    encoded = []
    original = model.get_image_features

    def counting(pixel_values, **kwargs):
        encoded.append(pixel_values.shape[0])
        return original(pixel_values, **kwargs)

    model.get_image_features = counting
    try:
        captions, failures, stats = generate_captions(model, processor, groups, batch_size, config, show_progress=False)
    finally:
        del model.get_image_features
    assert failures == {} and stats["generations"] == 3
    assert sum(encoded) == stats["images_encoded"] == 2  # panorama "a" once, although it has two queries

    # The reference: each group on its own (no padding, no shared features), through the processor and generate.
    expected = []
    for group in groups:
        prompt = processor.apply_chat_template(processor.build_messages(group.query), add_generation_prompt=True)
        inputs = processor(images=group.image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, generation_config=config)
        expected += processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert captions == [text.strip() for text in expected]
    assert len(set(captions)) > 1  # the groups get different answers: a caption put on the wrong group is seen


def test_missing_and_unreadable_images_are_reported_not_skipped(tiny_mlp, table_dir, tmp_path, no_java):
    model, processor = tiny_mlp
    config = greedy_generation_config(model, max_new_tokens=4)
    summary = evaluate_caption_table(
        model, processor, table_dir / "test.csv", tmp_path, generation_config=config, show_progress=False,
        tokenizer="python",
    )
    data = summary["data"]
    assert data["rows_read"] == 7 and data["rows_scored"] == 5 and data["rows_dropped"] == 2
    assert data["dropped_by_reason"] == {"image file not found": 1, "truncated or corrupt image": 1}
    assert {(r["row"], r["url"]) for r in data["dropped_rows"]} == {(4, "images/missing.jpg"), (6, "images/cut.jpg")}
    assert summary["protocols"]["grouped"]["units"] == 3 and summary["protocols"]["per-row"]["units"] == 5
    assert summary["tokenizer"] == "python" and summary["metrics_style"] == "coco"
    assert summary["protocols"]["grouped"]["scores"]["METEOR"] is None  # no Java: unavailable, with the reason
    assert "java" in summary["protocols"]["grouped"]["unavailable"]["METEOR"]
    assert summary["generation"]["generations"] == 3 and summary["generation"]["settings"]["decoding"] == "greedy"
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary

    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["url"], r["query"], r["annotation"]) for r in rows] == [
        ("images/a.jpg", "location", describe_scene(SCENES["a"])),
        ("images/b.jpg", "location", "A green square on the right."),
        ("images/a.jpg", "people", "nobody"),
        ("images/a.jpg", "location", "A red circle, and a blue triangle behind."),
        ("images/a.jpg", "location", "nan"),
    ]
    assert rows[0]["prediction"] == rows[3]["prediction"] == rows[4]["prediction"]  # one generation per group
    report = (tmp_path / "report.md").read_text()
    assert "grouped (3 units)" in report and "image file not found: 1" in report and "METEOR not computed" in report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "predictions.csv", "report.md"]


def test_generation_settings_are_greedy_unless_sampling_is_asked(tiny_mlp):
    model, _ = tiny_mlp
    model.generation_config.do_sample, model.generation_config.temperature = True, 0.6  # e.g. Qwen3's defaults
    try:
        greedy = generation_settings(greedy_generation_config(model, max_new_tokens=7))
        sampled = generation_settings(
            greedy_generation_config(model, 7, do_sample=True, temperature=0.7, top_p=0.9), seed=3
        )
    finally:
        model.generation_config.do_sample, model.generation_config.temperature = False, 1.0
    assert greedy["decoding"] == "greedy" and greedy["do_sample"] is False and greedy["temperature"] is None
    assert greedy["max_new_tokens"] == 7 and greedy["num_beams"] == 1
    assert sampled["decoding"] == "sampling" and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9
    assert sampled["seed"] == 3


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "evaluate.py"), *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_evaluate_cli_generates_then_rescores_predictions(table_dir, tmp_path):
    from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint

    build_tiny_checkpoint(tmp_path / "tiny")
    out = tmp_path / "out"
    result = run_cli(
        "--model",
        tmp_path / "tiny",
        "--csv",
        table_dir / "test.csv",
        "--output-dir",
        out,
        "--max-new-tokens",
        4,
        "--batch-size",
        2,
        "--max-samples",
        2,
        "--log-samples",
        "--log-interval",
        1,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["data"]["rows_scored"] == 4 and summary["data"]["rows_skipped_by_max_samples"] == 1
    assert summary["generation"]["generations"] == 2 and summary["generation"]["settings"]["max_new_tokens"] == 4
    assert set(summary["protocols"]) == {"grouped", "per-row"} and summary["tokenizer"] == "java-ptb"
    assert "prediction:" in result.stderr and "generating" in result.stderr  # sample log and progress bar
    assert "| BLEU-4 |" in result.stdout

    rescored = tmp_path / "rescored"
    result = run_cli("--predictions", out / "predictions.csv", "--output-dir", rescored, "--metrics-style", "panollava")
    assert result.returncode == 0, result.stderr[-3000:]
    panollava = json.loads((rescored / "metrics.json").read_text())
    assert panollava["metrics_style"] == "panollava" and list(panollava["protocols"]) == ["per-row"]
    assert panollava["protocols"]["per-row"]["units"] == 4 and panollava["generation"] is None

    result = run_cli("--predictions", out / "predictions.csv", "--output-dir", rescored, "--tokenizer", "python")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((rescored / "metrics.json").read_text())["tokenizer"] == "python"
    assert "tokenizer: python" in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--predictions", "p.csv", "--output-dir", "o", "--metrics-style", "panollava", "--protocol", "grouped"],
            "use --protocol per-row",
        ),
        (["--csv", "t.csv", "--output-dir", "o"], "give --model and --csv"),
        (["--predictions", "p.csv", "--model", "m", "--output-dir", "o"], "do not combine it with --model"),
        (["--model", "m", "--csv", "t.csv", "--output-dir", "o", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["--predictions", "p.csv", "--output-dir", "o", "--tokenizer", "auto"], "invalid choice: 'auto'"),
    ],
)
def test_evaluate_cli_rejects_inconsistent_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
