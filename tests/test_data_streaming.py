"""Streaming and several processes (issue 16): a stream is checked by the prepared table's rules as it passes,
DataLoader workers record what they drop in one log that becomes the data report at the end, `num_proc`
preparation and worker processes keep the one image path (same rows, same pixels), a streamed stage trains to
`max_steps`, and a streamed evaluation scores what the prepared one scores."""

import csv
import json
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from modeling_panovlm.evaluation import evaluate_caption_table, greedy_generation_config
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from modeling_panovlm.training.runner import StageOptions, run_stage
from processing_panovlm.data import (
    DataArguments,
    ProblemLog,
    ProblemRecorder,
    finish_streaming_report,
    prepare_caption_table,
    stream_caption_table,
)
from processing_panovlm.data.collator import PanoVLMDataCollator

from .data_tables import ROWS, embedded, write_csv, write_images


BAD = [
    ("images/missing.jpg", "location", "lost"),
    ("images/cut.jpg", "location", "cut"),
    ("images/green.jpg", "location", ""),
]


@pytest.fixture
def folder(tmp_path):
    write_images(tmp_path)
    return tmp_path


@pytest.fixture
def no_java(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "java" else real_which(name, *a, **k))


def test_a_stream_is_checked_by_the_prepared_rules_as_it_passes(folder):
    write_csv(folder / "a.csv", [*ROWS, *BAD, ROWS[0]])
    embedded(folder, [ROWS[1], ("images/square.png", "location", "square")]).to_parquet(str(folder / "b.parquet"))
    sources = [str(folder / "a.csv"), str(folder / "b.parquet")]
    prepared = prepare_caption_table(sources)
    recorder = ProblemRecorder()
    stream = stream_caption_table(sources, recorder=recorder)
    kept = [(row["source"], row["row"]) for row in stream]
    assert kept == list(zip(prepared.rows["source"], prepared.rows["row"]))
    assert recorder.problems == prepared.problems and recorder.duplicates_kept == prepared.duplicates_kept
    assert [(p.row, p.reason) for p in recorder.problems] == [
        (4, "image file not found"), (5, "truncated or corrupt image"), (6, "empty annotation"), (2, "not a 2:1 panorama")
    ]
    assert recorder.rows == prepared.rows_read == 9 and recorder.dropped == 4
    # Read again (a second epoch, the next evaluation): the same rows; a row meeting itself is no duplicate.
    assert [(row["source"], row["row"]) for row in stream] == kept
    assert set(recorder.duplicates_kept) == set(prepared.duplicates_kept) and recorder.rows == 18
    with pytest.raises(ValueError, match="a stream lists .*a.csv'\\] more than once: list each table once"):
        stream_caption_table([*sources, sources[0]], recorder=recorder)
    # Evaluation drops the repeated row 7 (same image, query and answer as row 1).
    evaluation = ProblemRecorder()
    assert len(list(stream_caption_table(sources, recorder=evaluation, drop_duplicates=True))) == len(kept) - 1
    assert [(p.row, p.reason) for p in evaluation.problems][3] == (7, "duplicate row")


def test_dataloader_workers_record_their_drops_in_one_report(folder, tmp_path):
    # Two tables of one folder and format: one stream with a shard per file, one per worker.
    write_csv(folder / "shard-0.csv", [BAD[0], *ROWS])
    write_csv(folder / "shard-1.csv", [*ROWS, BAD[1]])
    log = ProblemLog(tmp_path / "out", "train")
    log.reset()
    stream = stream_caption_table([str(folder / "shard-0.csv"), str(folder / "shard-1.csv")], recorder=log)
    assert stream.num_shards == 2
    rows = [row for batch in DataLoader(stream, batch_size=2, num_workers=2, collate_fn=list) for row in batch]
    assert sorted((row["source"][-5:], row["row"]) for row in rows) == [
        ("0.csv", 2), ("0.csv", 3), ("0.csv", 4), ("1.csv", 1), ("1.csv", 2), ("1.csv", 3)
    ]
    assert len(list(log.folder.glob("rows-*.count"))) == 2  # each worker counted its own rows
    [report_path] = finish_streaming_report(tmp_path / "out", ["train", "eval"])
    report = json.loads(report_path.read_text())
    assert report["streaming"] and report["rows"] == 8 and report["kept"] == 6 and report["dropped"] == 2
    assert report["dropped_by_reason"] == {"image file not found": 1, "truncated or corrupt image": 1}
    assert sorted((row["source"][-5:], row["row"]) for row in report["dropped_rows"]) == [("0.csv", 1), ("1.csv", 4)]
    assert not log.folder.exists()


