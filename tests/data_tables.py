"""Caption tables for the data tests: small panoramas, and one table written in every format `datasets` reads."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
from pathlib import Path

import datasets

from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama


COLORS = ("red", "green", "blue")
ROWS = [(f"images/{color}.jpg", "location", f"A {color} circle in front.") for color in COLORS]
HEADER = ("url", "query", "annotation")


def write_images(folder: Path, height: int = 32) -> Path:
    """`folder/images/{red,green,blue}.jpg` (2:1 panoramas), a truncated `cut.jpg` and a square `square.png`."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for index, color in enumerate(COLORS):
        render_panorama([SceneObject(color, "circle", 90.0 * index)], height=height).save(images / f"{color}.jpg")
    (images / "cut.jpg").write_bytes((images / "red.jpg").read_bytes()[:200])
    render_panorama([], height=height).resize((height, height)).save(images / "square.png")
    return images


def write_csv(path: Path, rows, header=HEADER, delimiter: str = ",", encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def records(rows, header=HEADER) -> list[dict]:
    return [dict(zip(header, row)) for row in rows]


def embedded(folder: Path, rows, header=HEADER) -> datasets.Dataset:
    """The rows with their images' bytes in a `datasets.Image` column (how Hub image datasets store them)."""
    table = records(rows, header)
    for record in table:
        location = record[header[0]]
        record[header[0]] = {"bytes": (folder / location).read_bytes(), "path": Path(location).name}
    features = datasets.Features({header[0]: datasets.Image(), header[1]: datasets.Value("string"), header[2]: datasets.Value("string")})
    return datasets.Dataset.from_list(table, features=features)


def write_webdataset(path: Path, folder: Path, rows) -> Path:
    """A WebDataset shard: `NNN.jpg` and `NNN.json` (`{"query", "annotation"}`) per row."""
    with tarfile.open(path, "w") as shard:
        for index, (location, query, annotation) in enumerate(rows):
            text = json.dumps({"query": query, "annotation": annotation}).encode()
            for name, data in ((f"{index:03d}.jpg", (folder / location).read_bytes()), (f"{index:03d}.json", text)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                shard.addfile(info, io.BytesIO(data))
    return path


def write_every_format(folder: Path) -> dict[str, tuple]:
    """The three rows of `ROWS` in every supported form: `{name: (source, DataArguments kwargs, split)}`."""
    write_images(folder)
    table = datasets.Dataset.from_list(records(ROWS))
    write_csv(folder / "t.csv", ROWS)
    write_csv(folder / "t.tsv", ROWS, delimiter="\t")
    (folder / "t.csv.gz").write_bytes(gzip.compress((folder / "t.csv").read_bytes()))
    (folder / "t.json").write_text(json.dumps(records(ROWS)))
    (folder / "t.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records(ROWS)))
    table.to_parquet(str(folder / "t.parquet"))
    embedded(folder, ROWS).to_parquet(str(folder / "embedded.parquet"))
    embedded(folder, ROWS, ("picture", "question", "answer")).to_parquet(str(folder / "mapped.parquet"))
    write_webdataset(folder / "shard-000.tar", folder, ROWS)
    table.save_to_disk(str(folder / "saved"))
    datasets.DatasetDict({"train": table.select([0]), "test": table}).save_to_disk(str(folder / "saved_dict"))
    hub_layout = folder / "hub_layout"
    (hub_layout / "data").mkdir(parents=True)
    embedded(folder, ROWS).to_parquet(str(hub_layout / "data" / "test-00000-of-00001.parquet"))
    embedded(folder, ROWS[:1]).to_parquet(str(hub_layout / "data" / "train-00000-of-00001.parquet"))
    return {
        "csv": (folder / "t.csv", {}, None),
        "tsv": (str(folder / "t.tsv"), {}, None),
        "csv.gz": (str(folder / "t.csv.gz"), {}, None),
        "json": (str(folder / "t.json"), {}, None),
        "jsonl": (str(folder / "t.jsonl"), {}, None),
        "parquet": (str(folder / "t.parquet"), {}, None),
        "parquet with a datasets.Image column": (str(folder / "embedded.parquet"), {}, None),
        "mapped columns": (
            str(folder / "mapped.parquet"),
            {"image_column": "picture", "query_column": "question", "answer_column": "answer"},
            None,
        ),
        "webdataset": (
            str(folder / "shard-*.tar"),
            {"image_column": "jpg", "query_column": "json.query", "answer_column": "json.annotation"},
            None,
        ),
        "save_to_disk": (str(folder / "saved"), {}, None),
        "saved DatasetDict split": (str(folder / "saved_dict"), {}, "test"),
        "data_files dict": ({"train": str(folder / "t.csv"), "test": [str(folder / "t.jsonl")]}, {}, "test"),
        "Hub-layout folder": (str(hub_layout), {}, "test"),
    }
