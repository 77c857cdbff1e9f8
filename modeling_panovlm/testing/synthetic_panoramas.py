"""Synthetic equirectangular panoramas: coloured shapes at known directions, with captions.

Shapes are drawn on the sphere (in each object's own tangent frame), so they look right in every perspective view
and wrap correctly across the +/-180 degree seam and over the poles. Directions follow the library convention: yaw
0 = front, +90 = right, +/-180 = behind, -90 = left; pitch +90 = straight up.

Two tasks:

* `"directions"` (what the demo trains on): up to four objects near the horizon, one per compass direction.
* `"ceiling_floor"`: one object on the ceiling and one on the floor (pitch beyond +/-78 degrees, at most 26 degrees
  across, so no view of a horizon ring of fov up to 120 degrees sees them), asked about as "ceiling" / "floor":
  it measures what views above and below the horizon (`pitch_levels_deg`) add.
"""

from __future__ import annotations

import csv
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 40),
}
SHAPES = ("circle", "square", "triangle", "diamond")
DIRECTIONS: dict[str, float] = {"front": 0.0, "right": 90.0, "behind": 180.0, "left": -90.0}
DIRECTION_PHRASES = {"front": "in front", "right": "on the right", "behind": "behind", "left": "on the left"}
# Objects this far above / below the horizon are on the ceiling / floor rather than in a compass direction.
PLACE_MIN_PITCH_DEG = 60.0
PLACE_PHRASES = {**DIRECTION_PHRASES, "ceiling": "on the ceiling", "floor": "on the floor"}
TASKS = ("directions", "ceiling_floor")
# Accuracy of guessing on the scored questions: 1 in 4 colours / directions; for ceiling_floor half the questions
# are colours (1 in 4) and half ceiling-or-floor (1 in 2).
TASK_CHANCE = {"directions": 0.25, "ceiling_floor": 0.375}


@dataclass(frozen=True)
class SceneObject:
    """A flat shape facing the camera, centred at (`yaw_deg`, `pitch_deg`), `size_deg` across."""

    colour: str
    shape: str
    yaw_deg: float
    pitch_deg: float = 0.0
    size_deg: float = 40.0

    @property
    def direction(self) -> str:
        """The nearest of front / right / behind / left."""
        return direction_of(self.yaw_deg)

    @property
    def place(self) -> str:
        """`"ceiling"` / `"floor"` at least `PLACE_MIN_PITCH_DEG` above / below the horizon, else the direction."""
        if self.pitch_deg >= PLACE_MIN_PITCH_DEG:
            return "ceiling"
        if self.pitch_deg <= -PLACE_MIN_PITCH_DEG:
            return "floor"
        return self.direction


