"""Defective tables (issue 13): each defect is refused, or reported with its row, by a documented rule, and the
data report / metrics.json counts it. One test per class, then one evaluation over all of them."""

import json

import pytest

from modeling_panovlm.evaluation import evaluate_caption_table, greedy_generation_config
from modeling_panovlm.training.runner import prepare_table
from processing_panovlm.data import load_caption_table, prepare_caption_table

from .data_tables import ROWS, write_csv, write_images


HEADER = "url,query,annotation\n"
GOOD = "".join(f"{location},{query},{text}\n" for location, query, text in ROWS)


@pytest.fixture
def folder(tmp_path):
    write_images(tmp_path)
    return tmp_path


def reasons(prepared):
    return [(problem.row, problem.reason) for problem in prepared.problems]


def test_utf8_bom_header_is_recognised(folder):
    (folder / "bom.csv").write_bytes(b"\xef\xbb\xbf" + (HEADER + GOOD).encode())
    table = load_caption_table(folder / "bom.csv")
    assert table["url"] == [location for location, _, _ in ROWS] and set(table["problem"]) == {""}


def test_non_utf8_table_is_refused_naming_the_file_and_line(folder):
    (folder / "latin1.csv").write_bytes((HEADER + GOOD + "images/red.jpg,location,Caf\xe9 au lait\n").encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.csv: line 5 is not UTF-8 \(byte 0xe9 at column 28\)"):
        load_caption_table(folder / "latin1.csv")


def test_unquoted_comma_is_a_malformed_row_reported_with_its_row_and_line(folder):
    # Before: the row silently lost its last field ("behind.").
    text = HEADER + GOOD + "images/red.jpg,location,A red circle, and a blue triangle behind.\n"
    (folder / "comma.csv").write_text(text)
    prepared = prepare_caption_table(folder / "comma.csv")
    assert prepared.rows["row"] == [1, 2, 3] and reasons(prepared) == [(4, "malformed row")]
    assert prepared.problems[0].detail == (
        "line 5 has 4 fields where the header has 3: a value holding the delimiter must be quoted"
    )
    assert prepared.problems[0].url == "images/red.jpg"


def test_short_row_is_a_malformed_row_not_a_type_error(folder):
    (folder / "short.csv").write_text(HEADER + "images/red.jpg,location\n" + GOOD)
    prepared = prepare_caption_table(folder / "short.csv")
    assert reasons(prepared) == [(1, "malformed row")] and prepared.rows["row"] == [2, 3, 4]
    assert prepared.problems[0].detail == "line 2 has 2 fields where the header has 3"


def test_broken_and_unclosed_quotes(folder):
    (folder / "quote.csv").write_text(HEADER + 'images/red.jpg,"location"x,text\n' + GOOD)
    prepared = prepare_caption_table(folder / "quote.csv")
    assert reasons(prepared) == [(1, "malformed row")] and "line 2: broken quoting" in prepared.problems[0].detail
    (folder / "open.csv").write_text(HEADER + GOOD + 'images/red.jpg,location,"never closed\n' + GOOD)
    with pytest.raises(ValueError, match="open.csv: the quote opened in the record starting on line 5 is never closed"):
        load_caption_table(folder / "open.csv")


def test_missing_values_are_reported(folder):
    rows = [{"url": location, "query": query, "annotation": text} for location, query, text in ROWS]
    rows[1]["annotation"], rows[2]["url"] = None, None
    (folder / "nulls.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    prepared = prepare_caption_table(str(folder / "nulls.jsonl"))
    assert reasons(prepared) == [(2, "missing value"), (3, "missing value")]
    assert [problem.detail for problem in prepared.problems] == ["no value for the reference answer", "no image in column 'url'"]
    # The vision stage reads no text: a row without an answer still has its panorama.
    assert reasons(prepare_caption_table(str(folder / "nulls.jsonl"), needs_text=False)) == [(3, "missing value")]


def test_empty_references_and_queries_are_dropped_where_text_is_used(folder):
    rows = [ROWS[0], (ROWS[1][0], ROWS[1][1], "  "), (ROWS[2][0], "", ROWS[2][2])]
    write_csv(folder / "empty.csv", rows)
    prepared = prepare_caption_table(folder / "empty.csv", needs_text=True)
    assert reasons(prepared) == [(2, "empty annotation"), (3, "empty query")] and prepared.rows["row"] == [1]
    # The vision stage reads only images: nothing to drop.
    assert prepare_caption_table(folder / "empty.csv", needs_text=False).problems == []


def test_duplicate_rows_are_dropped_for_evaluation_and_counted_for_training(folder, tmp_path):
    write_csv(folder / "dup.csv", [*ROWS, ROWS[0], ROWS[0]])
    evaluation = prepare_caption_table(folder / "dup.csv", drop_duplicates=True)
    assert reasons(evaluation) == [(4, "duplicate row"), (5, "duplicate row")] and len(evaluation.rows) == 3
    assert evaluation.problems[0].detail == "same image, query and answer as row 1"
    training = prepare_table(str(folder / "dup.csv"), tmp_path / "out", "train", needs_text=True, augment=False)
    assert training["row"] == [1, 2, 3, 4, 5]
    report = json.loads((tmp_path / "out" / "train_data_report.json").read_text())
    assert report["dropped"] == 0 and report["duplicates_kept"] == 2
    assert [row["row"] for row in report["duplicate_rows_kept"]] == [4, 5]


def test_evaluation_counts_every_defect_in_metrics_json(tiny_mlp, folder, tmp_path, monkeypatch):
    model, processor = tiny_mlp
    text = (
        HEADER
        + GOOD  # rows 1-3
        + f"{ROWS[0][0]},{ROWS[0][1]},{ROWS[0][2]}\n"  # 4: duplicate of row 1
        + "images/green.jpg,location,\n"  # 5: empty reference
        + "images/blue.jpg,location,A blue circle, behind\n"  # 6: unquoted comma
        + "images/blue.jpg,location\n"  # 7: short row
        + "images/cut.jpg,location,cut\n"  # 8: truncated image
    )
    (folder / "defects.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    summary = evaluate_caption_table(
        model, processor, folder / "defects.csv", tmp_path / "eval",
        generation_config=greedy_generation_config(model, max_new_tokens=3), show_progress=False, tokenizer="python",
    )
    data = summary["data"]
    assert data["rows_read"] == 8 and data["rows_scored"] == 3 and data["rows_dropped"] == 5
    assert data["dropped_by_reason"] == {
        "duplicate row": 1, "empty annotation": 1, "malformed row": 2, "truncated or corrupt image": 1
    }
    assert sorted(row["row"] for row in data["dropped_rows"]) == [4, 5, 6, 7, 8]
    assert summary["protocols"]["per-row"]["units"] == 3  # the duplicate does not weigh twice
    assert "malformed row: 2" in (tmp_path / "eval" / "report.md").read_text()
