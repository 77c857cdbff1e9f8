"""Synthetic panorama reasoning tasks with closed answer sets, for the panorama probe (`modeling_panovlm.probe`).

Every scene is drawn with `synthetic_panoramas.render_panorama` (same shapes, colours and yaw/pitch convention:
yaw 0 = front, +90 = right, +/-180 = behind; pitch +90 = up), and every question has one right answer from a small
closed set, so accuracy is exact:

* `direction8` / `direction8_seam`: "where is the red object?" -> one of 8 sectors 45 degrees wide ("front",
  "front right", ..., "front left"); objects that straddle the +/-180 degree seam of the equirectangular image are
  scored apart (`direction8_seam`: "behind right", "behind" or "behind left" in equal shares);
* `horizon` / `ceiling_floor`: "how high is the red object?" -> "above" / "below" (20 to 35 degrees off the horizon)
  or "ceiling" / "floor" (beyond 78 degrees: only views pitched off the horizon see them);
* `relative`: "what is behind the camera?" -> a colour, in scenes with one object per quadrant (front, right,
  behind, left: each in other views; the one behind lies on the +/-180 degree seam);
* `relative_object`: "what is left of the red object?" / "what is right of ...?" in the same scenes: the object
  must be found first, then its neighbour a quarter turn away;
* `counting`: "how many red objects?" -> "one" to "four", objects of that one colour spread over 8 yaw slots (so
  over several views and their overlaps);
* `consistency`: the held-out direction scenes rolled in yaw by a whole number k of sectors; a pair is consistent
  when the answer about the rolled panorama is the answer about the original turned by k sectors (whether or not
  either is right).

Direction, height and counting scenes hold the asked-about objects only, and `relative` asks one fixed question:
finding one object among distractors by its colour, or a place named by the question, and then reading what is
there takes a two-layer language model far longer than the probe's budget (measured with a plain LoRA training loop:
8-sector direction with 1 to 3 distractors reached 39 % after 1,500 steps, alone 100 % after 500; with the probe,
"what is in front of / right of / behind / left of the camera?" stayed at chance after 1,600), so they would measure
that binding step instead of the panoramic components. `relative_object` keeps the binding step, as a task of its own.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic_panoramas import COLOURS, SHAPES, SceneObject, render_panorama


SECTORS = ("front", "front right", "right", "behind right", "behind", "behind left", "left", "front left")
SECTOR_DEG = 360.0 / len(SECTORS)
LEVELS = {"above": (20.0, 35.0), "below": (-35.0, -20.0), "ceiling": (78.0, 90.0), "floor": (-90.0, -78.0)}
COUNTS = ("one", "two", "three", "four")
# Scene kinds in the order they cycle through the panoramas, and the tasks each one's questions belong to.
SCENE_KINDS = ("direction", "height", "relative", "counting")
PROBE_TASKS = (
    "direction8", "direction8_seam", "horizon", "ceiling_floor", "relative", "relative_object", "counting", "consistency"
)
ANSWERS: dict[str, tuple[str, ...]] = {
    "direction8": SECTORS,
    "direction8_seam": SECTORS,
    "horizon": ("above", "below", "ceiling", "floor"),
    "ceiling_floor": ("above", "below", "ceiling", "floor"),
    "relative": tuple(COLOURS),
    "relative_object": tuple(COLOURS),
    "counting": COUNTS,
    "consistency": SECTORS,
}
# Accuracy of guessing uniformly among the task's answers (for consistency: among the 8 sectors).
CHANCE = {task: 1.0 / len(answers) for task, answers in ANSWERS.items()}
MANIFEST = "probe_data.json"


@dataclass(frozen=True)
class Question:
    """One closed-set question about a panorama (`image`, relative to the dataset directory)."""

    image: str
    query: str
    answer: str
    task: str


def sector_of(yaw_deg: float) -> int:
    """Index into `SECTORS` of the 45 degree sector containing `yaw_deg`."""
    return round((yaw_deg % 360.0) / SECTOR_DEG) % len(SECTORS)


def straddles_seam(obj: SceneObject) -> bool:
    """Whether `obj` crosses the +/-180 degree seam by at least 3 degrees on both sides (its half size exceeds its
    yaw's distance from 180 degrees by 3 or more)."""
    return abs((obj.yaw_deg % 360.0) - 180.0) <= obj.size_deg / 2 - 3.0


def seam_object(rng: random.Random, colour: str) -> SceneObject:
    """An object across the +/-180 degree seam whose sector is "behind right", "behind" or "behind left" with equal
    chance (so no single answer scores well on the seam): centred up to 10 degrees from 180, or 26 to 30 degrees off
    it on either side, and large enough to reach at least 4 degrees past the seam."""
    band = rng.choice((-1, 0, 1))
    offset = band * rng.uniform(26.0, 30.0) if band else rng.uniform(-10.0, 10.0)
    size = max(28.0, 2 * (abs(offset) + rng.uniform(4.0, 8.0)))
    return SceneObject(colour, rng.choice(SHAPES), (180.0 + offset + 180.0) % 360.0 - 180.0, rng.uniform(-8, 8), size)


def direction_scene(rng: random.Random, seam_probability: float = 0.5) -> list[SceneObject]:
    """One object near the horizon, at most 10 degrees off its sector's centre (12 to 20 behind, off the seam, and
    too small to reach it); with `seam_probability` a `seam_object` instead."""
    colour = rng.choice(list(COLOURS))
    if rng.random() < seam_probability:
        return [seam_object(rng, colour)]
    sector = rng.randrange(len(SECTORS))
    offset, size = rng.uniform(-10.0, 10.0), rng.uniform(28.0, 34.0)
    if sector == 4:  # behind but off the seam: 12 to 20 degrees to one side, small enough not to reach it
        offset = rng.choice((-1, 1)) * rng.uniform(12.0, 20.0)
        size = rng.uniform(22.0, 2 * abs(offset) + 4.0)
    yaw = (sector * SECTOR_DEG + offset + 180.0) % 360.0 - 180.0
    return [SceneObject(colour, rng.choice(SHAPES), yaw, rng.uniform(-8, 8), size)]


def height_scene(rng: random.Random, levels: tuple[str, ...] = ("ceiling", "floor", "above", "below", "above", "below")) -> list[SceneObject]:
    """One object at a level drawn from `levels` (by default above or below the horizon two times in three, else on
    the ceiling or the floor)."""
    level = rng.choice(levels)
    return [SceneObject(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.uniform(-180, 180), rng.uniform(*LEVELS[level]), rng.uniform(20, 26))]


def relative_scene(rng: random.Random) -> list[SceneObject]:
    """Four objects of distinct colours, one per quadrant (front, right, behind, left), up to 15 degrees off, in a
    random order (which `scene_questions` asks about)."""
    quadrants = rng.sample(range(4), 4)
    return [
        SceneObject(colour, rng.choice(SHAPES), (quadrant * 90.0 + rng.uniform(-15, 15) + 180.0) % 360.0 - 180.0, rng.uniform(-8, 8), rng.uniform(28, 36))
        for colour, quadrant in zip(rng.sample(list(COLOURS), 4), quadrants)
    ]


def counting_scene(rng: random.Random) -> list[SceneObject]:
    """One to four objects of one colour, each in its own 45 degree slot."""
    colours = [rng.choice(list(COLOURS))] * rng.randint(1, 4)
    slots = rng.sample(range(len(SECTORS)), len(colours))
    return [
        SceneObject(colour, rng.choice(SHAPES), slot * SECTOR_DEG - 180.0 + rng.uniform(-8, 8), rng.uniform(-8, 8), rng.uniform(20, 26))
        for colour, slot in zip(colours, slots)
    ]


def scene_questions(kind: str, objects: list[SceneObject], image: str) -> list[Question]:
    """The questions a scene of `kind` (one of `SCENE_KINDS`) asks about `objects`, drawn in `image`."""
    if kind == "direction":
        return [
            Question(image, f"where is the {obj.colour} object?", SECTORS[sector_of(obj.yaw_deg)],
                     "direction8_seam" if straddles_seam(obj) else "direction8")
            for obj in objects
        ]
    if kind == "height":
        questions = []
        for obj in objects:
            level = next(name for name, (low, high) in LEVELS.items() if low <= obj.pitch_deg <= high)
            task = "ceiling_floor" if level in ("ceiling", "floor") else "horizon"
            questions.append(Question(image, f"how high is the {obj.colour} object?", level, task))
        return questions
    if kind == "relative":
        # Two questions, not all eight, so that relative questions do not outnumber the others: what is behind, and
        # the left or right (by the third object's quadrant) neighbour of the second object in the scene's random
        # order.
        quadrant_of = {obj.colour: round(obj.yaw_deg / 90.0) % 4 for obj in objects}
        colour_at = {quadrant: colour for colour, quadrant in quadrant_of.items()}
        anchor, side = objects[1].colour, ("left", "right")[quadrant_of[objects[2].colour] % 2]
        return [
            Question(image, "what is behind the camera?", colour_at[2], "relative"),
            Question(image, f"what is {side} of the {anchor} object?",
                     colour_at[(quadrant_of[anchor] + (1 if side == "right" else -1)) % 4], "relative_object"),
        ]
    if kind == "counting":
        return [Question(image, f"how many {objects[0].colour} objects?", COUNTS[len(objects) - 1], "counting")]
    raise ValueError(f"unknown scene kind {kind!r}; expected one of {SCENE_KINDS}")


_SCENES = {"direction": direction_scene, "height": height_scene, "relative": relative_scene, "counting": counting_scene}


def roll_objects(objects: list[SceneObject], sectors: int) -> list[SceneObject]:
    """`objects` turned to the right by `sectors` * 45 degrees (what rolling the panorama's columns does)."""
    turned = []
    for obj in objects:
        yaw = (obj.yaw_deg + sectors * SECTOR_DEG + 180.0) % 360.0 - 180.0
        turned.append(SceneObject(obj.colour, obj.shape, yaw, obj.pitch_deg, obj.size_deg))
    return turned


def write_probe_dataset(
    output_dir: str | Path, num_train: int, num_test: int, seed: int = 0, height: int = 64
) -> dict:
    """Render `num_train` + `num_test` panoramas (scene kinds cycling through `SCENE_KINDS`) into
    `<output_dir>/images`, write `train.csv` (every question of the training panoramas, QuIC-360 columns) and one
    `test_<task>.csv` per task of `PROBE_TASKS`, and return the manifest also written to `<output_dir>/probe_data.json`:
    the tables, the answers of each task, and for `consistency` the (original row, rolled row, sectors) pairs, rows
    indexing `test_direction8.csv` + `test_direction8_seam.csv` concatenated and `test_consistency.csv`."""
    if num_train < len(SCENE_KINDS) or num_test < len(SCENE_KINDS):
        raise ValueError(f"need at least {len(SCENE_KINDS)} training and test panoramas (one per scene kind), got {num_train} and {num_test}")
    if height % 8:
        raise ValueError(f"height must be a multiple of 8 (the yaw roll moves whole 45 degree sectors of columns), got {height}")
    output_dir = Path(output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train: list[Question] = []
    tests: dict[str, list[Question]] = {task: [] for task in PROBE_TASKS}
    rolled_pairs: list[tuple[Question, Question, int]] = []
    total = num_train + num_test
    # A small test split still scores every task: the first test scene of a kind is drawn for one of its two
    # tasks, the last for the other when no scene has given it one yet.
    first_and_last = {
        kind: (indices[0], indices[-1])
        for kind in ("direction", "height")
        for indices in [[index for index in range(num_train, total) if SCENE_KINDS[index % len(SCENE_KINDS)] == kind]]
    }
    forced = {
        "direction": (partial(direction_scene, seam_probability=0.0), partial(direction_scene, seam_probability=1.0), "direction8_seam"),
        "height": (partial(height_scene, levels=("above", "below")), partial(height_scene, levels=("ceiling", "floor")), "ceiling_floor"),
    }
    for index in range(total):
        kind = SCENE_KINDS[index % len(SCENE_KINDS)]
        first, last = first_and_last.get(kind, (None, None))
        if index == first and first != last:
            objects = forced[kind][0](rng)
        elif index == last and not tests[forced[kind][2]]:
            objects = forced[kind][1](rng)
        else:
            objects = _SCENES[kind](rng)
        split = "train" if index < num_train else "test"
        name = f"images/{split}_{index:05d}.png"
        image = render_panorama(objects, height=height, seed=seed * 1_000_003 + index)
        image.save(output_dir / name)
        questions = scene_questions(kind, objects, name)
        if split == "train":
            train.extend(questions)
            continue
        for question in questions:
            tests[question.task].append(question)
        if kind == "direction":
            sectors = rng.randint(1, len(SECTORS) - 1)
            rolled_name = f"images/{split}_{index:05d}_roll{sectors}.png"
            array = np.roll(np.asarray(image), sectors * image.width // len(SECTORS), axis=1)
            Image.fromarray(array, mode="RGB").save(output_dir / rolled_name)
            for original, rolled in zip(questions, scene_questions(kind, roll_objects(objects, sectors), rolled_name)):
                rolled_pairs.append((original, Question(rolled.image, rolled.query, rolled.answer, "consistency"), sectors))
    tests["consistency"] = [rolled for _, rolled, _ in rolled_pairs]
    direction_rows = tests["direction8"] + tests["direction8_seam"]
    pairs = [(direction_rows.index(original), row, sectors) for row, (original, _, sectors) in enumerate(rolled_pairs)]
    tables = {"train": _write_table(output_dir / "train.csv", train)}
    for task, questions in tests.items():
        if not questions:
            raise ValueError(f"no held-out {task} questions in {num_test} test panoramas: raise the number of test panoramas")
        tables[task] = _write_table(output_dir / f"test_{task}.csv", questions)
    manifest = {
        "seed": seed,
        "height": height,
        "train_panoramas": num_train,
        "test_panoramas": num_test,
        "tables": tables,
        "questions": {"train": len(train), **{task: len(questions) for task, questions in tests.items()}},
        "answers": {task: list(answers) for task, answers in ANSWERS.items()},
        "consistency_pairs": pairs,
    }
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _write_table(path: Path, questions: list[Question]) -> str:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["url", "query", "annotation"])
        writer.writeheader()
        writer.writerows({"url": q.image, "query": q.query, "annotation": q.answer} for q in questions)
    return path.name


def closed_answer(prediction: str, answers: tuple[str, ...] | list[str]) -> str | None:
    """The answer of the closed set `answers` that `prediction` states (case, spaces and a final full stop
    ignored), or None when it states none of them exactly."""
    text = " ".join(prediction.lower().replace(".", " ").split())
    return text if text in answers else None


def consistency_rate(direction_predictions: list[str], rolled_predictions: list[str], pairs: list) -> float:
    """Share of (original, rolled, k) pairs whose rolled answer is the original answer turned by k sectors; an
    answer outside the 8 sectors on either side is inconsistent."""
    if not pairs:
        raise ValueError("no consistency pairs to score")
    consistent = 0
    for original, rolled, sectors in pairs:
        before = closed_answer(direction_predictions[original], SECTORS)
        after = closed_answer(rolled_predictions[rolled], SECTORS)
        consistent += before is not None and after == SECTORS[(SECTORS.index(before) + sectors) % len(SECTORS)]
    return consistent / len(pairs)


__all__ = [
    "ANSWERS",
    "CHANCE",
    "COUNTS",
    "LEVELS",
    "MANIFEST",
    "PROBE_TASKS",
    "Question",
    "SCENE_KINDS",
    "SECTORS",
    "closed_answer",
    "consistency_rate",
    "counting_scene",
    "direction_scene",
    "height_scene",
    "relative_scene",
    "roll_objects",
    "scene_questions",
    "seam_object",
    "sector_of",
    "straddles_seam",
    "write_probe_dataset",
]