def direction_of(yaw_deg: float) -> str:
    """Name of the compass quadrant (front, right, behind, left) containing `yaw_deg`."""
    offsets = {name: abs((yaw_deg - centre + 180.0) % 360.0 - 180.0) for name, centre in DIRECTIONS.items()}
    return min(offsets, key=offsets.get)


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Membership in a unit shape, `x`, `y` in units of the half size (inside |x|, |y| <= 1)."""
    if shape == "circle":
        return x**2 + y**2 <= 1.0
    if shape == "square":
        return (np.abs(x) <= 0.85) & (np.abs(y) <= 0.85)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    if shape == "triangle":  # apex up
        return (y >= -0.8) & (y <= 1.0) & (np.abs(x) <= (1.0 - y) * 0.62)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_panorama(objects: list[SceneObject], height: int = 256, seed: int = 0) -> Image.Image:
    """An RGB equirectangular image `height` x `2 * height` with `objects` drawn on a sky/ground background.

    The background has a little seeded texture so views are not flat; objects are opaque and drawn in order.
    """
    width = 2 * height
    lon = (np.arange(width) + 0.5) / width * 2 * math.pi - math.pi  # pixel centres, -pi..pi, yaw right-positive
    lat = math.pi / 2 - (np.arange(height) + 0.5) / height * math.pi  # +pi/2 at the top row
    lon, lat = np.meshgrid(lon, lat)
    sky = np.array([150, 190, 235], dtype=np.float64)
    ground = np.array([120, 110, 95], dtype=np.float64)
    t = np.clip(lat / (math.pi / 2), -1.0, 1.0)[..., None]
    image = np.where(t >= 0, sky * (1 - 0.35 * t) + 255 * 0.35 * t, ground * (1 + 0.3 * t))
    image += np.random.default_rng(seed).normal(0.0, 6.0, image.shape)

    # Unit direction vectors of every pixel: x right (yaw +90), y up, z front (yaw 0).
    dirs = np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], axis=-1)
    for obj in objects:
        yaw, pitch = math.radians(obj.yaw_deg), math.radians(obj.pitch_deg)
        forward = np.array([math.cos(pitch) * math.sin(yaw), math.sin(pitch), math.cos(pitch) * math.cos(yaw)])
        right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
        up = np.cross(forward, right)
        depth = dirs @ forward
        half = math.tan(math.radians(obj.size_deg) / 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = (dirs @ right) / depth / half
            y = (dirs @ up) / depth / half
        inside = (depth > 0) & _shape_mask(obj.shape, x, y)
        image[inside] = COLOURS[obj.colour]
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="RGB")


def random_scene(rng: random.Random, num_objects: int = 4, seam_probability: float = 0.25) -> list[SceneObject]:
    """`num_objects` (at most 4) objects with distinct colours, one per compass direction, jittered by up to
    +/-25 degrees; with `seam_probability` the object behind sits exactly on the +/-180 degree seam."""
    if not 1 <= num_objects <= len(DIRECTIONS):
        raise ValueError(f"num_objects must be in [1, {len(DIRECTIONS)}], got {num_objects}")
    colours = rng.sample(list(COLOURS), num_objects)
    directions = rng.sample(list(DIRECTIONS), num_objects)
    objects = []
    for colour, direction in zip(colours, directions):
        yaw = DIRECTIONS[direction] + rng.uniform(-25.0, 25.0)
        if direction == "behind" and rng.random() < seam_probability:
            yaw = 180.0
        objects.append(SceneObject(colour, rng.choice(SHAPES), yaw, rng.uniform(-10.0, 10.0), rng.uniform(35, 50)))
    return objects


def ceiling_floor_scene(rng: random.Random) -> list[SceneObject]:
    """One object on the ceiling (pitch 78 to 90) and one on the floor (pitch -90 to -78), of distinct colours and
    20 to 26 degrees across, at random yaws: every point of them lies more than 60 degrees off the horizon, where no
    view of a horizon ring of fov up to 120 degrees reaches."""
    colours = rng.sample(list(COLOURS), 2)
    return [
        SceneObject(colour, rng.choice(SHAPES), rng.uniform(-180.0, 180.0), sign * rng.uniform(78.0, 90.0), rng.uniform(20.0, 26.0))
        for colour, sign in zip(colours, (1.0, -1.0))
    ]


def _place_order(obj: SceneObject) -> int:
    return list(PLACE_PHRASES).index(obj.place)


def describe_scene(objects: list[SceneObject]) -> str:
    """A caption naming every object's colour, shape and place: front first, clockwise, then ceiling and floor."""
    ordered = sorted(objects, key=_place_order)
    parts = [f"a {obj.colour} {obj.shape} {PLACE_PHRASES[obj.place]}" for obj in ordered]
    return "There is " + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] + "."


def scene_rows(objects: list[SceneObject], image: str) -> list[dict[str, str]]:
    """QuIC-360-style rows (`url`, `query`, `annotation`) about one scene: for every object a colour query
    ("red object" -> where it is), for every occupied place a place query ("left", "ceiling" -> what is there),
    and one caption of the whole scene ("panorama")."""
    rows = []
    for obj in objects:
        rows.append({"url": image, "query": f"{obj.colour} object", "annotation": f"The {obj.colour} {obj.shape} is {PLACE_PHRASES[obj.place]}."})
    for obj in sorted(objects, key=_place_order):
        rows.append({"url": image, "query": obj.place, "annotation": f"A {obj.colour} {obj.shape} is {PLACE_PHRASES[obj.place]}."})
    rows.append({"url": image, "query": "panorama", "annotation": describe_scene(objects)})
    return rows


