"""The synthetic panorama data set the demo learns from: objects are drawn where their captions say (seam
included), the tables are QuIC-360-shaped and reproducible, and the accuracy scorer reads the right words."""

import csv
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from configuration_panovlm.view_layout import build_view_layout
from modeling_panovlm.testing.synthetic_panoramas import (
    COLOURS,
    TASK_CHANCE,
    SceneObject,
    ceiling_floor_scene,
    direction_of,
    random_scene,
    render_panorama,
    scene_rows,
    synthetic_accuracy,
    synthetic_answer_key,
    write_synthetic_dataset,
)


ROOT = Path(__file__).resolve().parents[1]


def column_of(yaw_deg: float, width: int) -> int:
    """Pixel column whose centre looks at `yaw_deg` (yaw -180 at the left edge, right-positive)."""
    return int((yaw_deg + 180.0) / 360.0 * width) % width


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    ("yaw", "direction"),
    [(0.0, "front"), (44.0, "front"), (46.0, "right"), (-100.0, "left"), (179.0, "behind"), (-179.0, "behind"), (540.0, "behind")],
)
def test_direction_of_names_the_nearest_quadrant_and_wraps(yaw, direction):
    assert direction_of(yaw) == direction


@pytest.mark.parametrize("yaw", [-90.0, 0.0, 60.0, 135.0])
def test_objects_are_drawn_at_their_yaw(yaw):
    image = np.asarray(render_panorama([SceneObject("red", "square", yaw)], height=64))
    horizon = image[32]
    assert tuple(horizon[column_of(yaw, 128)]) == COLOURS["red"]
    assert tuple(horizon[column_of(yaw + 180.0, 128)]) != COLOURS["red"]


def test_an_object_on_the_seam_shows_on_both_edges():
    image = np.asarray(render_panorama([SceneObject("blue", "circle", 180.0)], height=64))
    assert tuple(image[32, 0]) == COLOURS["blue"] and tuple(image[32, -1]) == COLOURS["blue"]


def test_scene_rows_ask_about_every_colour_every_direction_and_the_whole_scene():
    objects = [SceneObject("red", "circle", -90.0), SceneObject("green", "triangle", 180.0)]
    rows = scene_rows(objects, "images/a.png")
    assert [(row["query"], row["annotation"]) for row in rows] == [
        ("red object", "The red circle is on the left."),
        ("green object", "The green triangle is behind."),
        ("behind", "A green triangle is behind."),
        ("left", "A red circle is on the left."),
        ("panorama", "There is a green triangle behind and a red circle on the left."),
    ]


def test_random_scene_uses_distinct_colours_and_directions():
    rng = random.Random(3)
    for count in (1, 2, 3, 4):
        scene = random_scene(rng, count)
        assert len({o.colour for o in scene}) == count and len({o.direction for o in scene}) == count
    with pytest.raises(ValueError, match=r"num_objects must be in \[1, 4\], got 5"):
        random_scene(rng, 5)


