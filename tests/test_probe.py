"""The panorama probe: its tasks are right by construction, its probe files are checked, and `panovlm probe --quick`
trains, scores and reports every configuration over seeds. Learning itself is not checked here (two steps per
stage); the full probe's figures are in the README."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from modeling_panovlm.cli.probe import DEFAULT_PROBE_FILE
from modeling_panovlm.probe import load_probe_file, parse_probe
from modeling_panovlm.probe.runner import check_configurations, stage_options
from modeling_panovlm.testing.probe_tasks import (
    COUNTS,
    PROBE_TASKS,
    SECTORS,
    closed_answer,
    consistency_rate,
    counting_scene,
    direction_scene,
    relative_scene,
    roll_objects,
    scene_questions,
    sector_of,
    write_probe_dataset,
)
from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama


def test_sectors_follow_the_yaw_convention_and_wrap_at_the_seam():
    assert [SECTORS[sector_of(yaw)] for yaw in (0, 44, 70, 90, 135, 179, -179, -135, -90, -46)] == [
        "front", "front right", "right", "right", "behind right", "behind", "behind", "behind left", "left", "front left",
    ]


def test_rolling_a_panorama_turns_its_objects_and_its_answers(tmp_path):
    objects = [SceneObject("red", "circle", 175.0, 0.0, 30.0), SceneObject("blue", "square", -45.0, 5.0, 30.0)]
    rolled = np.roll(np.asarray(render_panorama(objects, height=64)), 3 * 128 // 8, axis=1)
    drawn = np.asarray(render_panorama(roll_objects(objects, 3), height=64))
    for colour in ((220, 40, 40), (40, 80, 225)):  # the shapes' pixels, not the seeded background texture
        assert ((rolled == colour).all(-1) == (drawn == colour).all(-1)).mean() > 0.995
    before = scene_questions("direction", objects, "a.png")
    after = scene_questions("direction", roll_objects(objects, 3), "b.png")
    assert [q.answer for q in before] == ["behind", "front left"]
    assert [q.answer for q in after] == [SECTORS[(SECTORS.index(q.answer) + 3) % 8] for q in before]
    assert [q.task for q in before] == ["direction8_seam", "direction8"]


def test_probe_dataset_has_every_task_and_consistency_pairs_point_at_matching_questions(tmp_path):
    manifest = write_probe_dataset(tmp_path, 8, 12, seed=3)
    assert set(manifest["tables"]) == {"train", *PROBE_TASKS}
    assert all(manifest["questions"][task] > 0 for task in PROBE_TASKS)
    read = {task: list(csv_rows(tmp_path / manifest["tables"][task])) for task in PROBE_TASKS}
    directions = read["direction8"] + read["direction8_seam"]
    for original, rolled, sectors in manifest["consistency_pairs"]:
        assert directions[original]["query"] == read["consistency"][rolled]["query"]
        turned = SECTORS[(SECTORS.index(directions[original]["annotation"]) + sectors) % 8]
        assert read["consistency"][rolled]["annotation"] == turned
        assert read["consistency"][rolled]["url"].startswith(directions[original]["url"][:-4] + "_roll")
    for row in read["ceiling_floor"]:
        assert row["annotation"] in ("ceiling", "floor")
    for task in ("relative", "relative_object"):
        assert {row["annotation"] for row in read[task]} <= {"red", "green", "blue", "yellow"}
    assert {row["query"] for row in read["relative"]} == {"what is behind the camera?"}


def csv_rows(path):
    import csv

    with path.open(encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


def test_seam_scenes_put_objects_across_the_seam():
    rng = random.Random(0)
    seam = [q for _ in range(60) for q in scene_questions("direction", direction_scene(rng), "x.png") if q.task == "direction8_seam"]
    assert len(seam) > 5 and {q.answer for q in seam} == {"behind right", "behind", "behind left"}
    # Objects behind but off the seam exist too, so "behind" is no giveaway for the seam.
    rng = random.Random(1)
    off_seam = [q for _ in range(60) for q in scene_questions("direction", direction_scene(rng), "x.png") if q.task == "direction8"]
    assert "behind" in {q.answer for q in off_seam}


def test_relative_and_counting_answers_follow_the_drawn_objects():
    rng = random.Random(2)
    for _ in range(40):
        objects = relative_scene(rng)
        behind, beside = scene_questions("relative", objects, "x.png")
        at = {obj.colour: obj.yaw_deg for obj in objects}
        assert abs(at[behind.answer]) >= 180 - 45  # the object behind the camera, across the seam or near it
        anchor = beside.query.split(" the ")[1].removesuffix(" object?")
        turn = -90 if " left of " in beside.query else 90  # left is -90 degrees of yaw
        assert abs((at[beside.answer] - at[anchor] - turn + 180) % 360 - 180) <= 30
        objects = counting_scene(rng)
        (count,) = scene_questions("counting", objects, "x.png")
        assert {obj.colour for obj in objects} == {count.query.split()[2]} and COUNTS.index(count.answer) + 1 == len(objects)


def test_closed_answers_and_consistency_are_exact():
    assert closed_answer(" Behind  left.", SECTORS) == "behind left"
    assert closed_answer("behind left of", SECTORS) is None
    pairs = [(0, 0, 2), (1, 1, 7)]
    assert consistency_rate(["front", "left"], ["right", "behind left"], pairs) == 1.0
    assert consistency_rate(["front", "left"], ["front", "left"], pairs) == 0.0  # an answer that ignores the roll
    assert consistency_rate(["nonsense", "left"], ["right", "behind left"], pairs) == 0.5


def test_default_probe_compares_what_the_issue_asks_and_every_configuration_is_valid():
    spec = load_probe_file(DEFAULT_PROBE_FILE)
    check_configurations(spec)
    assert len(spec.seeds) >= 3
    configs = {c.name: c for c in spec.configurations}
    overrides = [{**spec.model, **c.config} for c in spec.configurations]
    assert {o["resampler_type"] for o in overrides} >= {"bimamba", "mlp", "perceiver", "qformer"}
    assert {o["use_panorama_pe"] for o in overrides} == {True, False}
    assert {o["stitching_mode"] for o in overrides} == {"concat", "drop_overlap"}
    assert {o.get("pitch_levels_deg", (0.0,)) and tuple(o.get("pitch_levels_deg", [0.0])) for o in overrides} == {(0.0,), (45.0, 0.0, -45.0)}
    assert {c.stages for c in configs.values()} == {("vision", "resampler", "finetune"), ("resampler", "finetune")}


def test_only_the_vision_stage_augments(tmp_path):
    # A yaw roll or a hue shift contradicts answers that name a direction or a colour: with them the language
    # stages learned nothing (8-sector direction stayed at the fixed answer's share after 1,500 steps).
    spec = load_probe_file(DEFAULT_PROBE_FILE)
    options = stage_options(spec, spec.configurations[0], 0, tmp_path / "initial", tmp_path / "train.csv", tmp_path)
    assert {stage.stage: stage.augment for stage in options} == {"vision": True, "resampler": False, "finetune": False}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": 1}, "unknown keys ['colour']"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"configurations": [{"name": "a"}, {"name": "a"}]}, "names must be unique"),
        ({"configurations": [{"name": "a", "stages": ["finetune", "vision"]}]}, "in the order"),
        ({"configurations": [{"name": "a", "stages": ["vision"]}]}, "last stage must train the language side"),
        ({"configurations": [{"name": "a/b"}]}, "names a directory"),
        ({"stages": {"finetune": {"seed": 3}}}, "set by the probe itself"),
        ({"data": {"height": 60}}, None),  # checked when the data is written (below)
    ],
)
def test_probe_files_with_mistakes_are_refused_naming_the_key(change, message):
    content = {"seeds": [0], "configurations": [{"name": "baseline"}], **change}
    if message is None:
        parse_probe(content)
        with pytest.raises(ValueError, match="multiple of 8"):
            write_probe_dataset("/nonexistent-never-written", 4, 4, height=60)
        return
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        parse_probe(content, "p.yaml")
    assert str(caught.value).startswith("p.yaml: ")


def test_a_configuration_the_config_refuses_fails_before_training_with_its_name():
    spec = parse_probe(
        {"seeds": [0], "model": {"crop_strategy": "e2p", "fov_deg": 120.0, "overlap_ratio": 0.25},
         "configurations": [{"name": "ok"}, {"name": "too_wide", "config": {"pitch_levels_deg": [45.0, 0.0, -45.0]}}]},
        "p.yaml",
    )
    with pytest.raises(ValueError, match=r"(?s)p.yaml: configuration 'too_wide' .*past the pole"):
        check_configurations(spec)


def test_quick_probe_trains_scores_and_reports_every_configuration_over_seeds(tmp_path):
    content = yaml.safe_load(DEFAULT_PROBE_FILE.read_text())
    content["configurations"] = [{"name": "baseline"}, {"name": "no_vision_stage", "stages": ["resampler", "finetune"]}]
    probe_file = tmp_path / "probe.yaml"
    probe_file.write_text(yaml.safe_dump(content))
    command = [sys.executable, "examples/probe.py", "--config", probe_file, "--quick", "--output-dir", tmp_path / "out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    root = DEFAULT_PROBE_FILE.parents[1]
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 configurations x 2 seeds = 4 runs" in result.stdout
    results = json.loads((tmp_path / "out" / "probe_results.json").read_text())
    assert results["complete"] and results["seeds"] == [0, 1]
    assert [(r["configuration"], r["seed"]) for r in results["runs"]] == [
        ("baseline", 0), ("no_vision_stage", 0), ("baseline", 1), ("no_vision_stage", 1)
    ]
    assert set(results["runs"][1]["stages"]) == {"resampler", "finetune"}
    assert all(run["stages"]["finetune"]["steps"] == 2 for run in results["runs"])
    for entry in results["summary"].values():
        for task in PROBE_TASKS:
            stats = entry["tasks"][task]
            assert 0.0 <= stats["min"] <= stats["mean"] <= stats["max"] <= 1.0 and stats["std"] >= 0.0
    table = (tmp_path / "out" / "probe_results.md").read_text()
    assert "| baseline |" in table and "| no_vision_stage |" in table and "| *chance* |" in table
    assert table in result.stdout
    with Image.open(tmp_path / "out" / "probe_results.png") as image:
        assert image.format == "PNG" and image.size == (1100, 420)


def test_probe_command_refuses_a_bad_probe_file_with_a_clear_message(tmp_path, capsys):
    from modeling_panovlm.cli.probe import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0]\nconfigurations: [{name: a, config: {resampler_type: nonexistent}}]\n")
    with pytest.raises(SystemExit) as caught:
        main(["--config", str(bad), "--output-dir", str(tmp_path / "out")])
    assert caught.value.code == 2
    assert "configuration 'a'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
