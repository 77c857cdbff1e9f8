"""The synthetic panorama data set the demo learns from: objects are drawn where their captions say (seam
included), the tables are QuIC-360-shaped and reproducible, and the accuracy scorer reads the right words."""

import csv
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modeling_panovlm.testing.synthetic_panoramas import (
    COLOURS,
    SceneObject,
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


def test_make_synthetic_panoramas_cli(tmp_path):
    command = [sys.executable, ROOT / "examples" / "make_synthetic_panoramas.py", "--output-dir", tmp_path, "--num", "4"]
    result = subprocess.run([*map(str, command), "--height", "32", "--num-objects", "2", "--min-objects", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert read_rows(tmp_path / "train.csv") and read_rows(tmp_path / "test.csv")
