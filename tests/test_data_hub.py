"""Caption tables from a Hub dataset (issue 16), against the local test hub (`tests/hub_server.py`): a dataset with
a `datasets.Image` column pushed with `push_to_hub` is read by split and by revision, prepared and streamed; a
dataset of CSV files and image files is read by the same strict CSV reader, its relative image paths resolving to
the repository's files.

Client code runs in subprocesses: `HF_ENDPOINT` is read when `huggingface_hub` is imported. `push_to_hub` of a
dataset uploads its Parquet shards through git-LFS, which the client uses with `HF_HUB_DISABLE_XET=1`.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from processing_panovlm.image_loading import load_panorama

from .data_tables import COLORS, ROWS, write_csv, write_images
from .hub_server import LocalHub


REPO, CSV_REPO = "tester/pano-captions", "tester/pano-captions-csv"

PUSH = """
import json, sys
import datasets
from huggingface_hub import HfApi
from tests.data_tables import ROWS, embedded

args = json.loads(sys.argv[1])
folder = args["folder"]
from pathlib import Path
train = embedded(Path(folder), ROWS[:2])
test = embedded(Path(folder), [*ROWS, ("images/cut.jpg", "location", "cut"), ROWS[0]])
datasets.DatasetDict({"train": train, "test": test}).push_to_hub(args["repo"])
api = HfApi()
first = api.dataset_info(args["repo"]).sha
datasets.DatasetDict({"train": embedded(Path(folder), ROWS), "test": test}).push_to_hub(args["repo"])
api.create_repo(args["csv_repo"], repo_type="dataset")
api.upload_folder(folder_path=args["csv_folder"], repo_id=args["csv_repo"], repo_type="dataset")
print(json.dumps({"first": first, "main": api.dataset_info(args["repo"]).sha}))
"""

READ = """
import json, sys
import torch
from processing_panovlm.data import (
    DataArguments, ProblemRecorder, load_caption_table, prepare_caption_table, stream_caption_table
)
from processing_panovlm.image_loading import load_panorama

args = json.loads(sys.argv[1])
report = {}
test = prepare_caption_table(args["repo"], split="test", drop_duplicates=True)
report["test_rows"] = list(test.rows["row"])
report["test_problems"] = [(p.row, p.reason, p.source) for p in test.problems]
torch.save([load_panorama(row["image"]) for row in test.rows], args["pixels"])
report["train_main"] = list(load_caption_table(args["repo"])["annotation"])
report["train_first"] = list(load_caption_table(args["repo"], DataArguments(revision=args["first"]))["annotation"])
recorder = ProblemRecorder()
stream = stream_caption_table(args["repo"], DataArguments(streaming=True), recorder=recorder, split="test")
report["streamed_rows"] = [row["row"] for row in stream]
report["streamed_problems"] = [(p.row, p.reason) for p in recorder.problems + recorder.duplicates_kept]
try:
    load_caption_table(args["repo"], split="validation")
except ValueError as error:
    report["missing_split"] = str(error)
csv_table = prepare_caption_table(args["csv_repo"], split="test")
report["csv_images"] = list(csv_table.rows["image"])
report["csv_sources"] = sorted(set(csv_table.rows["source"]))
report["csv_problems"] = [(p.row, p.reason) for p in csv_table.problems]
torch.save([load_panorama(row["image"]) for row in csv_table.rows], args["csv_pixels"])
print(json.dumps(report))
"""

CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: train.csv
  - split: test
    path: test.csv
---
QuIC-360-style tables next to their panoramas.
"""


def _run(code: str, args: dict, env: dict[str, str], cwd) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **env, "PYTHONPATH": pythonpath},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hub():
    with LocalHub() as server:
        yield server


def test_hub_datasets_are_read_by_split_and_revision_prepared_and_streamed(tmp_path, hub):
    write_images(tmp_path)
    csv_folder = tmp_path / "csv_repo"
    write_images(csv_folder)
    write_csv(csv_folder / "train.csv", ROWS)
    write_csv(csv_folder / "test.csv", [*ROWS[::-1], ("images/missing.jpg", "location", "lost")])
    (csv_folder / "README.md").write_text(CARD)
    args = {"repo": REPO, "csv_repo": CSV_REPO, "folder": str(tmp_path), "csv_folder": str(csv_folder)}
    pushed = _run(PUSH, args, hub.client_env(tmp_path / "push-home"), tmp_path)
    assert pushed["first"] != pushed["main"]
    assert any(path.endswith(".parquet") for path in hub.files(REPO, repo_type="dataset"))

    args.update(first=pushed["first"], pixels=str(tmp_path / "pixels.pt"), csv_pixels=str(tmp_path / "csv.pt"))
    report = _run(READ, args, hub.client_env(tmp_path / "read-home"), tmp_path)
    expected = [load_panorama(tmp_path / "images" / f"{color}.jpg") for color in COLORS]

    assert report["test_rows"] == [1, 2, 3]
    assert report["test_problems"] == [[4, "truncated or corrupt image", REPO], [5, "duplicate row", REPO]]
    assert all(torch.equal(a, b) for a, b in zip(torch.load(args["pixels"]), expected, strict=True))
    assert report["train_main"] == [text for _, _, text in ROWS]
    assert report["train_first"] == [text for _, _, text in ROWS[:2]]  # the first commit's train split
    assert report["streamed_rows"] == [1, 2, 3, 5]  # training keeps a duplicate (and lists it)
    assert report["streamed_problems"] == [[4, "truncated or corrupt image"], [5, "duplicate row"]]
    assert "cannot read split 'validation'" in report["missing_split"]

    # CSV files on the Hub: the strict reader, and relative image paths resolved to the repository's files.
    assert report["csv_images"] == [
        f"{hub.url}/datasets/{CSV_REPO}/resolve/main/images/{color}.jpg" for color in COLORS[::-1]
    ]
    assert len(report["csv_sources"]) == 1 and report["csv_sources"][0].endswith("test.csv")
    assert report["csv_problems"] == [[4, "image URL cannot be read"]]  # images/missing.jpg: 404 from the hub
    assert all(torch.equal(a, b) for a, b in zip(torch.load(args["csv_pixels"]), expected[::-1], strict=True))