def write_synthetic_dataset(
    output_dir: str | os.PathLike,
    num: int,
    seed: int = 0,
    height: int = 128,
    test_fraction: float = 0.2,
    num_objects: int | None = None,
    min_objects: int | None = None,
    task: str = "directions",
) -> tuple[Path, Path]:
    """Render `num` random scenes to `<output_dir>/images/` and write `train.csv` and `test.csv` (QuIC-360 columns,
    relative image paths); the last `test_fraction` of the panoramas are held out in `test.csv`. Returns both
    paths.

    `task="directions"`: each scene holds `num_objects` (default 4) objects near the horizon, or a uniformly random
    number from `min_objects` to `num_objects` when `min_objects` is given (scenes with fewer objects give a small
    model an easier start: with one object the colour alone answers a direction question, with four it must look
    in the right direction). `task="ceiling_floor"`: each scene is a `ceiling_floor_scene` (its own two objects;
    `num_objects` / `min_objects` do not apply).
    """
    if num < 2 or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"need num >= 2 and 0 < test_fraction < 1, got num={num}, test_fraction={test_fraction}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "ceiling_floor" and (num_objects, min_objects) != (None, None):
        raise ValueError("task='ceiling_floor' places one object on the ceiling and one on the floor: leave num_objects and min_objects unset")
    num_objects = len(DIRECTIONS) if num_objects is None else num_objects
    low = num_objects if min_objects is None else min_objects
    if not 1 <= low <= num_objects:
        raise ValueError(f"need 1 <= min_objects <= num_objects, got min_objects={min_objects}, num_objects={num_objects}")
    output_dir = Path(output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    num_test = max(1, round(num * test_fraction))
    splits: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    for index in range(num):
        if task == "ceiling_floor":
            objects = ceiling_floor_scene(rng)
        else:  # no draw for a fixed count, so datasets written before `min_objects` existed stay the same
            objects = random_scene(rng, rng.randint(low, num_objects) if low < num_objects else num_objects)
        name = f"images/pano_{index:05d}.png"
        render_panorama(objects, height=height, seed=seed * 1_000_003 + index).save(output_dir / name)
        splits["test" if index >= num - num_test else "train"].extend(scene_rows(objects, name))
    paths = []
    for split, rows in splits.items():
        path = output_dir / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["url", "query", "annotation"])
            writer.writeheader()
            writer.writerows(rows)
        paths.append(path)
    return paths[0], paths[1]


def synthetic_answer_key(query: str, answer: str) -> str | None:
    """What a synthetic answer must get right: the place for a colour query ("red object"), the colour for a
    place query ("left", "ceiling"); `None` for other queries. The first place phrase / colour word in `answer`."""
    if query.endswith(" object"):
        candidates = {name: answer.find(phrase) for name, phrase in PLACE_PHRASES.items()}
    elif query in PLACE_PHRASES:
        candidates = {colour: answer.find(colour) for colour in COLOURS}
    else:
        return None
    found = {name: position for name, position in candidates.items() if position >= 0}
    return min(found, key=found.get) if found else ""


def synthetic_accuracy(queries: list[str], references: list[str], predictions: list[str]) -> tuple[float, int]:
    """Share of colour/place questions whose prediction names the reference's place / colour, and how many such
    questions there were. Chance is 1 in 4 for the directions task."""
    scored = [
        synthetic_answer_key(query, prediction) == key
        for query, reference, prediction in zip(queries, references, predictions)
        if (key := synthetic_answer_key(query, reference)) is not None
    ]
    if not scored:
        raise ValueError("no colour or direction questions to score")
    return sum(scored) / len(scored), len(scored)


__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "DIRECTION_PHRASES",
    "PLACE_PHRASES",
    "SHAPES",
    "TASKS",
    "TASK_CHANCE",
    "SceneObject",
    "ceiling_floor_scene",
    "describe_scene",
    "direction_of",
    "random_scene",
    "render_panorama",
    "scene_rows",
    "synthetic_accuracy",
    "synthetic_answer_key",
    "write_synthetic_dataset",
]