def test_dataset_splits_panoramas_is_reproducible_and_draws_the_object_counts_asked_for(tmp_path):
    train, test = write_synthetic_dataset(tmp_path / "a", num=20, seed=1, height=32, test_fraction=0.25, min_objects=1)
    train_rows, test_rows = read_rows(train), read_rows(test)
    assert list(train_rows[0]) == ["url", "query", "annotation"]
    train_images, test_images = {r["url"] for r in train_rows}, {r["url"] for r in test_rows}
    assert len(train_images) == 15 and len(test_images) == 5 and not train_images & test_images
    assert all((tmp_path / "a" / url).is_file() for url in train_images | test_images)
    objects = [sum(r["query"].endswith(" object") for r in train_rows + test_rows if r["url"] == u) for u in train_images | test_images]
    assert min(objects) >= 1 and max(objects) <= 4 and len(set(objects)) > 1

    again, _ = write_synthetic_dataset(tmp_path / "b", num=20, seed=1, height=32, test_fraction=0.25, min_objects=1)
    assert read_rows(again) == train_rows
    assert (tmp_path / "a" / train_rows[0]["url"]).read_bytes() == (tmp_path / "b" / train_rows[0]["url"]).read_bytes()
    fixed, _ = write_synthetic_dataset(tmp_path / "c", num=4, seed=1, height=32, test_fraction=0.25, num_objects=2)
    assert all(sum(r["query"].endswith(" object") for r in read_rows(fixed) if r["url"] == u) == 2 for u in {r["url"] for r in read_rows(fixed)})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num=1), "need num >= 2"),
        (dict(num=4, test_fraction=1.0), "0 < test_fraction < 1"),
        (dict(num=4, num_objects=2, min_objects=3), "need 1 <= min_objects <= num_objects"),
        (dict(num=4, min_objects=0), "need 1 <= min_objects <= num_objects"),
    ],
)
def test_dataset_rejects_impossible_settings_before_writing(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_synthetic_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_answer_key_and_accuracy_read_the_direction_or_colour_first_named():
    assert synthetic_answer_key("red object", "The red circle is on the left.") == "left"
    assert synthetic_answer_key("left", "A red circle is on the left.") == "red"
    assert synthetic_answer_key("panorama", "There is a red circle on the left.") is None
    assert synthetic_answer_key("red object", "I do not know.") == ""
    queries = ["red object", "left", "panorama", "blue object"]
    references = ["The red circle is behind.", "A red circle is on the left.", "There is ...", "The blue square is in front."]
    predictions = ["The red circle is behind.", "A green circle is on the left.", "anything", "nothing"]
    assert synthetic_accuracy(queries, references, predictions) == (1 / 3, 3)
    with pytest.raises(ValueError, match="no colour or direction questions"):
        synthetic_accuracy(["panorama"], ["x"], ["y"])


def test_ceiling_and_floor_objects_are_out_of_sight_of_horizon_views_and_in_sight_of_pitched_ones():
    """What the ceiling_floor task measures: a horizon ring (fov up to 120) never shows the objects; rings looking
    up and down do, each object in its own row."""
    from processing_panovlm.equirect import sample_views

    rng = random.Random(5)
    for _ in range(3):
        ceiling, floor = ceiling_floor_scene(rng)
        assert (ceiling.place, floor.place) == ("ceiling", "floor") and ceiling.colour != floor.colour
        erp = torch.from_numpy(np.array(render_panorama([ceiling, floor], height=128))).permute(2, 0, 1)
        for fov, overlap, levels in ((120.0, 0.25, [30.0, 0.0, -30.0]), (90.0, 0.5, [45.0, 0.0, -45.0])):
            layout = build_view_layout("e2p", fov, overlap, levels)
            views = sample_views(erp, layout, 64)[0].round().permute(0, 2, 3, 1).numpy()  # (V, S, S, 3)
            shows = [[bool((view == COLOURS[obj.colour]).all(-1).sum() > 20) for view in views] for obj in (ceiling, floor)]
            per_row = layout.views_per_row
            assert not any(shows[0][per_row:]) and not any(shows[1][:-per_row])  # never below / above its own row
            assert any(shows[0][:per_row]) and any(shows[1][-per_row:])  # seen by the ring looking up / down


def test_ceiling_floor_rows_answer_keys_and_dataset(tmp_path):
    objects = [SceneObject("red", "circle", 30.0, 85.0, 22.0), SceneObject("blue", "square", -100.0, -80.0, 22.0)]
    rows = scene_rows(objects, "images/a.png")
    assert [(row["query"], row["annotation"]) for row in rows] == [
        ("red object", "The red circle is on the ceiling."),
        ("blue object", "The blue square is on the floor."),
        ("ceiling", "A red circle is on the ceiling."),
        ("floor", "A blue square is on the floor."),
        ("panorama", "There is a red circle on the ceiling and a blue square on the floor."),
    ]
    assert synthetic_answer_key("red object", "The red circle is on the floor.") == "floor"
    assert synthetic_answer_key("ceiling", "A green circle is on the ceiling.") == "green"
    assert synthetic_accuracy(["ceiling", "red object"], ["A red x.", "It is on the ceiling."], ["A red y.", "on the floor"]) == (0.5, 2)
    assert TASK_CHANCE["ceiling_floor"] == 0.375

    train, test = write_synthetic_dataset(tmp_path / "cf", num=5, seed=2, height=32, task="ceiling_floor")
    queries = [row["query"] for row in read_rows(train) + read_rows(test)]
    assert queries.count("ceiling") == queries.count("floor") == 5 and len(queries) == 25
    with pytest.raises(ValueError, match="leave num_objects and min_objects unset"):
        write_synthetic_dataset(tmp_path / "bad", num=5, task="ceiling_floor", num_objects=2)
    with pytest.raises(ValueError, match="task must be one of"):
        write_synthetic_dataset(tmp_path / "bad", num=5, task="sky")
    assert not (tmp_path / "bad").exists()


def test_make_synthetic_panoramas_cli(tmp_path):
    command = [sys.executable, ROOT / "examples" / "make_synthetic_panoramas.py", "--output-dir", tmp_path, "--num", "4"]
    result = subprocess.run([*map(str, command), "--height", "32", "--num-objects", "2", "--min-objects", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert read_rows(tmp_path / "train.csv") and read_rows(tmp_path / "test.csv")
    command = [sys.executable, ROOT / "examples" / "make_synthetic_panoramas.py", "--output-dir", tmp_path / "cf", "--num", "4"]
    result = subprocess.run([*map(str, command), "--height", "32", "--task", "ceiling_floor"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert {row["query"] for row in read_rows(tmp_path / "cf" / "train.csv")} >= {"ceiling", "floor"}