def test_processes_keep_the_one_image_path(folder, tiny_mlp):
    write_csv(folder / "t.csv", [*ROWS, *BAD, *ROWS[::-1]])
    one = prepare_caption_table(folder / "t.csv")
    several = prepare_caption_table(folder / "t.csv", DataArguments(num_proc=2))
    assert several.rows["row"] == one.rows["row"] and several.problems == one.problems

    _, processor = tiny_mlp
    embedded(folder, ROWS * 2).to_parquet(str(folder / "e.parquet"))
    table = prepare_caption_table(str(folder / "e.parquet"), DataArguments(num_proc=2)).rows
    collator = PanoVLMDataCollator(processor, views_only=True)
    in_process = [batch["pixel_values"] for batch in DataLoader(table, batch_size=2, collate_fn=collator)]
    in_workers = [batch["pixel_values"] for batch in DataLoader(table, batch_size=2, collate_fn=collator, num_workers=2)]
    assert len(in_process) == 3 and all(torch.equal(a, b) for a, b in zip(in_process, in_workers))


def test_a_streamed_stage_trains_to_max_steps_and_reports_at_the_end(folder, tmp_path):
    tiny = tmp_path / "tiny"
    build_tiny_checkpoint(tiny)
    embedded(folder, [BAD[1], *ROWS]).to_parquet(str(folder / "shard-0.parquet"))
    embedded(folder, ROWS[::-1]).to_parquet(str(folder / "shard-1.parquet"))
    options = StageOptions(
        stage="vision", model=str(tiny), train_csv=str(folder / "shard-*.parquet"), output_dir=str(tmp_path / "run"),
        max_steps=3, batch_size=2, logging_steps=1, save_steps=1000, warmup_steps=0, augment=False,
        dataloader_num_workers=2,
    )
    run_stage(options, DataArguments(streaming=True))
    report = json.loads((tmp_path / "run" / "train_data_report.json").read_text())
    assert report["streaming"] and report["dropped_by_reason"] == {"truncated or corrupt image": 1}
    assert report["dropped_rows"][0]["url"] == "cut.jpg" and report["rows"] >= 4
    assert not (tmp_path / "run" / "train_data_log").exists()
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    with pytest.raises(ValueError, match="a streamed table has no length: set max_steps > 0"):
        run_stage(StageOptions(**{**options.__dict__, "max_steps": -1}), DataArguments(streaming=True))


def test_a_streamed_evaluation_scores_what_the_prepared_one_scores(tiny_mlp, folder, tmp_path, no_java):
    model, processor = tiny_mlp
    write_csv(folder / "t.csv", [*ROWS, *BAD, (ROWS[0][0], "people", "nobody"), ROWS[0]])
    config = greedy_generation_config(model, max_new_tokens=3)
    summaries = {}
    for streaming in (False, True):
        out = tmp_path / str(streaming)
        summaries[streaming] = evaluate_caption_table(
            model, processor, folder / "t.csv", out, generation_config=config, show_progress=False, tokenizer="python",
            data_args=DataArguments(streaming=streaming),
        )
        with open(out / "predictions.csv", newline="") as handle:
            summaries[streaming]["predictions"] = list(csv.DictReader(handle))
    prepared, streamed = summaries[False], summaries[True]
    assert streamed["predictions"] == prepared["predictions"] and len(prepared["predictions"]) == 4
    for key in ("rows_read", "rows_scored", "rows_dropped", "dropped_by_reason", "dropped_rows"):
        assert streamed["data"][key] == prepared["data"][key]
    assert prepared["data"]["dropped_by_reason"]["duplicate row"] == 1
    assert streamed["protocols"] == prepared["protocols"]
    assert streamed["generation"]["generations"] == prepared["generation"]["generations"] == 4

    # max_samples: a stream stops reading at the first row of the group after the last one kept.
    first = evaluate_caption_table(
        model, processor, folder / "t.csv", tmp_path / "one", generation_config=config, show_progress=False, tokenizer="python",
        max_samples=1, data_args=DataArguments(streaming=True),
    )
    assert first["generation"]["generations"] == 1 and first["data"]["rows_read"] == 2
    assert first["data"]["rows_scored"] == 1 and first["data"]["rows_skipped_by_max_samples"] == 1
